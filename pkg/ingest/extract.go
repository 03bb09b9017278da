// Package ingest turns an uploaded archive into a data directory: it
// extracts tar, tar.gz and tar.zst safely into a directory and finds the
// PostgreSQL data directory inside.
package ingest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/klauspost/compress/zstd"

	"github.com/sindri-db/sindri/pkg/iocount"
)

// ErrUnsafe is an archive entry that would reach outside the directory or
// make something that is not a plain file, directory or inner link.
// ErrNotArchive is input that is not a (compressed) tar archive.
// ErrTooLarge is an archive that expands past its Limits.
var (
	ErrUnsafe     = errors.New("unsafe archive entry")
	ErrNotArchive = errors.New("not a tar, tar.gz or tar.zst archive")
	ErrTooLarge   = errors.New("the archive expands past the free space")
)

// Limits bound what an archive may expand to; a zero field is no bound.
// Both are checked before each entry is written, so that an archive is
// refused as soon as it would pass them, however small it is compressed.
type Limits struct {
	// MaxBytes is the most disk the extracted entries may take: each
	// regular file its size rounded up to a 4 KiB block (a sparse file's
	// whole size too, though its holes are not written), and every entry
	// EntryOverhead for its inode and directory entry.
	MaxBytes int64
	// MaxEntries is the most entries the archive may hold.
	MaxEntries int
}

// EntryOverhead is what every entry is counted for, besides its data:
// about what a file system's metadata for one file takes.
const EntryOverhead = 1024

// DefaultMaxEntries bounds the entries of an archive: a data directory
// has a few files per table and index, so this is millions of relations.
const DefaultMaxEntries = 4_000_000

// MaxZstdWindow is the largest zstd window an archive may need (zstd
// --long=27; the default levels use at most 8 MiB): the decoder holds
// a window in memory.
const MaxZstdWindow = 128 << 20

// blockSize is what a regular file's size is rounded up to.
const blockSize = 4096

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Decompress returns a reader of the tar stream in r, which may be a plain
// tar or one compressed with gzip or zstd (klauspost/compress: faster than
// a cgo binding and no external zstd binary), told apart by magic bytes.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	head, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%w: bad gzip header: %v", ErrNotArchive, err)
		}
		return z, nil
	case bytes.HasPrefix(head, zstdMagic):
		z, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(MaxZstdWindow))
		if err != nil {
			return nil, fmt.Errorf("%w: bad zstd header: %v", ErrNotArchive, err)
		}
		return z.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// Options are how ExtractWith writes an archive.
type Options struct {
	Limits
	// Replica says the archive is sindri's own copy of an image (package
	// storage/portable), not an upload: each entry keeps its numeric
	// owner and group and each directory its exact mode, a "./" entry
	// gives dir itself its mode and owner, and the compressed stream is
	// read to its end, so that its checksum (zstd's, gzip's) is checked
	// and a stream cut short after the archive's end is refused too.
	Replica bool
}

// Extract writes the archive read from r into dir, which must exist.
// Every path is resolved under dir through os.Root, so that no entry and
// no symbolic link made by an earlier entry leads outside it. It refuses
// absolute names, "..", links whose target leaves the directory,
// devices, FIFOs and sockets, and reports the entry. Owners are not kept
// (the caller gives the tree to the postgres user); modes are, less
// setuid, setgid and sticky bits. A sparse file (GNU or PAX sparse) is
// written sparse. An archive that would pass limits is refused (ErrTooLarge)
// before the entry that would pass them is written; what was written
// stays, for the caller to remove.
func Extract(ctx context.Context, r io.Reader, dir string, limits Limits) (entries int, err error) {
	return ExtractWith(ctx, r, dir, Options{Limits: limits})
}

