package postgres

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// Files in a data directory belong to the postgres user, who could make
// any of them a symbolic link to a file only root may touch. sindrid runs
// as root, so it reads, writes and chowns them without following links.

// maxDataDirFile bounds what is read from a small file of the data
// directory (a log is read from its end).
const maxDataDirFile = 1 << 20

// readNoFollow reads a regular file without following a link in its last
// component.
func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, noFollowError(path, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if info.Size() > maxDataDirFile {
		if _, err := f.Seek(-maxDataDirFile, io.SeekEnd); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(io.LimitReader(f, maxDataDirFile))
}

// openNoFollow opens path for appending, making it when missing and
// replacing a symbolic link with a file, and gives it to owner through
// the open file.
func openNoFollow(path string, owner OSUser) (*os.File, error) {
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND | syscall.O_NOFOLLOW
	f, err := os.OpenFile(path, flags, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		if err := os.Remove(path); err != nil {
			return nil, err
		}
		f, err = os.OpenFile(path, flags|os.O_EXCL, 0o600)
	}
	if err != nil {
		return nil, err
	}
	if err := f.Chown(int(owner.UID), int(owner.GID)); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func noFollowError(path string, err error) error {
	if errors.Is(err, syscall.ELOOP) {
		return fmt.Errorf("%s is a symbolic link; sindri does not follow links in a data directory", path)
	}
	return err
}
