package storagetest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/portable"
)

// replicationBenchMB is the size of the image BenchReplication sends.
const replicationBenchMB = 200

// pageLikeData returns n bytes that compress about as a Postgres heap
// does: 8 KB pages, each a quarter random bytes (tuple data that does not
// repeat) and the rest the same filler (headers, padding, free space).
func pageLikeData(rng *rand.Rand, n int) []byte {
	const page = 8 << 10
	filler := []byte("pgbench_accounts aid bid abalance filler                                   ")
	out := make([]byte, 0, n)
	for len(out) < n {
		p := make([]byte, page)
		for i := range p[:page/4] {
			p[i] = byte(rng.Uint32())
		}
		for i := page / 4; i < page; i++ {
			p[i] = filler[i%len(filler)]
		}
		out = append(out, p...)
	}
	return out[:n]
}

// BenchReplication measures moving a 200 MB image from one filesystem to
// another of the same kind, on this machine (no network): the driver's own
// Send piped into Receive ("Native"), the tar.zst stream of package
// storage/portable ("TarZstd"), and what a person would do without
// either, `cp -a` of the image's tree onto the other filesystem ("CpA").
// Each copy is timed until the filesystem has it on disk (syncfs), and
// destroyed outside the timer. The source is
// read from the page cache after the first iteration, alike for the three.
func BenchReplication(b *testing.B, factory Factory) {
	src, _ := factory(b, largeFS)
	dst, _ := factory(b, largeFS)
	rng := rand.New(rand.NewPCG(16, 200))
	files := map[string][]byte{}
	// 1 GB segments in a real data directory; 25 files of 8 MB here.
	for i := range replicationBenchMB / 8 {
		files[fmt.Sprintf("base/16384/%d", 16400+i)] = pageLikeData(rng, 8<<20)
	}
	img := makeImage(b, src, "image-1", files)
	// cp -a copies into this volume, so that its copy lands on the other
	// filesystem too.
	v, err := dst.Create(ctx, "copies")
	if err != nil {
		b.Fatal(err)
	}

	measure := func(b *testing.B, copyOne func(name string) (string, error), remove func(name string) error) {
		b.SetBytes(replicationBenchMB << 20)
		capacity, err := dst.Capacity(ctx)
		if err != nil {
			b.Fatal(err)
		}
		free := capacity.FreeBytes
		for i := 0; i < b.N; i++ {
			name := fmt.Sprintf("image-%d", i+2)
			path, err := copyOne(name)
			if err != nil {
				b.Fatal(err)
			}
			// On disk, as a replica must be before it is used.
			if err := syncFS(path); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := remove(name); err != nil {
				b.Fatal(err)
			}
			waitFreed(b, dst, v.Path, free)
			b.StartTimer()
		}
	}
	destroy := func(name string) error { return dst.Destroy(ctx, name) }
	b.Run("Native", func(b *testing.B) {
		measure(b, func(name string) (string, error) {
			e, err := pipe(
				func(w io.Writer) error { return src.Send(ctx, "image-1", w) },
				func(r io.Reader) (storage.Entry, error) { return dst.Receive(ctx, name, r) })
			return e.Path, err
		}, destroy)
	})
	b.Run("TarZstd", func(b *testing.B) {
		measure(b, func(name string) (string, error) {
			e, err := pipe(
				func(w io.Writer) error { return portable.Send(ctx, src, "image-1", w) },
				func(r io.Reader) (storage.Entry, error) { return portable.Receive(ctx, dst, name, r, noLimits) })
			return e.Path, err
		}, destroy)
	})
	b.Run("CpA", func(b *testing.B) {
		measure(b, func(name string) (string, error) {
			out, err := exec.Command("cp", "-a", "--reflink=never", img.Path, filepath.Join(v.Path, name)).CombinedOutput()
			if err != nil {
				return "", fmt.Errorf("cp -a: %v: %s", err, out)
			}
			return v.Path, nil
		}, func(name string) error { return os.RemoveAll(filepath.Join(v.Path, name)) })
	})
}

// waitFreed waits until d's filesystem, which holds path, has about free
// bytes free again:
// both filesystems free a destroyed subvolume or dataset in the
// background, and the next iteration must not run out of space, nor pay
// for the last one's cleaning.
func waitFreed(b testing.TB, d storage.Driver, path string, free int64) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := d.Capacity(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if c.FreeBytes >= free-(32<<20) {
			return
		}
		if err := settle(path); err != nil {
			b.Fatal(err)
		}
		if time.Now().After(deadline) {
			b.Fatalf("the filesystem has %d bytes free 2 minutes after a destroy, %d before the copy", c.FreeBytes, free)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncFS writes to disk what is cached of the filesystem that holds path.
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// settle commits the transaction of the filesystem that holds path, which
// is what makes freed space count. On BTRFS, whose commits come every 30
// s otherwise, `btrfs filesystem sync` also wakes the thread that cleans
// up deleted subvolumes, which a plain syncfs leaves asleep.
func settle(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	if st.Type != unix.BTRFS_SUPER_MAGIC {
		return syncFS(path)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "btrfs", "filesystem", "sync", path).CombinedOutput(); err != nil {
		return fmt.Errorf("btrfs filesystem sync %s: %v: %s", path, err, out)
	}
	return nil
}
