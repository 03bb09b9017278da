package engine_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// settledFree is the filesystem's free bytes once the subvolumes
// destroyed so far are cleaned up (BTRFS frees their space afterwards; a
// tmpfs under dircopy at once).
func settledFree(t *testing.T, w *world) int64 {
	t.Helper()
	mnt := filepath.Dir(w.root)
	// A commit wakes the cleaner, which the subvolume sync waits for.
	for _, args := range [][]string{{"filesystem", "sync", mnt}, {"subvolume", "sync", mnt}, {"filesystem", "sync", mnt}} {
		if onDircopy() {
			break
		}
		if out, err := exec.Command("btrfs", args...).CombinedOutput(); err != nil {
			t.Fatalf("btrfs %v: %v %s", args, err, out)
		}
	}
	c, err := w.storage.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c.FreeBytes
}

// withoutEnd is a plain tar of entries without tar's end-of-archive
// marker: more entries may follow.
func withoutEnd(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	plain := writeTar(t, entries)
	return plain[:len(plain)-1024]
}

// sparseTerabyte is GNU tar's archive (--sparse, in its own format) of a
// file of 1 TiB holding one byte: about 10 kB.
func sparseTerabyte(t *testing.T, name string) []byte {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("x"), 1<<39)
	f.Close()
	cmd := exec.Command("tar", "--sparse", "-cf", "-", name)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tar --sparse: %v", err)
	}
	return out
}

// zstdBomb is a tar.zst of the data directory followed by files of 256 MiB
// of zeros, 16 GiB in all: zstd frames, the zeros' made once and repeated
// (a zstd stream is its frames' contents one after another).
func zstdBomb(t *testing.T, dataDir []tarEntry) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	const size = 256 << 20
	zeros := enc.EncodeAll(make([]byte, size), nil)
	out := enc.EncodeAll(withoutEnd(t, dataDir), nil)
	for i := range 64 {
		var hdr bytes.Buffer
		tw := tar.NewWriter(&hdr)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/base/5/%d", 90000+i), Typeflag: tar.TypeReg, Mode: 0o600, Size: size}); err != nil {
			t.Fatal(err)
		}
		out = append(enc.EncodeAll(hdr.Bytes(), out), zeros...)
	}
	return enc.EncodeAll(make([]byte, 1024), out)
}

