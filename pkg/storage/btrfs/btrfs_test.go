//go:build linux

package btrfs_test

import (
	"path/filepath"
	"testing"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/storage/storagetest"
	"github.com/sindri-db/sindri/pkg/testfs"
)

func factory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
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

func TestConformance(t *testing.T) { storagetest.Run(t, factory) }

func BenchmarkDriver(b *testing.B) { storagetest.Bench(b, factory) }

func BenchmarkGet(b *testing.B) { storagetest.BenchGet(b, factory, 10, 1000) }

func TestNewRefusesOtherFilesystems(t *testing.T) {
	if _, err := btrfs.New(t.TempDir()); err == nil {
		t.Fatal("btrfs.New accepted a directory that is not on BTRFS")
	}
}
