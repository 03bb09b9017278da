package engine_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// tarEntry is one entry of a tarball built by a test.
type tarEntry struct {
	hdr  tar.Header
	body []byte
}

// readTarGz decodes a tar.gz (as sourceTarball makes) into its entries.
func readTarGz(t *testing.T, data []byte) []tarEntry {
	t.Helper()
	z, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(z)
	var entries []tarEntry
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, tarEntry{hdr: *hdr, body: body})
	}
}

// writeTar encodes entries as an uncompressed tar.
func writeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func regular(name, body string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}, body: []byte(body)}
}

func link(typ byte, name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Linkname: target, Typeflag: typ, Mode: 0o777}}
}

// withEntries is the real data directory followed by extra entries: a
// finalise that skipped a refused entry instead of failing would make a
// ready image of it.
func withEntries(dataDir []tarEntry, extra ...tarEntry) []tarEntry {
	return append(append([]tarEntry(nil), dataDir...), extra...)
}

// escapeMarker starts the name of every file a hostile tarball tries to
// make; none may exist anywhere after its finalise.
const escapeMarker = "sindri-escape-"

// markersUnder lists the files and links under dir named like a hostile
// tarball's entries.
func markersUnder(t *testing.T, dir string) []string {
	t.Helper()
	return namedUnder(t, dir, escapeMarker)
}

// namedUnder lists the files, directories and links under dir whose names
// start with prefix.
func namedUnder(t *testing.T, dir, prefix string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a clone's file went while walking
			}
			return err
		}
		if strings.HasPrefix(d.Name(), prefix) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestFinaliseRefusesHostileAndBrokenTarballs uploads tarballs that try to