// TestFinaliseRefusesArchivesThatExpandPastTheFreeSpace uploads, on a
// BTRFS of 1 GiB, a data directory with a sparse file of 1 TiB (10 kB of
// the archive), and one followed by 16 GiB of zeros (a few MB as zstd).
// Each finalise fails with an error that names the cause and the entry,
// leaves no volume and the disk as it was, and the next upload of a good
// data directory into the same image finalises and serves an instance.
func TestFinaliseRefusesArchivesThatExpandPastTheFreeSpace(t *testing.T) {
	w := newWorldSized(t, 5, 1<<30)
	e := engine.New(w.options())
	good := sourceTarball(t)
	dataDir := readTarGz(t, good)
	sparse := sparseTerabyte(t, "data/base/5/99999")
	cases := []struct {
		name    string
		archive []byte
		says    []string
	}{
		{"sparse file of 1 TiB", append(withoutEnd(t, dataDir), sparse...),
			[]string{"the archive expands past the free space", `"data/base/5/99999" would need 1.0 TiB`, "kept for the instances"}},
		{"16 GiB of zeros as tar.zst", zstdBomb(t, dataDir),
			[]string{"the archive expands past the free space", "would need 256 MiB", "kept for the instances"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Logf("the archive: %d bytes (%d of them the data directory's)", len(c.archive), len(withoutEnd(t, dataDir)))
			img := newImage(t, e, "", c.archive)
			before := settledFree(t, w)
			started := time.Now()
			got, err := e.FinaliseImage(ctx, img.ID)
			t.Logf("refused after %s: %v", time.Since(started).Round(time.Millisecond), err)
			if !errors.Is(err, engine.ErrFinaliseFailed) || got.Status != store.ImageFailed {
				t.Fatalf("finalise: %+v, %v; want failed", got, err)
			}
			for _, s := range c.says {
				if !strings.Contains(got.Error, s) {
					t.Errorf("the image's error %q does not say %q", got.Error, s)
				}
			}
			for _, name := range []string{engine.UploadVolume(img.ID), engine.ImageVolume(img.ID)} {
				if _, err := w.storage.Get(ctx, name); !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("volume %s after the refusal: %v, want none", name, err)
				}
			}
			// The disk is as it was, but for the upload, which a failed
			// finalise removes.
			after := settledFree(t, w)
			if diff := before + int64(len(c.archive)) - after; diff > 16<<20 || diff < -16<<20 {
				t.Errorf("free bytes %d before the finalise, %d after, the %d-byte upload removed: the disk is not as it was", before, after, len(c.archive))
			}

			if _, err := e.UploadImage(ctx, img.ID, bytes.NewReader(good)); err != nil {
				t.Fatalf("uploading again: %v", err)
			}
			if again, err := e.FinaliseImage(ctx, img.ID); err != nil || again.Status != store.ImageReady {
				t.Fatalf("finalise of a good upload after the refusal: %+v, %v", again, err)
			}
			inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
			if err != nil {
				t.Fatal(err)
			}
			if n := mustSQL(t, passwordConn(inst), "select count(*)::text from people"); n != "3" {
				t.Fatalf("people in a clone: %s", n)
			}
			if err := e.DestroyImage(ctx, img.ID, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFinaliseCutShortLeavesNoVolume: a finalise that a crash of sindrid
// cut short (the image finalising, its upload volume half filled) is
// marked failed by the next start's reconcile, which removes the volume.
func TestFinaliseCutShortLeavesNoVolume(t *testing.T) {
	w := newWorld(t, 3)
	e := engine.New(w.options())
	img := newImage(t, e, "", sourceTarball(t))
	if err := w.store.SetImageStatus(ctx, img.ID, store.ImageFinalising, ""); err != nil {
		t.Fatal(err)
	}
	vol, err := w.storage.Get(ctx, engine.UploadVolume(img.ID))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol.Path, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := engine.New(w.options()).Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := w.store.GetImage(ctx, img.ID); err != nil || got.Status != store.ImageFailed {
		t.Fatalf("image after reconcile: %+v, %v; want failed", got, err)
	}
	if _, err := w.storage.Get(ctx, engine.UploadVolume(img.ID)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the half-made upload volume after reconcile: %v, want none", err)
	}
	if got, err := e.FinaliseImage(ctx, img.ID); err != nil || got.Status != store.ImageReady {
		t.Fatalf("finalise again: %+v, %v", got, err)
	}
}

// hostileDataDir is a stopped data directory, as a user uploads one,
// holding table people and every hostile configuration an upload can
// carry: each way of holding settings in files (hostile values of every
// setting sindri pins, a canary custom setting and a line that breaks the
// start), and settings per database and role in the catalog (a library
// loaded into every session, a library path, and a search_path that puts
// the data's own pg_roles before the catalog's for the superuser, with a
// view that records who read it, and event triggers, one enabled ALWAYS,
// that record the commands they see); plus harmless settings that stay.
func hostileDataDir(t *testing.T, canaryDir string) string {
	t.Helper()
	src := pgtest.StartInstance(t)
	conn, err := pgx.Connect(ctx, src.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, stmt := range []string{
		"create table people (id int primary key, email text)",
		"insert into people values (1, 'a@x'), (2, 'b@x'), (3, 'c@y')",
		"create schema sindri_evil",
		"create table sindri_evil.hits (who text)",
		"create function sindri_evil.spy() returns setof pg_catalog.pg_roles language sql as " +
			"$$ insert into sindri_evil.hits values (current_user); select * from pg_catalog.pg_roles $$",
		"create view sindri_evil.pg_roles as select * from sindri_evil.spy()",
		"create view sindri_evil.pg_database as select * from pg_catalog.pg_database where (select count(*) from sindri_evil.spy()) >= 0",
		"create function sindri_evil.on_ddl() returns event_trigger language plpgsql as $$ begin insert into sindri_evil.hits values ('event trigger ' || tg_tag); end $$",
		"create event trigger sindri_evil_ddl on ddl_command_start execute function sindri_evil.on_ddl()",
		"create event trigger sindri_evil_always on ddl_command_end execute function sindri_evil.on_ddl()",
		"alter event trigger sindri_evil_always enable always",
		"alter role postgres set search_path = sindri_evil, pg_catalog",
		"alter role all set dynamic_library_path = '" + canaryDir + "'",
		"alter database postgres set work_mem = '7MB'",
		"alter database postgres set local_preload_libraries = " + pgtest.CanaryLib,
		"alter database postgres set session_preload_libraries = " + pgtest.CanaryLib, // from here no session starts
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	conn.Close(ctx)
	if err := postgres.Stop(ctx, src.DataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// The data directory's own files, as they were before sindri ran it.
	for _, name := range []string{"postgresql.conf", "pg_hba.conf", "pg_ident.conf", postgres.AutoConfFile} {
		os.Rename(filepath.Join(src.DataDir, name+postgres.KeptSuffix), filepath.Join(src.DataDir, name))
	}
	pgtest.AppendTo(t, filepath.Join(src.DataDir, "postgresql.conf"), "timezone = 'Pacific/Auckland'\n")
	for _, v := range pgtest.HostileVectors {
		if !strings.Contains(v.Name, "symbolic link") { // an upload cannot carry a link outside
			v.Plant(t, src.Owner, src.DataDir, canaryDir)
		}
	}
	return src.DataDir
}

// checkInstanceIsSindris checks, as a client and as an observer over
// the instance's private socket, that an instance of a hostile upload
// runs with sindri's settings, reads no file of the upload as
// configuration, keeps the harmless settings, and that nothing the upload
// planted ran in sindri's sessions.
func checkInstanceIsSindris(t *testing.T, w *world, inst store.Instance, canaryDir string) {
	t.Helper()
	got, err := sql(t, passwordConn(inst), "select current_setting('work_mem') || ' ' || current_setting('timezone')")
	if err != nil {
		t.Fatalf("a client's session: %v", err)
	}
	if got != "7MB Pacific/Auckland" {
		t.Errorf("a client sees %q, want the kept work_mem and timezone", got)
	}
	conn, err := pgx.Connect(ctx, w.superuserConn(inst))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	vol, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	if err != nil {
		t.Fatal(err)
	}
	pgtest.CheckSindrisSettings(t, conn, pgtest.Where{
		DataDir: vol.Path, SocketDir: filepath.Join(w.runDir, strconv.FormatInt(inst.ID, 10)), Port: inst.Port,
		ClusterName: engine.InstanceVolume(inst.ID), SharedBuffers: "16MB",
	}, canaryDir)
	if n := pgtest.MustQuery(t, conn, "select count(*)::text from people"); n != "3" {
		t.Errorf("%s people in the instance, want 3", n)
	}
	if hits := pgtest.MustQueryAll(t, conn, "select who from sindri_evil.hits"); len(hits) != 0 {
		t.Errorf("the upload's planted code ran in sindri's sessions: %q", hits)
	}
	if got := pgtest.MustQueryAll(t, conn, "select evtname || ' ' || evtenabled::text from pg_event_trigger"); strings.Join(got, ",") != "sindri_evil_always A,sindri_evil_ddl O" {
		t.Errorf("the data's event triggers are now %q, want them as they were", got)
	}
	if left := pgtest.MustQueryAll(t, conn, "select unnest(setconfig) from pg_db_role_setting"); strings.Join(left, ",") != "work_mem=7MB" {
		t.Errorf("settings per database and role left: %q, want work_mem alone", left)
	}
}

// TestHostileUploadRunsWithSindrisSettings finalises a hostile upload
// through the engine and starts an instance of it: finalise's private
// start and the instance both run with sindri's settings (a planted file
// that were read would stop either from starting), the image holds the
// upload's configuration files only under other names, and no planted
// code ran in sindri's sessions.
func TestHostileUploadRunsWithSindrisSettings(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	canaryDir := pgtest.Dir(t)
	dir := hostileDataDir(t, canaryDir)
	archive, err := exec.Command("tar", "-C", filepath.Dir(dir), "-czf", "-", filepath.Base(dir)).Output()
	if err != nil {
		t.Fatal(err)
	}
	img := newImage(t, e, "", archive)
	got, err := e.FinaliseImage(ctx, img.ID)
	if err != nil || got.Status != store.ImageReady {
		t.Fatalf("finalise: %+v, %v", got, err)
	}
	frozen, err := w.storage.Get(ctx, engine.ImageVolume(img.ID))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"postgresql.conf", "pg_hba.conf", "pg_ident.conf"} {
		if _, err := os.Lstat(filepath.Join(frozen.Path, name)); !os.IsNotExist(err) {
			t.Errorf("the image holds the upload's %s: %v", name, err)
		}
		if _, err := os.Lstat(filepath.Join(frozen.Path, name+postgres.KeptSuffix)); err != nil {
			t.Errorf("the image does not keep the upload's %s beside: %v", name, err)
		}
	}
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	checkInstanceIsSindris(t, w, inst, canaryDir)
}

// TestHostileImageFromBeforeStartsSafely freezes the hostile data
// directory as an image directly, as images finalised before sindri put
// the upload's configuration aside hold it: an instance of it must run
// with sindri's settings all the same.
func TestHostileImageFromBeforeStartsSafely(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	canaryDir := pgtest.Dir(t)
	dir := hostileDataDir(t, canaryDir)
	pgtest.AppendTo(t, filepath.Join(dir, "postgresql.conf"), pgtest.OldIncludeLine+"\n") // as sindri left it

	img, err := w.store.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	vol, err := w.storage.Create(ctx, engine.UploadVolume(img.ID))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", dir+"/.", vol.Path).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if _, err := w.storage.Freeze(ctx, vol.Name, engine.ImageVolume(img.ID)); err != nil {
		t.Fatal(err)
	}
	if err := w.store.MarkImageReady(ctx, img.ID, "15", 1, false); err != nil {
		t.Fatal(err)
	}
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	checkInstanceIsSindris(t, w, inst, canaryDir)
}

// An uploaded catalog can name, as a C function's library, a file it
// ships in its own data directory: a client's call would load it into the
// server as the postgres OS user. The library here writes a file when it
// is loaded; finalise refuses the upload, naming the function, and
// nothing loads it.
func TestUploadedLibraryIsRefused(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatal("gcc is not installed; `make deps` installs it")
	}
	w := newWorld(t, 5)
	e := engine.New(w.options())
	// Where the library, loaded by a postmaster, would leave its mark.
	marks := pgtest.Dir(t)
	if err := w.owner.Chown(marks, false); err != nil {
		t.Fatal(err)
	}
	loaded := filepath.Join(marks, "loaded")
	src := pgtest.StartSource(t)
	// The library goes into the data directory the upload carries; the
	// catalog names it where the upload's volume will have it.
	lib := filepath.Join(src.DataDir, "evil.so")
	code := filepath.Join(t.TempDir(), "evil.c")
	os.WriteFile(code, []byte(`#include <stdio.h>
__attribute__((constructor)) static void loaded(void) { FILE *f = fopen(LOADED, "w"); if (f) fclose(f); }
`), 0o600)
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, fmt.Sprintf(`-DLOADED="%s"`, loaded), code).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	// The image's frozen volume keeps the file for the image's whole life.
	where := filepath.Join(w.root, "images", engine.ImageVolume(2), "evil.so")
	// CREATE FUNCTION loads the library it names: the functions are made
	// with one of the server's own, and the catalog is then pointed at
	// where the upload's file will be, as a hostile upload's is.
	pgtest.Exec(t, src.SocketURL(), fmt.Sprintf(`create function evil() returns int as '$libdir/plpgsql', 'plpgsql_call_handler' language c;
		create function evil_too() returns int as '$libdir/plpgsql', 'plpgsql_call_handler' language c;
		update pg_proc set probin = '%[1]s' where proname = 'evil';
		update pg_proc set probin = '$libdir/../../../..%[1]s' where proname = 'evil_too';`, where))
	if err := postgres.Stop(ctx, src.DataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	tarball, err := exec.Command("tar", "-C", src.DataDir, "-czf", "-", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	img := newImage(t, e, "", tarball)
	if img.ID != 2 {
		t.Fatalf("image %d, want 2: the catalog names image 2's volume", img.ID)
	}
	got, err := e.FinaliseImage(ctx, img.ID)
	if !errors.Is(err, engine.ErrFinaliseFailed) || got.Status != store.ImageFailed {
		t.Fatalf("finalise: %s, %v; want failed", got.Status, err)
	}
	for _, want := range []string{"evil()", where, "evil_too()", "not one of the server's own"} {
		if !strings.Contains(got.Error, want) {
			t.Errorf("the image's error does not say %q: %s", want, got.Error)
		}
	}
	if _, err := os.Stat(loaded); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the uploaded library was loaded: %v", err)
	}
}