// ExtractWith is Extract with options.
func ExtractWith(ctx context.Context, r io.Reader, dir string, opts Options) (entries int, err error) {
	limits := opts.Limits
	stream, err := Decompress(r)
	if err != nil {
		return 0, err
	}
	defer stream.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	counted := &iocount.Writer{}
	tr := tar.NewReader(io.TeeReader(stream, counted))
	var used int64 // what the entries so far count for against limits.MaxBytes
	for {
		if err := ctx.Err(); err != nil {
			return entries, err
		}
		// What is left of the previous entry is read first, so that what
		// Next reads is that entry's padding (under 512 bytes) and then
		// the next header, or tar's end-of-archive marker: two zero blocks.
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return entries, fmt.Errorf("reading the archive after %d entries (truncated?): %w", entries, err)
		}
		before := counted.N
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if entries == 0 {
				return 0, fmt.Errorf("%w: the archive is empty", ErrNotArchive)
			}
			if counted.N-before < 1024 {
				return entries, fmt.Errorf("the archive ends after %d entries without tar's end-of-archive marker: it was cut short (truncated); upload the whole tarball", entries)
			}
			if opts.Replica {
				if _, err := io.Copy(io.Discard, stream); err != nil {
					return entries, fmt.Errorf("reading the stream after the archive's end (corrupt or cut short): %w", err)
				}
			}
			return entries, nil
		}
		if errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return entries, fmt.Errorf("%w: its zstd compression needs a window of more than %d MiB (as zstd --long=28 or more makes); compress it with the default settings, or --long=27 at most", ErrTooLarge, MaxZstdWindow>>20)
		}
		if err != nil {
			if entries == 0 {
				return 0, fmt.Errorf("%w: %v", ErrNotArchive, err)
			}
			return entries, fmt.Errorf("reading the archive after %d entries (truncated?): %w", entries, err)
		}
		if limits.MaxEntries > 0 && entries >= limits.MaxEntries {
			return entries, fmt.Errorf("%w: it holds more than %d entries, the most sindri extracts (%q is one more)", ErrTooLarge, limits.MaxEntries, hdr.Name)
		}
		need := int64(EntryOverhead)
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeGNUSparse {
			need += (hdr.Size + blockSize - 1) / blockSize * blockSize
		}
		if limits.MaxBytes > 0 && need > limits.MaxBytes-used {
			return entries, fmt.Errorf("%w: entry %q would need %s (%d bytes), and %s of the %s allowed are left after %d entries",
				ErrTooLarge, hdr.Name, humanize.IBytes(uint64(hdr.Size)), hdr.Size,
				humanize.IBytes(uint64(max(limits.MaxBytes-used, 0))), humanize.IBytes(uint64(limits.MaxBytes)), entries)
		}
		used += need
		name, err := safeName(hdr.Name)
		if err != nil {
			return entries, err
		}
		if name == "." {
			if opts.Replica {
				if err := replicaTop(root, hdr); err != nil {
					return entries, err
				}
			}
			continue
		}
		if err := extractEntry(root, tr, hdr, name, opts.Replica); err != nil {
			return entries, err
		}
		if opts.Replica {
			if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return entries, fmt.Errorf("giving %q its owner: %w", name, err)
			}
		}
		entries++
	}
}

// safeName cleans an entry's name to a relative slash path, or refuses it.
func safeName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: empty or NUL in name %q", ErrUnsafe, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute path %q", ErrUnsafe, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q climbs out with '..'", ErrUnsafe, name)
		}
	}
	return path.Clean(name), nil
}

// linkInside tells whether a symbolic link's target can only lead to
// somewhere under the link's own directory: relative and without "..".
// (A ".." that looks harmless on its own can escape through another link
// named in the same path, so none is accepted.)
func linkInside(target string) bool {
	if target == "" || strings.HasPrefix(target, "/") {
		return false
	}
	for _, part := range strings.Split(target, "/") {
		if part == ".." {
			return false
		}
	}
	return true
}

// replicaTop gives the directory itself the mode and owner of a replica's
// "./" entry.
func replicaTop(root *os.Root, hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("%w: the top entry %q is a %s, not a directory", ErrUnsafe, hdr.Name, typeName(hdr.Typeflag))
	}
	if err := root.Chmod(".", fs.FileMode(hdr.Mode).Perm()); err != nil {
		return err
	}
	return root.Lchown(".", hdr.Uid, hdr.Gid)
}

