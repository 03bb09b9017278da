// Package safefile opens files that another user may have put in sindrid's
// way (a data directory is the postgres user's, an upload directory the
// upload account's) without following a symbolic link in the last
// component of their path, so that root, which sindrid runs as, reads or
// writes only the file it means to; and it classifies what the filesystem
// answers.
package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// ErrSymlink: the last component of the path is a symbolic link, which is
// not followed.
var ErrSymlink = errors.New("is a symbolic link, which is not followed")

// ErrNoSpace: a write failed for want of space on the filesystem. It is
// what the system call returns (ENOSPC), so errors.Is matches it in any
// *os.PathError.
var ErrNoSpace error = syscall.ENOSPC

// NotRegularError is a path that names something other than a regular
// file: a directory, a FIFO, a device.
type NotRegularError struct {
	Path string
	Type fs.FileMode
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is not a regular file (%s)", e.Path, e.Type)
}

// OpenRegular opens path for reading. A symbolic link in its last
// component is ErrSymlink; anything but a regular file is a
// *NotRegularError, found without blocking on a FIFO.
func OpenRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, symlinkError(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, &NotRegularError{Path: path, Type: fi.Mode().Type()}
	}
	return f, nil
}

// CreateNew makes path, which must not exist (a symbolic link of that
// name is fs.ErrExist too), and opens it for writing.
func CreateNew(path string, perm fs.FileMode) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, perm)
}

// OpenAppend opens path for appending, making it when missing. A
// symbolic link of that name is replaced with a new file: the link's
// target is never written.
func OpenAppend(path string, perm fs.FileMode) (*os.File, error) {
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND | syscall.O_NOFOLLOW
	f, err := os.OpenFile(path, flags, perm)
	if errors.Is(err, syscall.ELOOP) {
		if err := os.Remove(path); err != nil {
			return nil, err
		}
		f, err = os.OpenFile(path, flags|os.O_EXCL, perm)
	}
	return f, err
}

// SyncDir makes the entries of dir (a file renamed into it) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// symlinkError turns the system's answer to O_NOFOLLOW on a link (ELOOP)
// into ErrSymlink, keeping the operation and path.
func symlinkError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && errors.Is(pe.Err, syscall.ELOOP) {
		return &fs.PathError{Op: pe.Op, Path: pe.Path, Err: ErrSymlink}
	}
	return err
}
