package postgres

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"
)

// relationFile matches the name of a relation's data file: its filenode,
// a fork suffix, a segment number (12345, 12345_fsm, 12345.2).
var relationFile = regexp.MustCompile(`^[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`)

// relocatingPattern names the new directory or file that takes one's
// place.
const relocatingPattern = ".sindri-relocating-*"

// LayOutForClones gives every directory below dataDir, and every file
// that is not a relation's data file (pg_control, the WAL, the SLRUs,
// the configuration, the relcache init files), a new inode, made after
// all the relation files'. It changes no content, owner or permission,
// nor a file's modification time (a directory's is that of the renames).
//
// On BTRFS a filesystem tree's items are in inode order, and a clone's
// start writes only those files and directories. Its first write to each
// leaf of the tree, which it shares with the image, copies the leaf and
// takes a new reference on every data extent the leaf points to; with
// many clones of one image each extent has many references, spread over
// the extent tree, so each new one dirties a leaf of its own that the
// transaction commit writes. Kept apart from the relation files, the
// leaves a start writes point to few extents. The copies are written
// afresh, so that a WAL segment written piecemeal comes out in few
// extents. dataDir's own inode, the subvolume's root, cannot move.
//
// dataDir is an upload: nothing is followed through a symbolic link, and
// a file with other hard links keeps its inode.
func LayOutForClones(dataDir string) error {
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := relocate(filepath.Join(dataDir, e.Name()), e, false); err != nil {
			return err
		}
	}
	return nil
}

// relocate gives path a new inode, and, when it is a directory, does so
// for what it holds; inRelationDir says whether path's directory holds
// relation files (global/, base/<database>/).
func relocate(path string, entry fs.DirEntry, inRelationDir bool) error {
	switch {
	case entry.Type()&fs.ModeSymlink != 0:
		return nil
	case entry.IsDir():
		return relocateDir(path)
	case entry.Type().IsRegular() && !(inRelationDir && relationFile.MatchString(entry.Name())):
		return relocateFile(path)
	}
	return nil
}

func relocateDir(path string) error {
	st, err := lstat(path)
	if err != nil {
		return err
	}
	fresh, err := os.MkdirTemp(filepath.Dir(path), relocatingPattern)
	if err != nil {
		return fmt.Errorf("laying out %s for clones: %w", path, err)
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Rename(filepath.Join(path, e.Name()), filepath.Join(fresh, e.Name())); err != nil {
			return err
		}
	}
	if err := os.Remove(path); err != nil {
		return err
	}
	if err := sameOwnerAndMode(fresh, st); err != nil {
		return err
	}
	if err := os.Rename(fresh, path); err != nil {
		return err
	}
	relationDir := filepath.Base(path) == "global" || filepath.Base(filepath.Dir(path)) == "base"
	for _, e := range entries {
		if err := relocate(filepath.Join(path, e.Name()), e, relationDir); err != nil {
			return err
		}
	}
	return nil
}

func relocateFile(path string) error {
	st, err := lstat(path)
	if err != nil {
		return err
	}
	if st.Nlink > 1 {
		return nil
	}
	src, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.CreateTemp(filepath.Dir(path), relocatingPattern)
	if err != nil {
		return fmt.Errorf("laying out %s for clones: %w", path, err)
	}
	fresh := dst.Name()
	// Written in one go, not shared: io.Copy on two files would use
	// copy_file_range, which BTRFS answers with a reflink of the extents.
	_, err = io.Copy(struct{ io.Writer }{dst}, src)
	err = errors.Join(err, dst.Close())
	if err == nil {
		err = sameOwnerAndMode(fresh, st)
	}
	if err == nil {
		err = os.Chtimes(fresh, timespec(st.Atim), timespec(st.Mtim))
	}
	if err == nil {
		err = os.Rename(fresh, path)
	}
	if err != nil {
		os.Remove(fresh)
	}
	return err
}

func lstat(path string) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	return &st, nil
}

func sameOwnerAndMode(path string, st *syscall.Stat_t) error {
	if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return syscall.Chmod(path, st.Mode&0o777)
}

func timespec(ts syscall.Timespec) time.Time { return time.Unix(ts.Sec, ts.Nsec) }
