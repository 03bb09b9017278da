package zfs_test

import (
	"os"
	"strconv"
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

// BenchmarkGet gets one clone with 10 volumes present, then with
// SINDRI_ZFS_BENCH_VOLUMES (200 unless set): zfs-fuse takes about a fifth
// of a second to make and mount each dataset, so 1,000 is left to whoever
// sets it.
func BenchmarkGet(b *testing.B) {
	many := 200
	if v := os.Getenv("SINDRI_ZFS_BENCH_VOLUMES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 10 {
			b.Fatalf("SINDRI_ZFS_BENCH_VOLUMES=%q: want a whole number above 10", v)
		}
		many = n
	}
	storagetest.BenchGet(b, factory, 10, many)
}
