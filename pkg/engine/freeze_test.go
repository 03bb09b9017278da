package engine_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// Rows that no VACUUM has seen have their hint bits set by their first
// reader, which writes each page: in a clone, a copy of each page. An
// image's rows are frozen and analysed when it is made, so that reading
// the whole of a clone writes next to nothing into it, and autovacuum
// finds nothing to do there, nor looks.
func TestReadingACloneWritesNothingIntoIt(t *testing.T) {
	skipOnDircopy(t, "a dircopy clone is a full copy: its exclusive bytes are all of its bytes")
	w := newWorld(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	// A clone starts without its image's activity counters, whose
	// databases its autovacuum would otherwise visit every naptime. This
	// image, a copy of a cluster that ran, still holds them, as images
	// made before finalise forgot them do.
	if got := mustSQL(t, w.superuserConn(inst), "select xact_commit::text from pg_stat_database where datname = 'template1'"); got != "0" {
		t.Errorf("a new clone of an image with saved statistics counts %s transactions in template1", got)
	}
	// About 15 MB of rows inserted and never vacuumed, as a restored dump
	// leaves them.
	pgtest.Exec(t, w.superuserConn(inst), "create table big as select g as id, md5(g::text) as v from generate_series(1, 200000) g")
	b, err := e.CreateBackup(ctx, engine.BackupRequest{InstanceID: inst.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if b = waitBackup(t, e, b.ID); b.Status != store.BackupDone {
		t.Fatalf("backup ended %+v", b)
	}
	img, clone := restore(t, e, b.ID)
	// Nor does an image finalise made hold them.
	vol, err := w.storage.Get(ctx, engine.ImageVolume(img.ID))
	if err != nil {
		t.Fatal(err)
	}
	if saved, err := os.ReadDir(filepath.Join(vol.Path, "pg_stat")); err != nil || len(saved) > 0 {
		t.Errorf("the image's pg_stat holds %d entries (%v); want none", len(saved), err)
	}

	su := w.superuserConn(clone)
	if got := mustSQL(t, su, "select (n_ins_since_vacuum + n_mod_since_analyze)::text from pg_stat_user_tables where relname = 'big'"); got != "0" {
		t.Errorf("the clone's table has %s rows inserted or changed since its last VACUUM and ANALYZE: autovacuum would redo them in each clone", got)
	}
	size := mustSQL(t, su, "select pg_relation_size('big')::text")
	before, err := w.storage.ExclusiveBytes(ctx, engine.InstanceVolume(clone.ID))
	if err != nil {
		t.Fatal(err)
	}
	if got := mustSQL(t, su, "select count(distinct v)::text from big"); got != "200000" {
		t.Fatalf("the clone has %s distinct rows", got)
	}
	pgtest.Exec(t, su, "checkpoint")
	after, err := w.storage.ExclusiveBytes(ctx, engine.InstanceVolume(clone.ID))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("table of %s bytes; the clone's own bytes %d before the read, %d after it", size, before, after)
	if grew := after - before; grew > 1<<20 {
		t.Errorf("reading the clone's %s-byte table wrote %d bytes into the clone", size, grew)
	}
}
