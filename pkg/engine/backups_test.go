package engine_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// waitBackup polls until the backup is no longer running.
func waitBackup(t testing.TB, e *engine.Engine, id int64) store.Backup {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, err := e.GetBackup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if b.Status != store.BackupRunning {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %d still running after 2 minutes", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func fileSHA256(t testing.TB, path string) (string, int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), int64(len(data))
}

// restore makes an image from a backup, finalises it and clones it.
func restore(t testing.TB, e *engine.Engine, backupID int64) (store.Image, store.Instance) {
	t.Helper()
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: backupID})
	if err != nil {
		t.Fatalf("image from backup %d: %v", backupID, err)
	}
	if img.BackupID != backupID {
		t.Errorf("the image records backup %d, want %d", img.BackupID, backupID)
	}
	if img, err = e.FinaliseImage(ctx, img.ID); err != nil {
		t.Fatalf("finalising the restore: %+v, %v", img, err)
	}
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	return img, inst
}

func TestBackupOfAChangedInstanceRestoresTheChange(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	// Image 1 is a bare initdb, so its schema public is the superuser's.
	pgtest.Exec(t, w.superuserConn(inst), "create table notes (id int primary key, body text); grant all on notes to public; insert into notes values (1, 'before the backup')")

	b, err := e.CreateBackup(ctx, engine.BackupRequest{InstanceID: inst.ID, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if b.Status != store.BackupRunning || b.InstanceID != inst.ID || b.Owner != "ada@example.com" {
		t.Fatalf("new backup %+v", b)
	}
	// Written after the call: not in the backup, which holds the instant
	// of the call.
	pgtest.Exec(t, passwordConn(inst), "insert into notes values (2, 'after the backup')")
	b = waitBackup(t, e, b.ID)
	if b.Status != store.BackupDone || b.Error != "" {
		t.Fatalf("backup ended %+v", b)
	}
	sum, size := fileSHA256(t, filepath.Join(w.root, "backups", engine.BackupFile(b.ID)))
	if b.SHA256 != sum || b.SizeBytes != size || size == 0 {
		t.Errorf("recorded sha256 %s size %d; the file has %s, %d bytes", b.SHA256, b.SizeBytes, sum, size)
	}
	if _, err := w.storage.Get(ctx, engine.BackupVolume(b.ID)); err == nil {
		t.Errorf("the backup's snapshot is left after it was written")
	}

	_, clone := restore(t, e, b.ID)
	if got := mustSQL(t, passwordConn(clone), "select string_agg(body, ',' order by id) from notes"); got != "before the backup" {
		t.Fatalf("the restored clone has %q, want the row written before the backup only", got)
	}

	// Deleting the backup touches neither the instance nor the image.
	if err := e.DeleteBackup(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(w.root, "backups", engine.BackupFile(b.ID))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the archive of a deleted backup: %v", err)
	}
	if _, err := e.GetBackup(ctx, b.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("a deleted backup: %v, want ErrNotFound", err)
	}
	if got := mustSQL(t, passwordConn(inst), "select count(*)::text from notes"); got != "2" {
		t.Errorf("the instance after deleting its backup has %s notes", got)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: clone.ImageID, Owner: "upload"}); err != nil {
		t.Errorf("a clone of the restored image after deleting the backup: %v", err)
	}
}

func TestBackupWhilePgbenchWritesPassesAmcheck(t *testing.T) {
	skipOnDircopy(t, "a snapshot there copies file by file, not at one instant, so a backup under writes may mix moments; this test's point is that it does not")
	w := newWorld(t, 5)
	opts := w.options()
	e := engine.New(opts)
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	pgbench := filepath.Join(pgtest.BinDir(t), "pgbench")
	if out, err := exec.Command(pgbench, "-i", "-q", "-s", "5", w.superuserConn(inst)).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	load, stop := context.WithCancel(ctx)
	defer stop()
	bench := exec.CommandContext(load, pgbench, "-c", "4", "-T", "60", "-n", w.superuserConn(inst))
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	defer bench.Wait()
	// Let the load build up, then take the backup under it.
	time.Sleep(2 * time.Second)
	if n := mustSQL(t, w.superuserConn(inst), "select count(*)::text from pgbench_history"); n == "0" {
		t.Fatal("pgbench has written nothing yet")
	}
	b, err := e.CreateBackup(ctx, engine.BackupRequest{InstanceID: inst.ID})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // writes go on while the archive is written
	stop()
	bench.Wait()
	if b = waitBackup(t, e, b.ID); b.Status != store.BackupDone {
		t.Fatalf("backup under load ended %+v", b)
	}

	_, clone := restore(t, e, b.ID)
	su := w.superuserConn(clone)
	// Each pgbench transaction changes an account and logs the change in
	// one commit: in a consistent copy the two agree.
	balances := mustSQL(t, su, "select (select sum(abalance) from pgbench_accounts)::text || '=' || (select coalesce(sum(delta), 0) from pgbench_history)::text")
	if parts := strings.Split(balances, "="); parts[0] != parts[1] {
		t.Errorf("accounts and history disagree in the restore: %s", balances)
	}
	if n := mustSQL(t, su, "select count(*)::text from pgbench_history"); n == "0" {
		t.Errorf("the restore holds none of the load's transactions")
	}
	amcheck := exec.Command(filepath.Join(pgtest.BinDir(t), "pg_amcheck"), "--install-missing", "--heapallindexed", "--all", "--maintenance-db", su)
	if out, err := amcheck.CombinedOutput(); err != nil {
		t.Fatalf("pg_amcheck on the restore: %v\n%s", err, out)
	}
}

func TestBackupErrorsAndDeletingOneBeingWritten(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		req  engine.BackupRequest
		want error
	}{
		"neither":          {engine.BackupRequest{}, engine.ErrInvalid},
		"both":             {engine.BackupRequest{InstanceID: inst.ID, ImageID: 1}, engine.ErrInvalid},
		"unknown instance": {engine.BackupRequest{InstanceID: 99}, engine.ErrNotFound},
		"unknown image":    {engine.BackupRequest{ImageID: 99}, engine.ErrNotFound},
	} {
		if _, err := e.CreateBackup(ctx, c.req); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	if _, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: 99}); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("an image from an unknown backup: %v, want ErrNotFound", err)
	}

	// An image can be backed up as well, and the backup restores.
	ib, err := e.CreateBackup(ctx, engine.BackupRequest{ImageID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if ib = waitBackup(t, e, ib.ID); ib.Status != store.BackupDone || ib.ImageID != 1 {
		t.Fatalf("backup of image 1: %+v", ib)
	}
	restore(t, e, ib.ID)

	// A backup deleted while it is being written leaves nothing behind.
	pgtest.Exec(t, w.superuserConn(inst), "create table filler as select g, md5(g::text) from generate_series(1, 300000) g")
	b, err := e.CreateBackup(ctx, engine.BackupRequest{InstanceID: inst.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteBackup(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.GetBackup(ctx, b.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("after delete: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(w.root, "backups", "*"+engine.BackupFile(b.ID)+"*"))
	if len(left) > 0 {
		t.Errorf("files left by a deleted backup: %v", left)
	}
	if _, err := w.storage.Get(ctx, engine.BackupVolume(b.ID)); err == nil {
		t.Errorf("the snapshot of a deleted backup is left")
	}
	if _, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: b.ID}); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("an image from a deleted backup: %v, want ErrNotFound", err)
	}
	if got := mustSQL(t, w.superuserConn(inst), "select count(*)::text from filler"); got != "300000" {
		t.Errorf("the instance after deleting its backup: %s rows", got)
	}
}

func TestBackupCutShortBySindridIsFailedAtStart(t *testing.T) {
	w := newWorld(t, 5)
	// As if sindrid died while writing backup 1: its record running, its
	// snapshot and partial archive on disk.
	b, err := w.store.CreateBackup(ctx, store.BackupInput{ImageID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.storage.Snapshot(ctx, engine.ImageVolume(1), engine.BackupVolume(b.ID)); err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(w.root, "backups", "."+engine.BackupFile(b.ID)+".partial")
	os.MkdirAll(filepath.Dir(partial), 0o700)
	if err := os.WriteFile(partial, []byte("half an archive"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A second one died between renaming its archive into place and
	// recording it done.
	b2, err := w.store.CreateBackup(ctx, store.BackupInput{ImageID: 1})
	if err != nil {
		t.Fatal(err)
	}
	renamed := filepath.Join(w.root, "backups", engine.BackupFile(b2.ID))
	if err := os.WriteFile(renamed, []byte("a whole archive"), 0o600); err != nil {
		t.Fatal(err)
	}

	e := engine.New(w.options())
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := e.GetBackup(ctx, b.ID)
	if err != nil || got.Status != store.BackupFailed || !strings.Contains(got.Error, "take it again") {
		t.Fatalf("after reconcile: %+v, %v", got, err)
	}
	if _, err := os.Stat(partial); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial archive: %v", err)
	}
	if got, err := e.GetBackup(ctx, b2.ID); err != nil || got.Status != store.BackupFailed {
		t.Errorf("the backup cut short after its rename: %+v, %v", got, err)
	}
	if _, err := os.Stat(renamed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the archive of a backup never recorded done: %v", err)
	}
	if _, err := w.storage.Get(ctx, engine.BackupVolume(b.ID)); err == nil {
		t.Errorf("the snapshot of the cut-short backup is left")
	}
	if _, _, err := e.OpenBackup(ctx, b.ID); !errors.Is(err, engine.ErrBackupNotDone) {
		t.Errorf("opening a failed backup: %v, want ErrBackupNotDone", err)
	}
	if _, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: b.ID}); !errors.Is(err, engine.ErrBackupNotDone) {
		t.Errorf("an image from a failed backup: %v, want ErrBackupNotDone", err)
	}
}

func TestBackupOnZFSPinsTheVolumeUntilWritten(t *testing.T) {
	w := newWorldZFS(t, 5)
	release := make(chan struct{})
	opts := w.options()
	opts = engine.WithBackupSnapshotted(opts, func(int64) { <-release })
	e := engine.New(opts)
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, w.superuserConn(inst), "create table notes (id int); insert into notes values (1)")
	b, err := e.CreateBackup(ctx, engine.BackupRequest{InstanceID: inst.ID})
	if err != nil {
		t.Fatal(err)
	}

	// While the backup reads its snapshot, a reset is refused before it
	// touches the instance.
	if _, err := e.ResetInstance(ctx, inst.ID); !errors.Is(err, engine.ErrBackupRunning) {
		t.Fatalf("reset during the backup: %v, want ErrBackupRunning", err)
	}
	if got, err := e.GetInstance(ctx, inst.ID); err != nil || got.Status != store.InstanceRunning {
		t.Fatalf("the instance after the refused reset: %+v, %v", got, err)
	}
	pgtest.Exec(t, w.superuserConn(inst), "insert into notes values (2)")
	// A destroy goes through; the pinned volume stays until the backup
	// is written, then reconcile removes it.
	if err := e.DestroyInstance(ctx, inst.ID); err != nil {
		t.Fatalf("destroy during the backup: %v", err)
	}
	if _, err := e.GetInstance(ctx, inst.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("the destroyed instance: %v", err)
	}
	if _, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID)); err != nil {
		t.Fatalf("the volume the backup pins: %v", err)
	}
	close(release)
	if b = waitBackup(t, e, b.ID); b.Status != store.BackupDone {
		t.Fatalf("backup %+v", b)
	}
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID)); err == nil {
		t.Errorf("the destroyed instance's volume is left after its backup was written")
	}
	_, clone := restore(t, e, b.ID)
	if got := mustSQL(t, w.superuserConn(clone), "select string_agg(id::text, ',') from notes"); got != "1" {
		t.Errorf("the restore from ZFS has notes %q, want 1", got)
	}
}

