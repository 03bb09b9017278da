package postgres_test

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// fileState is what LayOutForClones must keep of an entry.
type fileState struct {
	kind            fs.FileMode
	perm            uint32
	uid, gid        uint32
	mtime           time.Time
	content, target string
}

func dataDirState(t *testing.T, root string) (map[string]fileState, map[string]uint64) {
	t.Helper()
	states, inodes := map[string]fileState{}, map[string]uint64{}
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			return err
		}
		s := fileState{kind: e.Type(), perm: st.Mode & 0o7777, uid: st.Uid, gid: st.Gid}
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			s.target, err = os.Readlink(path)
		case e.Type().IsRegular():
			var data []byte
			data, err = os.ReadFile(path)
			s.content = fmt.Sprintf("%x", sha256.Sum256(data))
			s.mtime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
		}
		states[rel], inodes[rel] = s, st.Ino
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return states, inodes
}

var relationFileName = regexp.MustCompile(`^(global|base/[0-9]+)/[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`)

// A clone's start writes the data directory's directories and its small
// files (pg_control, the WAL, the configuration), never a relation file it
// does not query. LayOutForClones gives those what a start writes new
// inodes, all above the relation files', so that on BTRFS they share no
// leaf of the tree with the relation files' extents. Nothing else may
// change: content, owners, permissions, modification times, symbolic links
// (never followed: the data directory is an upload), hard links.
func TestLayOutForClonesPutsWhatAStartWritesAfterTheRelationFiles(t *testing.T) {
	d, seed, owner, _, upload := benchUpload(t, 1<<30)

	// What an upload may hold besides: links out of the data directory, a
	// file hard-linked twice.
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("not the upload's"), 0o600); err != nil {
		t.Fatal(err)
	}
	var outsideBefore syscall.Stat_t
	if err := syscall.Stat(outside, &outsideBefore); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(upload, "pg_tblspc", "16999")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(upload, "pg_ident.conf.link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(upload, "postgresql.conf.orig"), filepath.Join(upload, "postgresql.conf.orig.hardlink")); err != nil {
		t.Fatal(err)
	}

	before, inodesBefore := dataDirState(t, upload)
	if err := postgres.LayOutForClones(upload); err != nil {
		t.Fatal(err)
	}
	after, inodes := dataDirState(t, upload)

	for path, want := range before {
		got, ok := after[path]
		switch {
		case !ok:
			t.Errorf("%s is gone", path)
		case got != want:
			t.Errorf("%s changed: %+v, was %+v", path, got, want)
		}
	}
	for path := range after {
		if _, ok := before[path]; !ok {
			t.Errorf("%s was not there before", path)
		}
	}
	if inodes["postgresql.conf.orig"] != inodesBefore["postgresql.conf.orig"] {
		t.Errorf("postgresql.conf.orig, linked twice, has a new inode: the other link no longer names the same file")
	}
	var outsideAfter syscall.Stat_t
	if err := syscall.Stat(outside, &outsideAfter); err != nil {
		t.Fatal(err)
	}
	if outsideAfter.Ino != outsideBefore.Ino || outsideAfter.Mtim != outsideBefore.Mtim {
		t.Errorf("the directory a symbolic link in the upload points to was changed")
	}
	if data, err := os.ReadFile(secret); err != nil || string(data) != "not the upload's" {
		t.Errorf("the file a symbolic link in the upload points to: %q, %v", data, err)
	}

	var lastRelation, firstWritten uint64 = 0, ^uint64(0)
	var lastRelationPath, firstWrittenPath string
	for path, s := range after {
		switch {
		case relationFileName.MatchString(path):
			if inodes[path] > lastRelation {
				lastRelation, lastRelationPath = inodes[path], path
			}
		case s.kind.IsDir() || (s.kind.IsRegular() && !strings.HasPrefix(path, "postgresql.conf.orig")):
			if inodes[path] < firstWritten {
				firstWritten, firstWrittenPath = inodes[path], path
			}
		}
	}
	if lastRelationPath == "" || firstWrittenPath == "" {
		t.Fatalf("no relation files (%q) or no other files (%q) in the data directory", lastRelationPath, firstWrittenPath)
	}
	if firstWritten < lastRelation {
		t.Errorf("%s has inode %d, below relation file %s's %d: what a start writes is not kept apart", firstWrittenPath, firstWritten, lastRelationPath, lastRelation)
	}

	// Postgres starts a clone of it and finds its data.
	os.Remove(filepath.Join(upload, "pg_tblspc", "16999"))
	if _, err := d.Freeze(ctx, "upload-1", "image-1"); err != nil {
		t.Fatal(err)
	}
	c := startClone(t, d, seed, benchSocketDir(t, owner), "clone-1")
	tables, err := query(t, postgres.SocketURL(c.SocketDir, c.Port, "postgres", "postgres"), "SELECT count(*)::text FROM pg_class WHERE relkind = 'r'")
	if n, _ := strconv.Atoi(tables); err != nil || n < 50 {
		t.Errorf("the clone's catalog lists %q tables (%v)", tables, err)
	}
}
