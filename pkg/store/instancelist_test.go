package store

import (
	"fmt"
	"reflect"

	"github.com/jackc/pgx/v5"
	"testing"
	"time"
)

// wantSummaries checks that ListInstanceSummaries(owner) shows exactly
// what a full read of the rows shows (ListInstances, less the
// certificates and keys), whatever it holds from earlier listings.
func wantSummaries(t *testing.T, s *Store, owner, step string) []Instance {
	t.Helper()
	got := must[[]Instance](t)(s.ListInstanceSummaries(ctx, owner))
	full := must[[]Instance](t)(s.ListInstances(ctx, owner))
	want := []Instance{}
	for _, inst := range full {
		inst.CACertificate, inst.ServerCertificate, inst.ServerKey, inst.ClientCertificate, inst.ClientKey = "", "", "", "", ""
		want = append(want, inst)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: listing of %q\n got %+v\nwant %+v", step, owner, got, want)
	}
	return got
}

// A listing that reuses what it read before still shows every change
// made since, by any statement: status and error, credentials, expiry
// and protection, a port, a new instance, a deleted one, a truncate.
func TestInstanceSummariesFollowEveryChange(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if got := wantSummaries(t, s, "", "none"); got == nil {
		t.Fatal("no instances: nil, want an empty list")
	}
	img := newImage(t, s, "img")
	a := newInstance(t, s, img.ID, "ada@example.com")
	b := newInstance(t, s, img.ID, "bob@example.com")
	c := newInstance(t, s, img.ID, "ada@example.com")
	wantSummaries(t, s, "", "new")
	wantSummaries(t, s, "ada@example.com", "new")

	check(t, s.SetInstanceCredentials(ctx, a.ID, testCreds("a")))
	wantSummaries(t, s, "", "credentials")
	check(t, s.SetInstanceCredentials(ctx, a.ID, testCreds("a2")))
	wantSummaries(t, s, "ada@example.com", "new credentials")
	wantSummaries(t, s, "", "new credentials")

	check(t, s.SetInstanceStatus(ctx, b.ID, InstanceRunning, ""))
	wantSummaries(t, s, "", "running")
	check(t, s.SetInstanceStatus(ctx, b.ID, InstanceFailed, "crashed"))
	wantSummaries(t, s, "", "failed")
	wantSummaries(t, s, "bob@example.com", "failed")

	// Changes by any statement, two in one transaction.
	tx := must[pgx.Tx](t)(s.pool.Begin(ctx))
	_, err := tx.Exec(ctx, `update instances set status = 'stopped' where id = $1`, c.ID)
	check(t, err)
	_, err = tx.Exec(ctx, `update instances set port = 15432, error = 'x' where id = $1`, c.ID)
	check(t, err)
	check(t, tx.Commit(ctx))
	wantSummaries(t, s, "", "stopped")

	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	yes := true
	check(t, s.SetInstanceExpiry(ctx, a.ID, &exp, &yes))
	wantSummaries(t, s, "", "expiry")

	check(t, s.SetInstancePID(ctx, a.ID, 4242))
	wantSummaries(t, s, "ada@example.com", "pid")

	d := newInstance(t, s, img.ID, "bob@example.com")
	wantSummaries(t, s, "", "another")
	check(t, s.DeleteInstance(ctx, b.ID))
	wantSummaries(t, s, "bob@example.com", "deleted")
	// As many rows as before, but not the same ones.
	check(t, s.DeleteInstance(ctx, d.ID))
	d = newInstance(t, s, img.ID, "bob@example.com")
	wantSummaries(t, s, "bob@example.com", "one deleted, one made")
	wantSummaries(t, s, "", "one deleted, one made")
	check(t, s.DeleteInstance(ctx, d.ID))
	wantSummaries(t, s, "", "both deleted")

	newInstance(t, s, img.ID, "ada@example.com")
	wantSummaries(t, s, "ada@example.com", "before a truncate")
	wantSummaries(t, s, "", "before a truncate")
	_, err = s.pool.Exec(ctx, `truncate instances`)
	check(t, err)
	wantSummaries(t, s, "ada@example.com", "truncated")
	wantSummaries(t, s, "", "truncated")
}

// What the listing holds is bounded by the rows there are: a deleted
// instance's entry goes at once, and one deleted behind the store's back
// at the next listing of its scope.
func TestInstanceSummariesForgetDeletedInstances(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	var ids []int64
	for _, owner := range []string{"ada@example.com", "bob@example.com", "bob@example.com"} {
		inst := newInstance(t, s, img.ID, owner)
		check(t, s.SetInstanceCredentials(ctx, inst.ID, testCreds(owner)))
		ids = append(ids, inst.ID)
	}
	held := func() int {
		s.summaries.mu.Lock()
		defer s.summaries.mu.Unlock()
		return len(s.summaries.entries)
	}
	wantSummaries(t, s, "", "three")
	if n := held(); n != 3 {
		t.Fatalf("holds %d summaries, want 3", n)
	}
	check(t, s.DeleteInstance(ctx, ids[0]))
	if n := held(); n != 2 {
		t.Fatalf("after a delete, holds %d summaries, want 2", n)
	}
	_, err := s.pool.Exec(ctx, `delete from instances where id = $1`, ids[1])
	check(t, err)
	wantSummaries(t, s, "ada@example.com", "another owner's")
	if n := held(); n != 2 {
		t.Fatalf("after listing another owner's, holds %d summaries, want 2", n)
	}
	wantSummaries(t, s, "bob@example.com", "deleted behind its back")
	if n := held(); n != 1 {
		t.Fatalf("after listing bob's, holds %d summaries, want 1", n)
	}
}

// Listings racing changes leave nothing stale behind: once the changes
// stop, a listing shows the rows as they are.
func TestInstanceSummariesRacingChanges(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	owners := []string{"ada@example.com", "bob@example.com"}
	var ids []int64
	for i := range 20 {
		inst := newInstance(t, s, img.ID, owners[i%2])
		check(t, s.SetInstanceCredentials(ctx, inst.ID, testCreds(owners[i%2])))
		ids = append(ids, inst.ID)
	}
	done := make(chan struct{})
	errs := make(chan error, 4)
	for _, owner := range []string{"", "", owners[0], owners[1]} {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				if _, err := s.ListInstanceSummaries(ctx, owner); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i, id := range ids {
		switch i % 3 {
		case 0:
			check(t, s.SetInstanceStatus(ctx, id, InstanceRunning, ""))
		case 1:
			check(t, s.SetInstanceCredentials(ctx, id, testCreds(fmt.Sprint("new", i))))
		case 2:
			check(t, s.DeleteInstance(ctx, id))
			newInstance(t, s, img.ID, owners[i%2])
		}
	}
	close(done)
	for range 4 {
		check(t, <-errs)
	}
	wantSummaries(t, s, owners[0], "after the race")
	wantSummaries(t, s, "", "after the race")
}
