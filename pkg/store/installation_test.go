package store

import (
	"regexp"
	"slices"
	"testing"
	"time"
)

// Each metadata database gets an id of its own when it is made, which
// stays: it is what volumes record, to tell this database from another.
func TestInstallationIDIsOnePerDatabase(t *testing.T) {
	t.Parallel()
	a, b := newStore(t), newStore(t)
	idA := must[string](t)(a.InstallationID(ctx))
	idB := must[string](t)(b.InstallationID(ctx))
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	if !uuid.MatchString(idA) || !uuid.MatchString(idB) || idA == idB {
		t.Fatalf("installation ids %q and %q, want two different UUIDs", idA, idB)
	}
	if again := must[string](t)(a.InstallationID(ctx)); again != idA {
		t.Fatalf("the id changed from %s to %s", idA, again)
	}
	// A second row is refused: there is one installation per database.
	_, err := a.pool.Exec(ctx, "insert into installation default values")
	wantErr(t, classify(err), ErrConflict)
}

func TestDeleteInstanceLeavesATombstone(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "")
	gone := newInstance(t, s, img.ID, "upload")
	kept := newInstance(t, s, img.ID, "upload")
	check(t, s.DeleteInstance(ctx, gone.ID))
	wantErr(t, s.DeleteInstance(ctx, gone.ID), ErrNotFound)

	tombs := must[map[int64]time.Time](t)(s.InstanceTombstones(ctx, []int64{gone.ID, kept.ID, 999999}))
	if len(tombs) != 1 || !tombs[gone.ID].Equal(gone.CreatedAt) {
		t.Fatalf("tombstones %v, want only instance %d's, with its creation time %s", tombs, gone.ID, gone.CreatedAt)
	}
	if none := must[map[int64]time.Time](t)(s.InstanceTombstones(ctx, nil)); len(none) != 0 {
		t.Fatalf("tombstones of no ids: %v", none)
	}

	// Pruning spares the young and those whose volume is still there.
	later := newInstance(t, s, img.ID, "upload")
	check(t, s.DeleteInstance(ctx, later.ID))
	if n := must[int64](t)(s.PruneTombstones(ctx, time.Now().Add(-time.Hour), nil)); n != 0 {
		t.Fatalf("pruned %d tombstones younger than an hour", n)
	}
	if n := must[int64](t)(s.PruneTombstones(ctx, time.Now().Add(time.Hour), []int64{later.ID})); n != 1 {
		t.Fatalf("pruned %d tombstones, want 1 (instance %d's; %d's volume is kept)", n, gone.ID, later.ID)
	}
	left := must[map[int64]time.Time](t)(s.InstanceTombstones(ctx, []int64{gone.ID, later.ID}))
	if _, ok := left[later.ID]; !ok || len(left) != 1 {
		t.Fatalf("tombstones left %v, want only instance %d's", left, later.ID)
	}
}

// A database restored from an older dump hands out ids that volumes made
// after the dump already carry, unless moved past them.
func TestAdvanceIDsMovesOnlyForward(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	// Fresh sequences: no id handed out yet.
	moved := must[[]string](t)(s.AdvanceIDs(ctx, IDFloors{Images: 1, Backups: 7}))
	if !slices.Equal(moved, []string{"images", "backups"}) {
		t.Fatalf("moved %v, want images and backups", moved)
	}
	img := newImage(t, s, "")
	if img.ID != 2 {
		t.Fatalf("image id %d after a floor of 1, want 2", img.ID)
	}
	b := must[Backup](t)(s.CreateBackup(ctx, BackupInput{ImageID: img.ID}))
	if b.ID != 8 {
		t.Fatalf("backup id %d after a floor of 7, want 8", b.ID)
	}
	for i := 0; i < 3; i++ {
		newInstance(t, s, img.ID, "upload")
	}
	// Never backwards, nor onto an id handed out.
	if moved := must[[]string](t)(s.AdvanceIDs(ctx, IDFloors{Images: 2, Instances: 3, Backups: 5})); len(moved) != 0 {
		t.Fatalf("moved %v with floors at or below the ids handed out", moved)
	}
	if inst := newInstance(t, s, img.ID, "upload"); inst.ID != 4 {
		t.Fatalf("instance id %d, want 4", inst.ID)
	}
	if moved := must[[]string](t)(s.AdvanceIDs(ctx, IDFloors{Instances: 40})); !slices.Equal(moved, []string{"instances"}) {
		t.Fatalf("moved %v, want instances", moved)
	}
	if inst := newInstance(t, s, img.ID, "upload"); inst.ID != 41 {
		t.Fatalf("instance id %d after a floor of 40, want 41", inst.ID)
	}
}
