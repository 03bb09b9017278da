//go:build linux

package dircopy_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/dircopy"
	"github.com/sindri-db/sindri/pkg/storage/storagetest"
	"github.com/sindri-db/sindri/pkg/testfs"
)

// factory puts the driver on a tmpfs of its own when the test runs as root,
// so that the free space it measures is the driver's alone; otherwise on
// the test's temporary directory, wherever that is, which needs no root.
func factory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		dir = testfs.Tmpfs(t, size)
	} else {
		// Images left at the end have directories without write bits,
		// which stop the temporary directory's removal by anyone but root.
		t.Cleanup(func() {
			filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
				if err == nil && de.IsDir() {
					os.Chmod(p, 0o700)
				}
				return nil
			})
		})
	}
	root := filepath.Join(dir, "sindri")
	open := func() storage.Driver {
		d, err := dircopy.New(root)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return open(), open
}

func TestConformance(t *testing.T) { storagetest.Run(t, factory) }

func BenchmarkDriver(b *testing.B) { storagetest.Bench(b, factory) }

func BenchmarkGet(b *testing.B) { storagetest.BenchGet(b, factory, 10, 1000) }

func BenchmarkExclusiveBytes(b *testing.B) { storagetest.BenchExclusiveBytes(b, factory, 10, 100) }
