package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// replicationBenchMBEnv sets the size of the image BenchmarkImageReplication
// moves, in MB (default 512; the figure is 5120).
const replicationBenchMBEnv = "SINDRI_BENCH_REPLICATION_MB"

// BenchmarkImageReplication moves one image between two hosts of a fleet
// on this machine, each on its own loopback BTRFS: sindri's replication
// ("Fleet": host b's replicator asks host a's peer route over HTTP on
// loopback, with the peer proof, the CRC-32C of the stream on both sides
// and the checks before the copy is ready) against a bare
// `btrfs send | btrfs receive` of the same snapshot between the same
// filesystems ("BtrfsSendReceive"). Each copy is timed until it is on disk
// (syncfs of b's filesystem) and destroyed outside the timer. It reports
// the median MB/s of its iterations as MB/s-median.
func BenchmarkImageReplication(b *testing.B) {
	mb := int64(512)
	if v := os.Getenv(replicationBenchMBEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a size in MB", replicationBenchMBEnv, v)
		}
		mb = n
	}
	// Room for the image, one copy, and BTRFS's metadata.
	_, ha, hb := newFleetSized(b, false, max(2<<30, mb<<20*2+mb<<20/2))
	hb.replicate(b) // image 1, the small one every world has
	rng := rand.New(rand.NewPCG(16, 200))
	makeRecordedImage(b, ha, 2, func(dir string) {
		// 1 GB segments, as a data directory's tables are, of pages a
		// quarter random and the rest filler.
		for i, left := 0, mb<<20; left > 0; i++ {
			n := min(left, 1<<30)
			f, err := os.Create(filepath.Join(dir, "base", "1", strconv.Itoa(90000+i)))
			if err != nil {
				b.Fatal(err)
			}
			page := make([]byte, 8<<10)
			for j := range page {
				page[j] = byte(j % 251)
			}
			for written := int64(0); written < n; written += int64(len(page)) {
				for j := range page[:len(page)/4] {
					page[j] = byte(rng.Uint32())
				}
				if _, err := f.Write(page); err != nil {
					b.Fatal(err)
				}
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
			left -= n
		}
	})
	src, err := ha.storage.Get(ctx, engine.ImageVolume(2))
	if err != nil {
		b.Fatal(err)
	}
	size := duBytes(b, src.Path)
	dstRoot := filepath.Dir(filepath.Dir(hostVolume(b, hb, engine.ImageVolume(1)).Path))

	measure := func(b *testing.B, copyOne func() error, remove func() error) {
		b.SetBytes(size)
		capacity, err := hb.storage.Capacity(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var rates []float64
		for b.Loop() {
			start := time.Now()
			if err := copyOne(); err != nil {
				b.Fatal(err)
			}
			syncFS(b, dstRoot)
			rates = append(rates, float64(size)/1e6/time.Since(start).Seconds())
			b.StopTimer()
			if err := remove(); err != nil {
				b.Fatal(err)
			}
			waitFreed(b, hb.storage, dstRoot, capacity.FreeBytes)
			b.StartTimer()
		}
		slices.Sort(rates)
		b.ReportMetric(rates[len(rates)/2], "MB/s-median")
	}

	b.Run("Fleet", func(b *testing.B) {
		// Alive (making the image may take longer than the down timeout).
		ha.beat(b)
		hb.beat(b)
		measure(b, func() error {
			hb.replicate(b)
			if got := readyHosts(b, ha.store, 2); got != "a,b" {
				return fmt.Errorf("image 2 ready on %q after b's pass", got)
			}
			return nil
		}, func() error {
			if err := hb.storage.Destroy(ctx, engine.ImageVolume(2)); err != nil {
				return err
			}
			ha.beat(b)
			hb.beat(b)
			// Due again at the next pass.
			return hb.store.SetImageCopy(ctx, 2, "b", store.CopyFailed, "removed by the benchmark")
		})
	})
	b.Run("BtrfsSendReceive", func(b *testing.B) {
		bare := filepath.Join(dstRoot, "bare")
		if err := os.MkdirAll(bare, 0o700); err != nil {
			b.Fatal(err)
		}
		measure(b, func() error {
			ctx, cancel := context.WithTimeout(ctx, time.Hour)
			defer cancel()
			cmd := exec.CommandContext(ctx, "sh", "-c", `btrfs -q send "$1" | btrfs -q receive "$2"`, "sh", src.Path, bare)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("btrfs send | btrfs receive: %v: %s", err, out)
			}
			return nil
		}, func() error {
			out, err := exec.Command("btrfs", "subvolume", "delete", filepath.Join(bare, filepath.Base(src.Path))).CombinedOutput()
			if err != nil {
				return fmt.Errorf("btrfs subvolume delete: %v: %s", err, out)
			}
			return nil
		})
	})
}

func hostVolume(b testing.TB, h *fleetHost, name string) storage.Entry {
	b.Helper()
	e, err := h.storage.Get(ctx, name)
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// duBytes is the bytes of the files under dir.
func duBytes(b testing.TB, dir string) int64 {
	b.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// syncFS writes to disk what is cached of the filesystem that holds path.
func syncFS(b testing.TB, path string) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
}

// waitFreed waits until the filesystem of d has about free bytes free
// again after a destroy: BTRFS frees a deleted subvolume's blocks in the
// background, once `btrfs filesystem sync` wakes its cleaner.
func waitFreed(b testing.TB, d storage.Driver, path string, free int64) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := d.Capacity(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if c.FreeBytes >= free-(64<<20) {
			return
		}
		if out, err := exec.Command("btrfs", "filesystem", "sync", path).CombinedOutput(); err != nil {
			b.Fatalf("btrfs filesystem sync: %v: %s", err, out)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d bytes free 2 minutes after a destroy, %d before the copy", c.FreeBytes, free)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
