//go:build linux

package portable_test

import (
	"path/filepath"
	"testing"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/storage/dircopy"
	"github.com/sindri-db/sindri/pkg/storage/storagetest"
	"github.com/sindri-db/sindri/pkg/storage/zfs"
	"github.com/sindri-db/sindri/pkg/testfs"
)

func btrfsFactory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
	root := filepath.Join(testfs.Btrfs(t, size), "sindri")
	open := func() storage.Driver {
		d, err := btrfs.New(root)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return open(), open
}

func zfsFactory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
	parent := testfs.ZFSPool(t, size) + "/sindri"
	open := func() storage.Driver {
		d, err := zfs.New(parent)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return open(), open
}

// dircopyFactory puts dircopy on a tmpfs of its own (the tests run as
// root), where it declares immutable images.
func dircopyFactory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
	root := filepath.Join(testfs.Tmpfs(t, size), "sindri")
	open := func() storage.Driver {
		d, err := dircopy.New(root)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return open(), open
}

func TestBtrfsToZFS(t *testing.T) { storagetest.RunPortable(t, btrfsFactory, zfsFactory) }

func TestZFSToBtrfs(t *testing.T) { storagetest.RunPortable(t, zfsFactory, btrfsFactory) }

// TestBtrfsToBtrfs: the same kinds may use tar.zst too (as when one host's
// kernel cannot read the other's stream).
func TestBtrfsToBtrfs(t *testing.T) { storagetest.RunPortable(t, btrfsFactory, btrfsFactory) }

func TestBtrfsToDircopy(t *testing.T) { storagetest.RunPortable(t, btrfsFactory, dircopyFactory) }

func TestDircopyToZFS(t *testing.T) { storagetest.RunPortable(t, dircopyFactory, zfsFactory) }
