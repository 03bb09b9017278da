package postgres

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sindri-db/sindri/pkg/safefile"
)

// Files in a data directory belong to the postgres user, who could make
// any of them a symbolic link to a file only root may touch. sindrid runs
// as root, so it reads, writes and chowns them without following links
// (pkg/safefile).

// maxDataDirFile bounds what is read from a small file of the data
// directory (a log is read from its end).
const maxDataDirFile = 1 << 20

// readNoFollow reads a regular file without following a link in its last
// component.
func readNoFollow(path string) ([]byte, error) {
	f, err := safefile.OpenRegular(path)
	var notRegular *safefile.NotRegularError
	switch {
	case errors.Is(err, safefile.ErrSymlink):
		return nil, fmt.Errorf("%s is a symbolic link; sindri does not follow links in a data directory", path)
	case errors.As(err, &notRegular):
		return nil, fmt.Errorf("%s is not a regular file", path)
	case err != nil:
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
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
	f, err := safefile.OpenAppend(path, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Chown(int(owner.UID), int(owner.GID)); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
