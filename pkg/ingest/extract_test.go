package ingest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

type entry struct {
	name, link string
	typ        byte
	body       string
}

func tarball(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if h.Typeflag == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var dataDir = []entry{
	{name: "data/", typ: tar.TypeDir},
	{name: "data/PG_VERSION", body: "15\n"},
	{name: "data/base/1/1259", body: "page"},
	{name: "data/global/pg_control", body: "control"},
	{name: "data/link", typ: tar.TypeSymlink, link: "base/1"},
	{name: "data/hard", typ: tar.TypeLink, link: "data/PG_VERSION"},
}

// sandbox is an extraction directory with a sibling that must stay empty.
func sandbox(t *testing.T) (dir, outside string) {
	base := t.TempDir()
	dir, outside = filepath.Join(base, "x", "upload"), filepath.Join(base, "x", "outside")
	os.MkdirAll(dir, 0o755)
	os.MkdirAll(outside, 0o755)
	return dir, outside
}

func TestExtractPlainGzipZstd(t *testing.T) {
	raw := tarball(t, dataDir...)
	var gz, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(raw)
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(raw)
	zw.Close()
	for name, data := range map[string][]byte{"tar": raw, "tar.gz": gz.Bytes(), "tar.zst": zs.Bytes()} {
		t.Run(name, func(t *testing.T) {
			dir, _ := sandbox(t)
			n, err := Extract(context.Background(), bytes.NewReader(data), dir, Limits{})
			if err != nil || n != len(dataDir) {
				t.Fatalf("Extract = %d, %v", n, err)
			}
			if err := HoistDataDir(dir); err != nil {
				t.Fatal(err)
			}
			for file, want := range map[string]string{"PG_VERSION": "15\n", "link/1259": "page", "hard": "15\n"} {
				got, err := os.ReadFile(filepath.Join(dir, file))
				if err != nil || string(got) != want {
					t.Errorf("%s = %q, %v; want %q", file, got, err, want)
				}
			}
		})
	}
}

func TestHostileArchives(t *testing.T) {
	valid := tarball(t, dataDir...)
	cases := []struct {
		name string
		data []byte
		want error
		says string
	}{
		{"traversal", tarball(t, entry{name: "../evil", body: "x"}), ErrUnsafe, "'..'"},
		{"nested traversal", tarball(t, entry{name: "a/../../evil", body: "x"}), ErrUnsafe, "'..'"},
		{"absolute path", tarball(t, entry{name: "/tmp/evil", body: "x"}), ErrUnsafe, "absolute"},
		{"symlink to absolute", tarball(t, entry{name: "l", typ: tar.TypeSymlink, link: "/etc"}), ErrUnsafe, "outside"},
		{"symlink upwards", tarball(t, entry{name: "l", typ: tar.TypeSymlink, link: "../outside"}), ErrUnsafe, "outside"},
		{"symlink chain", tarball(t,
			entry{name: "sub/", typ: tar.TypeDir},
			entry{name: "sub/b", typ: tar.TypeSymlink, link: ".."},
			entry{name: "sub/a", typ: tar.TypeSymlink, link: "b/../.."}), ErrUnsafe, "outside"},
		{"write through an inner link", tarball(t,
			entry{name: "l", typ: tar.TypeSymlink, link: "sub"},
			entry{name: "l/../../outside/evil", body: "x"}), ErrUnsafe, "'..'"},
		{"hard link escape", tarball(t, entry{name: "h", typ: tar.TypeLink, link: "../outside/x"}), ErrUnsafe, "hard link"},
		{"hard link to absolute", tarball(t, entry{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}), ErrUnsafe, "hard link"},
		{"device node", tarball(t, entry{name: "dev", typ: tar.TypeChar}), ErrUnsafe, "character device"},
		{"fifo", tarball(t, entry{name: "fifo", typ: tar.TypeFifo}), ErrUnsafe, "FIFO"},
		{"truncated", valid[:len(valid)/2], nil, "truncated"},
		{"not a tar", []byte(strings.Repeat("hello, this is not an archive\n", 40)), ErrNotArchive, "not a tar"},
		{"empty", nil, ErrNotArchive, "empty"},
		{"bad gzip", []byte{0x1f, 0x8b, 0, 0}, ErrNotArchive, "gzip"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, outside := sandbox(t)
			_, err := Extract(context.Background(), bytes.NewReader(c.data), dir, Limits{})
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("got %v, want %v saying %q", err, c.want, c.says)
			}
			if leaked, _ := os.ReadDir(outside); len(leaked) != 0 {
				t.Fatalf("files appeared outside the upload directory: %v", leaked)
			}
			if _, err := os.Lstat("/tmp/evil"); err == nil {
				t.Fatal("/tmp/evil was written")
			}
		})
	}
}

func TestHoistDataDir(t *testing.T) {
	dir, _ := sandbox(t)
	os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o644)
	if err := HoistDataDir(dir); !errors.Is(err, ErrNoDataDir) {
		t.Fatalf("no PG_VERSION: %v, want ErrNoDataDir", err)
	}
	dir, _ = sandbox(t)
	os.MkdirAll(filepath.Join(dir, "pgdata", "pgdata"), 0o755)
	os.WriteFile(filepath.Join(dir, "pgdata", "PG_VERSION"), []byte("15\n"), 0o644)
	if err := HoistDataDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		t.Fatal("PG_VERSION not moved up")
	}
	if fi, err := os.Stat(filepath.Join(dir, "pgdata")); err != nil || !fi.IsDir() {
		t.Fatal("an inner entry named like its directory was lost")
	}
}
