package storagetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// RunExclusiveBytesOf runs the conformance tests of ExclusiveBytesOf alone
// (Run runs them too), for a driver that reads the figures in more than
// one way to run each.
func RunExclusiveBytesOf(t *testing.T, factory Factory) {
	t.Run("ExclusiveBytesOfMatchesSingle", func(t *testing.T) { testExclusiveBytesOfMatchesSingle(t, factory) })
	t.Run("ExclusiveBytesOfDuringChurn", func(t *testing.T) { testExclusiveBytesOfDuringChurn(t, factory) })
}

// testExclusiveBytesOfMatchesSingle holds ExclusiveBytesOf to
// ExclusiveBytes: for clones into which known amounts were written, an
// untouched clone, an empty volume and the image, the batch gives each the
// figure a single call gives, grown by what was written; a name with no
// entry is left out.
func testExclusiveBytesOfMatchesSingle(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	makeImage(t, d, "image-1", fixture)
	writes := []int{1 << 20, 2 << 20, 3 << 20, 5 << 20, 0} // the last clone is untouched
	var clones []string
	for i := range writes {
		clones = append(clones, mustClone(t, d, "image-1", fmt.Sprintf("instance-%d", i)).Name)
	}
	if _, err := d.Create(ctx, "upload-1"); err != nil {
		t.Fatal(err)
	}
	existing := append([]string{"image-1", "upload-1"}, clones...)
	asked := append([]string{"no-such-entry"}, existing...)

	if got, err := d.ExclusiveBytesOf(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("ExclusiveBytesOf(no names) = %v, %v; want an empty map", got, err)
	}
	syscall.Sync()
	before, err := d.ExclusiveBytesOf(ctx, asked)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range writes {
		if n == 0 {
			continue
		}
		c, err := d.Get(ctx, clones[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.Path, "new.dat"), randomBytes(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	syscall.Sync()
	// ZFS accounts a write when its transaction group commits, seconds
	// later (about 30 on zfs-fuse): wait until every written clone shows
	// its write.
	var after map[string]int64
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if after, err = d.ExclusiveBytesOf(ctx, asked); err != nil {
			t.Fatal(err)
		}
		shown := true
		for i, n := range writes {
			shown = shown && after[clones[i]]-before[clones[i]] >= int64(n)
		}
		if shown || time.Now().After(deadline) {
			break
		}
	}

	if _, ok := after["no-such-entry"]; ok {
		t.Errorf("ExclusiveBytesOf gave a figure for a name with no entry: %v", after)
	}
	for _, name := range existing {
		if _, ok := after[name]; !ok {
			t.Errorf("ExclusiveBytesOf left out %q, which exists: %v", name, after)
		}
	}
	if len(after) != len(existing) {
		t.Errorf("ExclusiveBytesOf = %v, want figures for %v only", after, existing)
	}
	for i, n := range writes {
		grew := after[clones[i]] - before[clones[i]]
		if grew < int64(n) || grew > int64(n)+2<<20 {
			t.Errorf("%s: ExclusiveBytesOf grew by %d after %d bytes were written into it, want that plus at most 2 MiB of metadata", clones[i], grew, n)
		}
	}

	// The same figure as a single call. On ZFS a figure can still move at
	// a transaction group's commit, so a name is compared again when its
	// single figure changed around the batch.
	for _, name := range existing {
		var single, batch, again int64
		for range 5 {
			if single, err = d.ExclusiveBytes(ctx, name); err != nil {
				t.Fatal(err)
			}
			all, err := d.ExclusiveBytesOf(ctx, asked)
			if err != nil {
				t.Fatal(err)
			}
			batch = all[name]
			if again, err = d.ExclusiveBytes(ctx, name); err != nil {
				t.Fatal(err)
			}
			if single == again {
				break
			}
			time.Sleep(time.Second)
		}
		if batch != single || single != again {
			t.Errorf("%s: ExclusiveBytesOf gave %d, ExclusiveBytes %d before and %d after", name, batch, single, again)
		}
	}
	t.Logf("%s: exclusive bytes before the writes %v, after %v", d.Name(), before, after)
}

// testExclusiveBytesOfDuringChurn reads ExclusiveBytesOf of stable clones
// and of entries being created and destroyed from several goroutines, as
// /status does while instances come and go: every call succeeds, with a
// figure for every stable clone.
func testExclusiveBytesOfDuringChurn(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	makeImage(t, d, "image-1", map[string][]byte{"PG_VERSION": []byte("15\n")})
	stable := []string{"image-1"}
	for i := range 3 {
		stable = append(stable, mustClone(t, d, "image-1", fmt.Sprintf("stable-%d", i)).Name)
	}

	var (
		mu       sync.Mutex
		failures []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	const churners = 4
	churning, stop := context.WithTimeout(ctx, churnFor)
	defer stop()
	var (
		current [churners]atomic.Pointer[string]
		cycles  atomic.Int64
		reads   atomic.Int64
		churned atomic.Int64 // figures given for a churned name
		wg      sync.WaitGroup
	)
	for w := range churners {
		wg.Go(func() { churn(churning, d, w, &current[w], &cycles, fail) })
	}
	wg.Go(func() {
		for churning.Err() == nil {
			names := append([]string(nil), stable...)
			for w := range churners {
				if p := current[w].Load(); p != nil {
					names = append(names, *p)
				}
			}
			got, err := d.ExclusiveBytesOf(ctx, names)
			reads.Add(1)
			if err != nil {
				fail("ExclusiveBytesOf(%v) while entries come and go: %v", names, err)
				continue
			}
			for _, name := range stable {
				if _, ok := got[name]; !ok {
					fail("ExclusiveBytesOf left out %q, which nobody destroyed: %v", name, got)
				}
			}
			for name, n := range got {
				if n < 0 {
					fail("ExclusiveBytesOf gave %q %d bytes", name, n)
				}
			}
			churned.Add(int64(len(got) - len(stable)))
		}
	})
	wg.Wait()
	t.Logf("%s: %d create/destroy cycles, %d batch reads, %d figures of churned entries, in %s",
		d.Name(), cycles.Load(), reads.Load(), churned.Load(), churnFor)
	for _, f := range failures {
		t.Error(f)
	}
	if cycles.Load() < churners || reads.Load() < 2 {
		t.Errorf("too little happened to tell: %d cycles, %d batch reads", cycles.Load(), reads.Load())
	}
}

// BenchExclusiveBytes times, with each number of clones in sizes, one
// ExclusiveBytesOf of all of them ("batch") against an ExclusiveBytes of
// each ("single"): what /status and a /metrics scrape pay to sum the
// instances' disk use. Each clone has a little written into it, so that
// its figure is not zero. The "writing" runs have another clone written
// into all along (64 KiB every 10 ms, as running instances write), so
// that the filesystem always has something to commit: on BTRFS every
// sync, one per call, is then a transaction commit.
func BenchExclusiveBytes(b *testing.B, factory Factory, sizes ...int) {
	d, _ := factory(b, smallFS)
	makeImage(b, d, "image-1", map[string][]byte{"PG_VERSION": []byte("15\n")})
	busy := mustClone(b, d, "image-1", "busy")
	var names []string
	for _, n := range sizes {
		for len(names) < n {
			c := mustClone(b, d, "image-1", fmt.Sprintf("instance-%d", len(names)))
			if err := os.WriteFile(filepath.Join(c.Path, "written"), randomBytes(64<<10), 0o644); err != nil {
				b.Fatal(err)
			}
			names = append(names, c.Name)
		}
		clones := names[:n]
		batch := func(b *testing.B) {
			for b.Loop() {
				got, err := d.ExclusiveBytesOf(ctx, clones)
				if err != nil {
					b.Fatal(err)
				}
				if len(got) != n {
					b.Fatalf("%d figures for %d clones", len(got), n)
				}
			}
		}
		single := func(b *testing.B) {
			for b.Loop() {
				got := make(map[string]int64, n)
				for _, name := range clones {
					v, err := d.ExclusiveBytes(ctx, name)
					if err != nil {
						b.Fatal(err)
					}
					got[name] = v
				}
			}
		}
		b.Run(fmt.Sprintf("clones=%d/batch", n), batch)
		b.Run(fmt.Sprintf("clones=%d/single", n), single)
		b.Run(fmt.Sprintf("clones=%d/writing/batch", n), func(b *testing.B) {
			defer writeAlong(b, filepath.Join(busy.Path, "busy.dat"))()
			batch(b)
		})
		b.Run(fmt.Sprintf("clones=%d/writing/single", n), func(b *testing.B) {
			defer writeAlong(b, filepath.Join(busy.Path, "busy.dat"))()
			single(b)
		})
	}
}

// writeAlong overwrites 64 KiB of the file at path every 10 ms, cycling
// through its first 16 MiB, until the function it returns is called.
func writeAlong(b *testing.B, path string) (stop func()) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer f.Close()
		data := randomBytes(64 << 10)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			data[0] = byte(i)
			if _, err := f.WriteAt(data, int64(i%256)*int64(len(data))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}
