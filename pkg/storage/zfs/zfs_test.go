package zfs_test

import (
	"testing"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/storagetest"
	"github.com/sindri-db/sindri/pkg/storage/zfs"
	"github.com/sindri-db/sindri/pkg/testfs"
)

func factory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
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

func TestConformance(t *testing.T) { storagetest.Run(t, factory) }

func BenchmarkDriver(b *testing.B) { storagetest.Bench(b, factory) }
