//go:build linux

package dircopy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/storage"
)

// identity tells one directory from any other that had, or will have, the
// same path: its inode number and its birth time (zero where the
// filesystem keeps none), both kept by a rename.
type identity struct {
	ino   uint64
	birth int64
}

func (id identity) String() string { return fmt.Sprintf("%d.%d", id.ino, id.birth) }

func parseIdentity(s string) (identity, error) {
	ino, birth, ok := strings.Cut(s, ".")
	if !ok {
		return identity{}, fmt.Errorf("identity %q", s)
	}
	var id identity
	var err error
	if id.ino, err = strconv.ParseUint(ino, 10, 64); err != nil {
		return identity{}, err
	}
	if id.birth, err = strconv.ParseInt(birth, 10, 64); err != nil {
		return identity{}, err
	}
	return id, nil
}

// identify returns the identity of what is at path, not following a
// symlink; an error matching fs.ErrNotExist when nothing is.
func identify(path string) (identity, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return identity{}, &fs.PathError{Op: "statx", Path: path, Err: err}
	}
	id := identity{ino: st.Ino}
	if st.Mask&unix.STATX_BTIME != 0 {
		id.birth = st.Btime.Sec*1_000_000_000 + int64(st.Btime.Nsec)
	}
	return id, nil
}

// record is what the driver keeps beside an entry's directory, in
// meta/<name>: which directory it belongs to, the image a clone was made
// from, and for an image the modes of the paths Freeze took write bits
// from (relative to the image's root, "." for the root itself).
type record struct {
	id     identity
	origin string
	modes  map[string]uint32
}

// The record's lines:
//
//	dircopy-record 1
//	id <inode>.<birth time in ns>
//	origin <image>
//	mode <octal mode> <Go-quoted relative path>
const recordHeader = "dircopy-record 1"

func (r record) marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nid %s\n", recordHeader, r.id)
	if r.origin != "" {
		fmt.Fprintf(&b, "origin %s\n", r.origin)
	}
	for path, mode := range r.modes {
		fmt.Fprintf(&b, "mode %o %s\n", mode, strconv.Quote(path))
	}
	return b.Bytes()
}

func parseRecord(data []byte) (record, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	if !sc.Scan() || sc.Text() != recordHeader {
		return record{}, errors.New("not a dircopy record")
	}
	r := record{modes: map[string]uint32{}}
	for sc.Scan() {
		key, value, _ := strings.Cut(sc.Text(), " ")
		var err error
		switch key {
		case "id":
			r.id, err = parseIdentity(value)
		case "origin":
			r.origin = value
			err = storage.ValidateName(value)
		case "mode":
			mode, quoted, _ := strings.Cut(value, " ")
			var m uint64
			var path string
			if m, err = strconv.ParseUint(mode, 8, 32); err == nil {
				path, err = strconv.Unquote(quoted)
			}
			r.modes[path] = uint32(m)
		default:
			err = fmt.Errorf("unknown line %q", sc.Text())
		}
		if err != nil {
			return record{}, err
		}
	}
	return r, sc.Err()
}

func (d *Driver) recordPath(name string) string { return filepath.Join(d.root, metaDir, name) }

// readRecord returns the record kept for name; an empty one when there is
// none.
func (d *Driver) readRecord(name string) (record, error) {
	data, err := os.ReadFile(d.recordPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return record{modes: map[string]uint32{}}, nil
	}
	if err != nil {
		return record{}, err
	}
	r, err := parseRecord(data)
	if err != nil {
		return record{}, fmt.Errorf("reading the record of %q: %w", name, err)
	}
	return r, nil
}

// writeRecord replaces the record of name, whole or not at all, and makes
// it durable before the step's rename.
func (d *Driver) writeRecord(st *step, name string, r record) error {
	f, err := os.CreateTemp(st.dir, "record-")
	if err != nil {
		return err
	}
	_, err = f.Write(r.marshal())
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(f.Name(), d.recordPath(name))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("writing the record of %q: %w", name, err)
	}
	return nil
}

func (d *Driver) removeRecord(name string) error {
	if err := os.Remove(d.recordPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the record of %q: %w", name, err)
	}
	return nil
}