// With BackupMaxAge set, the expiry sweep deletes finished backups older
// than it, archives included; a younger one and a running one stay.
func TestOldBackupsAreDeletedBySweep(t *testing.T) {
	w := newWorld(t, 5)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	hold := make(chan struct{})
	var holding atomic.Int64
	opts := w.options()
	opts.Now = func() time.Time { return time.Unix(0, now.Load()) }
	opts.BackupMaxAge = 24 * time.Hour
	opts = engine.WithBackupSnapshotted(opts, func(id int64) {
		if id == holding.Load() {
			<-hold
		}
	})
	e := engine.New(opts)

	old, err := e.CreateBackup(ctx, engine.BackupRequest{ImageID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if old = waitBackup(t, e, old.ID); old.Status != store.BackupDone {
		t.Fatalf("backup: %+v", old)
	}
	now.Add(int64(23 * time.Hour))
	if n, err := e.DeleteExpiredBackups(ctx); err != nil || n != 0 {
		t.Fatalf("a 23-hour-old backup swept: %d %v", n, err)
	}
	holding.Store(old.ID + 1) // the next backup stays running
	running, err := e.CreateBackup(ctx, engine.BackupRequest{ImageID: 1})
	if err != nil || running.ID != old.ID+1 {
		t.Fatalf("second backup %+v %v", running, err)
	}
	now.Add(int64(48 * time.Hour))
	if n, err := e.DeleteExpiredBackups(ctx); err != nil || n != 1 {
		t.Fatalf("sweep after 71 hours: %d deleted, %v; want the old one only", n, err)
	}
	if _, err := e.GetBackup(ctx, old.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("the old backup after the sweep: %v", err)
	}
	if _, err := os.Stat(old.Path); !os.IsNotExist(err) {
		t.Fatalf("its archive %s: %v, want it gone", old.Path, err)
	}
	if b, err := e.GetBackup(ctx, running.ID); err != nil || b.Status != store.BackupRunning {
		t.Fatalf("the running backup after the sweep: %+v %v", b, err)
	}
	close(hold)
	if b := waitBackup(t, e, running.ID); b.Status != store.BackupDone {
		t.Fatalf("the held backup, released: %+v", b)
	}
}

// A backup recorded running whose whole archive is in place (sindrid
// stopped between the rename and the record, or the store is an older
// dump taken while it was written) is recorded done, with its archive's
// size and SHA-256, rather than failed and its archive thrown away.
func TestBackupWithItsWholeArchiveIsRecordedDoneByReconcile(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	b, err := e.CreateBackup(ctx, engine.BackupRequest{ImageID: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := waitBackup(t, e, b.ID)
	if done.Status != store.BackupDone {
		t.Fatalf("backup %+v", done)
	}
	if err := w.store.SetBackupStatus(ctx, b.ID, store.BackupRunning, ""); err != nil {
		t.Fatal(err)
	}
	if err := engine.New(w.options()).Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := e.GetBackup(ctx, b.ID)
	if err != nil || got.Status != store.BackupDone || got.SHA256 != done.SHA256 || got.SizeBytes != done.SizeBytes {
		t.Fatalf("after reconcile: %+v %v, want done with size %d and SHA-256 %s", got, err, done.SizeBytes, done.SHA256)
	}
	if sum, size := fileSHA256(t, done.Path); sum != done.SHA256 || size != done.SizeBytes {
		t.Fatalf("the archive: %d bytes, SHA-256 %s", size, sum)
	}
}