func extractEntry(root *os.Root, tr *tar.Reader, hdr *tar.Header, name string, replica bool) error {
	mode := fs.FileMode(hdr.Mode).Perm()
	if dir := path.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("%w: %q: %v", ErrUnsafe, name, err)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %q: %v", ErrUnsafe, name, err)
		}
		if replica {
			return root.Chmod(name, mode)
		}
		return root.Chmod(name, mode|0o700)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
		if err != nil {
			return fmt.Errorf("%w: %q: %v", ErrUnsafe, name, err)
		}
		copyFile := func() error { _, err := io.Copy(f, tr); return err }
		if sparse(hdr) {
			copyFile = func() error { return copySparse(f, tr, hdr.Size) }
		}
		if err := copyFile(); err != nil {
			f.Close()
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("the archive ends in the middle of %q: it was cut short (truncated); upload the whole tarball", name)
			}
			return fmt.Errorf("writing %q: %w", name, err)
		}
		return f.Close()
	case tar.TypeSymlink:
		if !linkInside(hdr.Linkname) {
			return fmt.Errorf("%w: symbolic link %q -> %q may lead outside the data directory (only relative links without '..' are accepted; tablespaces are not supported)", ErrUnsafe, name, hdr.Linkname)
		}
		return root.Symlink(hdr.Linkname, name)
	case tar.TypeLink:
		target, err := safeName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("%w: hard link %q -> %q leads outside the data directory", ErrUnsafe, name, hdr.Linkname)
		}
		if err := root.Link(target, name); err != nil {
			return fmt.Errorf("%w: hard link %q -> %q: %v", ErrUnsafe, name, hdr.Linkname, err)
		}
		return nil
	default:
		return fmt.Errorf("%w: %q is a %s, not a file, directory or link", ErrUnsafe, name, typeName(hdr.Typeflag))
	}
}

// sparse tells whether an entry is a sparse file: GNU's old format or
// one of its PAX formats. Go's reader gives a sparse file's holes as
// zeros.
func sparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// sparseChunk is the unit in which a sparse file's zeros are skipped.
const sparseChunk = 64 << 10

// copySparse writes r into f, size bytes, seeking over every read that
// is all zeros instead of writing it, so that a sparse file's holes (read
// as zeros) stay holes.
func copySparse(f *os.File, r io.Reader, size int64) error {
	buf := make([]byte, sparseChunk)
	zeros := make([]byte, sparseChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if bytes.Equal(buf[:n], zeros[:n]) {
				if _, serr := f.Seek(int64(n), io.SeekCurrent); serr != nil {
					return serr
				}
			} else if _, werr := f.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return f.Truncate(size) // a hole at the end has no block to write
		}
		if err != nil {
			return err
		}
	}
}

func typeName(flag byte) string {
	switch flag {
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "FIFO"
	default:
		return fmt.Sprintf("tar entry of type %q", flag)
	}
}

// ErrNoDataDir is an archive without a PostgreSQL data directory.
var ErrNoDataDir = errors.New("the archive holds no PostgreSQL data directory (no PG_VERSION at its top or one directory down)")

// HoistDataDir makes dir itself the data directory when the archive put
// it one directory down (data/PG_VERSION): the entries of that directory
// move up. It returns ErrNoDataDir when neither level has PG_VERSION.
func HoistDataDir(dir string) error {
	if _, err := os.Lstat(path.Join(dir, "PG_VERSION")); err == nil {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) != 1 || !entries[0].IsDir() {
		return ErrNoDataDir
	}
	inner := path.Join(dir, entries[0].Name())
	if _, err := os.Lstat(path.Join(inner, "PG_VERSION")); err != nil {
		return ErrNoDataDir
	}
	// Moved aside first, so that an entry named like the directory
	// itself cannot collide.
	aside := path.Join(dir, ".sindri-hoist")
	if err := os.Rename(inner, aside); err != nil {
		return err
	}
	children, err := os.ReadDir(aside)
	if err != nil {
		return err
	}
	for _, c := range children {
		if err := os.Rename(path.Join(aside, c.Name()), path.Join(dir, c.Name())); err != nil {
			return err
		}
	}
	return os.Remove(aside)
}
