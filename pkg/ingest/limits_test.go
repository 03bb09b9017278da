package ingest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// gnuTar runs GNU tar with args in dir and returns its output.
func gnuTar(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("tar", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tar %v: %v %s", args, err, stderr.String())
	}
	return out
}

// sparseFile makes a file of size bytes holding only the given pieces of
// data at their offsets: holes elsewhere.
func sparseFile(t *testing.T, path string, size int64, pieces map[int64]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, data := range pieces {
		if _, err := f.WriteAt([]byte(data), off); err != nil {
			t.Fatal(err)
		}
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestSparseEntriesAreWrittenSparse extracts a file of 200 MiB that holds
// 3 pieces of data, archived by GNU tar --sparse in its own format and in
// PAX's: the file comes out whole, with its holes as holes.
func TestSparseEntriesAreWrittenSparse(t *testing.T) {
	src := t.TempDir()
	pieces := map[int64]string{0: "head", 100 << 20: "middle", 200<<20 - 3: "end"}
	sparseFile(t, filepath.Join(src, "rel"), 200<<20, pieces)
	for _, format := range []string{"gnu", "posix"} {
		t.Run(format, func(t *testing.T) {
			archive := gnuTar(t, src, "--sparse", "--format="+format, "-cf", "-", "rel")
			if len(archive) > 64<<10 {
				t.Fatalf("GNU tar made a %d-byte archive: not sparse", len(archive))
			}
			dir, _ := sandbox(t)
			if _, err := Extract(context.Background(), bytes.NewReader(archive), dir, Limits{MaxBytes: 1 << 30}); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "rel")
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if fi, _ := f.Stat(); fi.Size() != 200<<20 {
				t.Fatalf("size %d, want %d", fi.Size(), 200<<20)
			}
			for off, want := range pieces {
				got := make([]byte, len(want))
				if _, err := f.ReadAt(got, off); err != nil || string(got) != want {
					t.Errorf("at %d: %q, %v; want %q", off, got, err, want)
				}
			}
			if n := allocated(t, path); n > 1<<20 {
				t.Errorf("the file takes %d bytes of disk: its holes were written", n)
			}
		})
	}
}

// TestSparseTerabyteIsRefused: a sparse file of 1 TiB archives to about
// 10 kB; it counts for its whole size, and is refused before anything of
// it is written, naming it and the sizes.
func TestSparseTerabyteIsRefused(t *testing.T) {
	src := t.TempDir()
	sparseFile(t, filepath.Join(src, "huge"), 1<<40, map[int64]string{1 << 39: "x"})
	for _, format := range []string{"gnu", "posix"} {
		t.Run(format, func(t *testing.T) {
			archive := gnuTar(t, src, "--sparse", "--format="+format, "-cf", "-", "huge")
			if len(archive) > 64<<10 {
				t.Fatalf("GNU tar made a %d-byte archive: not sparse", len(archive))
			}
			dir, _ := sandbox(t)
			_, err := Extract(context.Background(), bytes.NewReader(archive), dir, Limits{MaxBytes: 1 << 30, MaxEntries: 100})
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `"huge" would need 1.0 TiB`) || !strings.Contains(err.Error(), "1.0 GiB allowed") {
				t.Fatalf("got %v; want ErrTooLarge naming huge, 1.0 TiB and the 1.0 GiB allowed", err)
			}
			if _, err := os.Lstat(filepath.Join(dir, "huge")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused entry was made: %v", err)
			}
		})
	}
}

// zeroBomb is a tar.zst of entries files of size bytes of zeros each
// (size a multiple of 512): zstd frames, one per tar header and one of
// the zeros, made once and repeated (a zstd stream is its frames'
// contents one after another).
func zeroBomb(t *testing.T, entries int, size int64) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	zeros := enc.EncodeAll(make([]byte, size), nil)
	var out []byte
	for i := range entries {
		var hdr bytes.Buffer
		tw := tar.NewWriter(&hdr)
		name := fmt.Sprintf("data/base/5/%d", 16384+i)
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: size}); err != nil {
			t.Fatal(err)
		}
		out = append(enc.EncodeAll(hdr.Bytes(), out), zeros...)
	}
	return enc.EncodeAll(make([]byte, 1024), out) // tar's end-of-archive marker
}

// TestDecompressionBombIsRefusedAsItGrows: 16 GiB of zeros in files of
// 256 MiB, a few hundred kB as tar.zst, against a limit of 600 MiB: the
// third file is refused before it is written, and no more than the limit
// reaches the disk.
func TestDecompressionBombIsRefusedAsItGrows(t *testing.T) {
	bomb := zeroBomb(t, 64, 256<<20)
	t.Logf("16 GiB of zeros as tar.zst: %d bytes", len(bomb))
	if len(bomb) > 4<<20 {
		t.Fatalf("the bomb is %d bytes compressed", len(bomb))
	}
	dir, _ := sandbox(t)
	n, err := Extract(context.Background(), bytes.NewReader(bomb), dir, Limits{MaxBytes: 600 << 20, MaxEntries: 1000})
	if !errors.Is(err, ErrTooLarge) || n != 2 || !strings.Contains(err.Error(), "would need 256 MiB") || !strings.Contains(err.Error(), "after 2 entries") {
		t.Fatalf("Extract = %d, %v; want ErrTooLarge at the third entry", n, err)
	}
	var written int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			written += allocated(t, p)
		}
		return nil
	})
	if written > 600<<20 {
		t.Errorf("%d bytes reached the disk, past the limit", written)
	}
}

// TestEntryCountIsBounded: an archive of many empty files is refused at
// the first entry past the limit.
func TestEntryCountIsBounded(t *testing.T) {
	var entries []entry
	for i := range 50 {
		entries = append(entries, entry{name: "f" + strings.Repeat("x", i)})
	}
	dir, _ := sandbox(t)
	n, err := Extract(context.Background(), bytes.NewReader(tarball(t, entries...)), dir, Limits{MaxEntries: 20})
	if !errors.Is(err, ErrTooLarge) || n != 20 || !strings.Contains(err.Error(), "more than 20 entries") {
		t.Fatalf("Extract = %d, %v; want ErrTooLarge after 20 entries", n, err)
	}
}

// TestZstdWindowIsBounded: a tar.zst whose frames need a window of
// 512 MiB is refused with a hint, before the decoder takes that memory.
func TestZstdWindowIsBounded(t *testing.T) {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithWindowSize(512<<20), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	// More than a block, or the encoder sizes the window to the data.
	zw.Write(tarball(t, append([]entry{{name: "big", body: strings.Repeat("x", 3<<20)}}, dataDir...)...))
	zw.Close()
	dir, _ := sandbox(t)
	_, err = Extract(context.Background(), &buf, dir, Limits{})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "window") {
		t.Fatalf("got %v; want ErrTooLarge saying window", err)
	}
}