// write outside the upload volume, make devices, or are not (whole) data
// directories, and checks that each finalise fails saying why, makes
// none of the hostile entries (outside the upload volume or in it), leaves
// no image volume, and keeps the upload and the image taking uploads: a
// good tarball uploaded after a failure finalises.
func TestFinaliseRefusesHostileAndBrokenTarballs(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	good := sourceTarball(t)
	dataDir := readTarGz(t, good)
	if len(dataDir) < 100 || !strings.HasSuffix(dataDir[0].hdr.Name, "data/") {
		t.Fatalf("the source tarball has %d entries, starting %q: want a data directory under data/", len(dataDir), dataDir[0].hdr.Name)
	}
	// The whole tree of the test's filesystem: its image file and mount
	// (w.root is <tmp>/mnt/sindri; upload volumes are
	// w.root/volumes/upload-<id>, so ../../../.. from one is <tmp>).
	tree := filepath.Dir(filepath.Dir(w.root))
	outside := t.TempDir() // a directory that absolute names and links aim at
	absolute := filepath.Join(outside, escapeMarker+"absolute")

	var noPGVersion []tarEntry
	for _, en := range dataDir {
		if en.hdr.Name != "data/PG_VERSION" {
			noPGVersion = append(noPGVersion, en)
		}
	}
	if len(noPGVersion) != len(dataDir)-1 {
		t.Fatal("the source tarball has no data/PG_VERSION")
	}
	oldMajor := withEntries(noPGVersion, regular("data/PG_VERSION", "9.6\n"))

	plain := writeTar(t, dataDir)
	// A cut in the middle of a 512-byte block: inside a header or a file.
	cutPlain := plain[:len(plain)/2+100]
	cutGzip := good[:len(good)/2]

	cases := []struct {
		name    string
		archive []byte
		says    []string // substrings of the image's error
		retry   bool     // then upload the good tarball and finalise again
	}{
		{"path traversal", writeTar(t, withEntries(dataDir, regular("../../../../"+escapeMarker+"traversal", "x"))),
			[]string{escapeMarker + "traversal", "climbs out"}, true},
		{"shallow path traversal", writeTar(t, withEntries(dataDir, regular("data/../../"+escapeMarker+"shallow", "x"))),
			[]string{escapeMarker + "shallow", "climbs out"}, false},
		{"absolute path", writeTar(t, withEntries(dataDir, regular(absolute, "x"))),
			[]string{"absolute path", absolute}, false},
		{"symbolic link upwards, then a file through it", writeTar(t, withEntries(dataDir,
			link(tar.TypeSymlink, escapeMarker+"up", "../.."),
			regular(escapeMarker+"up/"+escapeMarker+"through-up", "x"))),
			[]string{escapeMarker + "up", "may lead outside the data directory"}, false},
		{"absolute symbolic link, then a file through it", writeTar(t, withEntries(dataDir,
			link(tar.TypeSymlink, escapeMarker+"abs", outside),
			regular(escapeMarker+"abs/"+escapeMarker+"through-abs", "x"))),
			[]string{escapeMarker + "abs", "may lead outside the data directory"}, false},
		{"symbolic link to /etc", writeTar(t, withEntries(dataDir,
			link(tar.TypeSymlink, escapeMarker+"etc", "/etc"),
			regular(escapeMarker+"etc/"+escapeMarker+"through-etc", "x"))),
			[]string{escapeMarker + "etc", "may lead outside the data directory"}, false},
		{"hard link upwards", writeTar(t, withEntries(dataDir, link(tar.TypeLink, escapeMarker+"hard", "../../../victim"))),
			[]string{escapeMarker + "hard", "hard link", "leads outside the data directory"}, false},
		{"hard link to /etc/passwd", writeTar(t, withEntries(dataDir, link(tar.TypeLink, escapeMarker+"passwd", "/etc/passwd"))),
			[]string{escapeMarker + "passwd", "hard link", "leads outside the data directory"}, false},
		{"character device", writeTar(t, withEntries(dataDir, tarEntry{hdr: tar.Header{
			Name: "data/" + escapeMarker + "null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}})),
			[]string{escapeMarker + "null", "character device"}, false},
		{"FIFO", writeTar(t, withEntries(dataDir, tarEntry{hdr: tar.Header{
			Name: "data/" + escapeMarker + "fifo", Typeflag: tar.TypeFifo, Mode: 0o666}})),
			[]string{escapeMarker + "fifo", "FIFO"}, false},
		{"tar cut in the middle", cutPlain, []string{"truncated"}, true},
		{"tar.gz cut in the middle", cutGzip, []string{"truncated"}, false},
		{"not a tar", []byte(strings.Repeat("junk ", 200)), []string{"not a tar"}, false},
		{"empty", nil, []string{"not a tar", "empty"}, false},
		{"not a data directory", writeTar(t, noPGVersion), []string{"no PostgreSQL data directory", "PG_VERSION"}, false},
		{"a major not installed", writeTar(t, oldMajor), []string{"PostgreSQL 9.6", "not installed"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := newImage(t, e, "", c.archive)
			got, err := e.FinaliseImage(ctx, img.ID)
			if !errors.Is(err, engine.ErrFinaliseFailed) {
				t.Fatalf("finalise: %+v, %v; want ErrFinaliseFailed", got, err)
			}
			stored, serr := w.store.GetImage(ctx, img.ID)
			if serr != nil {
				t.Fatal(serr)
			}
			for _, im := range []store.Image{got, stored} {
				if im.Status != store.ImageFailed {
					t.Errorf("image status %s, want failed", im.Status)
				}
				for _, s := range c.says {
					if !strings.Contains(im.Error, s) {
						t.Errorf("image error %q does not say %q", im.Error, s)
					}
				}
			}
			if !strings.Contains(err.Error(), got.Error) {
				t.Errorf("finalise error %q does not carry the image's error %q", err, got.Error)
			}
			for _, name := range []string{engine.ImageVolume(img.ID), engine.UploadVolume(img.ID)} {
				if _, err := w.storage.Get(ctx, name); !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("volume %s after a failed finalise: %v, want ErrNotFound", name, err)
				}
			}
			if found := markersUnder(t, tree); len(found) != 0 {
				t.Errorf("the hostile entries were made: %v", found)
			}
			if found := markersUnder(t, outside); len(found) != 0 {
				t.Errorf("files appeared in %s: %v", outside, found)
			}
			if _, err := os.Lstat("/etc/" + escapeMarker + "through-etc"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a file was written into /etc: %v", err)
			}
			if pids := postmastersUnder(w.root); len(pids) != 0 {
				t.Errorf("postmasters left running: %v", pids)
			}
			// The upload is removed; a retry takes a new one.
			if left := uploadDirEntries(t, w, img.ID); len(left) != 0 {
				t.Errorf("the upload directory after a failed finalise holds %v; want it empty", left)
			}
			if !c.retry {
				return
			}
			if _, err := e.UploadImage(ctx, img.ID, bytes.NewReader(good)); err != nil {
				t.Fatalf("uploading again after a failed finalise: %v", err)
			}
			again, err := e.FinaliseImage(ctx, img.ID)
			if err != nil || again.Status != store.ImageReady || again.Error != "" || again.PGVersion != "15" {
				t.Fatalf("finalise after a good upload: %+v, %v", again, err)
			}
			inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
			if err != nil {
				t.Fatal(err)
			}
			if n := mustSQL(t, certConn(t, inst), "select count(*)::text from people"); n != "3" {
				t.Fatalf("people in a clone of the retried image: %s", n)
			}
			if err := e.DestroyInstance(ctx, inst.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The search for hostile entries sees into volumes: it finds the
	// fixture image's PG_VERSION.
	fixture := filepath.Join(w.root, "images", engine.ImageVolume(1), "PG_VERSION")
	if found := namedUnder(t, tree, "PG_VERSION"); !slices.Contains(found, fixture) {
		t.Errorf("the walk of %s did not find %s: %v", tree, fixture, found)
	}
}

// tarNames lists the entry names of an uncompressed tar.
func tarNames(t *testing.T, data []byte) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names[hdr.Name] = true
	}
}

// TestBaseBackupOfRunningServerFinalises uploads the base.tar of
// pg_basebackup -Ft -X fetch, taken while the source server runs and is
// written to: a backup that is consistent only after WAL replay. Finalise
// must recover it (keeping backup_label, so that replay starts where the
// backup did), shut it down cleanly, and its clones must see the rows
// written before the backup and a transactionally consistent rest.
func TestBaseBackupOfRunningServerFinalises(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	src := replicationSource(t) // people: 3 rows
	pgtest.Exec(t, src.SocketURL(), "create table pair_a (id int primary key); create table pair_b (id int primary key)")

	// A writer that, while the backup runs, inserts into both tables in
	// one statement: a clone must never see one without the other.
	stop := make(chan struct{})
	var committed atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, src.SocketURL())
		if err != nil {
			writerDone <- err
			return
		}
		defer conn.Close(ctx)
		for i := 1; ; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			if _, err := conn.Exec(ctx, "with x as (insert into pair_a values ($1) returning id) insert into pair_b select id from x", i); err != nil {
				writerDone <- err
				return
			}
			committed.Store(int64(i))
		}
	}()
	for committed.Load() < 20 {
		select {
		case err := <-writerDone:
			t.Fatalf("writer: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	before := committed.Load()

	out := t.TempDir()
	cmd := exec.Command(filepath.Join(pgtest.BinDir(t), "pg_basebackup"), "-h", src.SocketDir, "-p", strconv.Itoa(src.Port),
		"-U", "postgres", "--no-password", "-D", out, "-Ft", "-X", "fetch", "--checkpoint=fast")
	if msg, err := cmd.CombinedOutput(); err != nil {
		close(stop)
		t.Fatalf("pg_basebackup: %v\n%s", err, msg)
	}
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("pairs committed: %d before the backup, %d by its end", before, committed.Load())

	base, err := os.ReadFile(filepath.Join(out, "base.tar"))
	if err != nil {
		t.Fatal(err)
	}
	names := tarNames(t, base)
	var segments int
	for n := range names {
		if strings.HasPrefix(n, "pg_wal/") && len(filepath.Base(n)) == 24 {
			segments++
		}
	}
	if !names["backup_label"] || !names["PG_VERSION"] || segments == 0 {
		t.Fatalf("base.tar is not an online backup with its WAL (backup_label %v, PG_VERSION %v, %d WAL segments)",
			names["backup_label"], names["PG_VERSION"], segments)
	}

	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.UploadImage(ctx, img.ID, bytes.NewReader(base)); err != nil {
		t.Fatal(err)
	}
	got, err := e.FinaliseImage(ctx, img.ID)
	if err != nil || got.Status != store.ImageReady || got.PGVersion != "15" {
		t.Fatalf("finalise: %+v, %v", got, err)
	}

	// The image is shut down cleanly after recovery: no backup_label left
	// and pg_control says so, so that clones start without replay.
	frozen, err := w.storage.Get(ctx, engine.ImageVolume(img.ID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(frozen.Path, "backup_label")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("backup_label in the ready image: %v", err)
	}
	control, err := exec.Command(filepath.Join(pgtest.BinDir(t), "pg_controldata"), frozen.Path).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_controldata: %v\n%s", err, control)
	}
	if !regexp.MustCompile(`(?m)^Database cluster state:\s+shut down$`).Match(control) {
		t.Errorf("the image was not shut down cleanly:\n%s", control)
	}

	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	conn := certConn(t, inst)
	if got := mustSQL(t, conn, "select string_agg(email, ',' order by id) from people"); got != "a@x,b@x,c@y" {
		t.Fatalf("people in the clone: %q", got)
	}
	pairs := mustSQL(t, conn, "select format('%s %s %s', (select count(*) from pair_a), (select count(*) from pair_b), (select count(*) from pair_a full join pair_b using (id) where pair_a.id is null or pair_b.id is null))")
	var a, b, unmatched int64
	if _, err := fmt.Sscan(pairs, &a, &b, &unmatched); err != nil {
		t.Fatalf("%q: %v", pairs, err)
	}
	if a != b || unmatched != 0 || a < before || a > committed.Load() {
		t.Fatalf("the clone has %d rows in pair_a and %d in pair_b (%d unmatched); want equal, between %d and %d", a, b, unmatched, before, committed.Load())
	}
	t.Logf("the clone has %d pairs", a)
	pgtest.Exec(t, passwordConn(inst), "insert into people values (4, 'd@x')")
}

// TestFinaliseRefusesTarCutAtAnEntryBoundary uploads a plain tar cut
// short exactly between two entries (as when `tar cf - | curl -T -` loses
// its tar half-way: curl ends the upload cleanly), without tar's
// end-of-archive marker, the user tables' files being the entries lost.
// Finalise must fail saying the archive is truncated, not make a ready
// image whose clones cannot read those tables.
func TestFinaliseRefusesTarCutAtAnEntryBoundary(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	good := sourceTarball(t)
	// Any order of entries is a valid tar; here the files of the user
	// tables (relfilenodes from 16384 on, in database postgres) come last.
	var front, user []tarEntry
	for _, en := range readTarGz(t, good) {
		rest, ok := strings.CutPrefix(en.hdr.Name, "data/base/5/")
		if oid, err := strconv.Atoi(strings.SplitN(rest, "_", 2)[0]); ok && err == nil && oid >= 16384 {
			user = append(user, en)
		} else {
			front = append(front, en)
		}
	}
	if len(user) == 0 {
		t.Fatal("no user table files in the source tarball")
	}
	whole := writeTar(t, append(append([]tarEntry(nil), front...), user...))
	cut := len(writeTar(t, front)) - 1024 // the front entries, without the two zero blocks
	img := newImage(t, e, "", whole[:cut])
	got, err := e.FinaliseImage(ctx, img.ID)
	if !errors.Is(err, engine.ErrFinaliseFailed) || got.Status != store.ImageFailed || !strings.Contains(got.Error, "truncated") {
		t.Fatalf("finalise of a tar cut between entries: %+v, %v; want failed saying truncated", got, err)
	}
	if _, err := w.storage.Get(ctx, engine.ImageVolume(img.ID)); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("image volume after a failed finalise: %v, want ErrNotFound", err)
	}
}

// TestFinaliseOfBaseTarWithoutItsWALSaysSo uploads the base.tar of
// pg_basebackup -Ft with its default -X stream, which puts the WAL the
// backup needs in pg_wal.tar: the failure must say that the WAL is
// missing, not end on PostgreSQL's hint that removing backup_label
// corrupts the cluster (the last lines of its log, all the error shows
// today).
func TestFinaliseOfBaseTarWithoutItsWALSaysSo(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	src := replicationSource(t)
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(pgtest.BinDir(t), "pg_basebackup"), "-h", src.SocketDir, "-p", strconv.Itoa(src.Port),
		"-U", "postgres", "--no-password", "-D", out, "-Ft", "--checkpoint=fast")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, msg)
	}
	base, err := os.ReadFile(filepath.Join(out, "base.tar"))
	if err != nil {
		t.Fatal(err)
	}
	img := newImage(t, e, "", base)
	got, err := e.FinaliseImage(ctx, img.ID)
	if !errors.Is(err, engine.ErrFinaliseFailed) || got.Status != store.ImageFailed {
		t.Fatalf("finalise of a base.tar without WAL: %+v, %v; want failed", got, err)
	}
	// Paths hold the test's name, which says WAL.
	if msg := strings.ReplaceAll(got.Error, filepath.Dir(filepath.Dir(w.root)), "…"); !strings.Contains(msg, "WAL") {
		t.Fatalf("the error %q does not say that the backup's WAL is missing", got.Error)
	}
}
