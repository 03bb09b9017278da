package keyedmutex

import (
	"runtime"
	"sync"
	"testing"
)

func TestLockExcludesAndForgets(t *testing.T) {
	var k Map[int64]
	var wg sync.WaitGroup
	inside := make([]int, 4) // per id: goroutines holding its lock
	var mu sync.Mutex
	for g := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				id := int64((g + i) % len(inside))
				var unlock func()
				if i%3 == 0 {
					var ok bool
					if unlock, ok = k.TryLock(id); !ok {
						continue
					}
				} else {
					unlock = k.Lock(id)
				}
				mu.Lock()
				inside[id]++
				if inside[id] != 1 {
					t.Errorf("id %d held by %d at once", id, inside[id])
				}
				mu.Unlock()
				mu.Lock()
				inside[id]--
				mu.Unlock()
				unlock()
			}
		}()
	}
	wg.Wait()
	if n := k.held(); n != 0 {
		t.Fatalf("%d lock entries left after every lock was released", n)
	}
	unlock := k.Lock(7)
	if _, ok := k.TryLock(7); ok {
		t.Fatal("TryLock took a held lock")
	}
	if n := k.held(); n != 1 {
		t.Fatalf("%d entries while one lock is held, want 1", n)
	}
	unlock()
	if n := k.held(); n != 0 {
		t.Fatalf("%d entries after release", n)
	}
}

func TestAcquireSharesReadsExcludesWritesAndForgets(t *testing.T) {
	var m Map[string]
	r1 := m.Acquire(nil, []string{"image-1"})
	r2 := m.Acquire([]string{"volume-2"}, []string{"image-1"}) // a second reader of image-1
	if _, ok := m.TryLock("image-1"); ok {
		t.Fatal("TryLock took a key that readers hold")
	}
	if _, ok := m.TryLock("volume-2"); ok {
		t.Fatal("TryLock took a key held for writing")
	}
	r1()
	r2()
	if n := m.held(); n != 0 {
		t.Fatalf("%d entries after every release, want 0", n)
	}
	// A key named for both reading and writing is held for writing.
	both := m.Acquire([]string{"x"}, []string{"x"})
	if _, ok := m.TryLock("x"); ok {
		t.Fatal("TryLock took a key held for writing and reading")
	}
	both()
	unlock, ok := m.TryLock("x")
	if !ok {
		t.Fatal("TryLock failed on a released key")
	}
	unlock()
}

func TestAcquireInAnyOrderNeitherDeadlocksNorOverlaps(t *testing.T) {
	var m Map[string]
	keys := []string{"a", "b", "c"}
	var mu sync.Mutex
	writers := map[string]int{}
	var wg sync.WaitGroup
	for g := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				// Each goroutine names its two keys in its own order.
				x, y := keys[(g+i)%3], keys[(g+i+1)%3]
				if g%2 == 1 {
					x, y = y, x
				}
				release := m.Acquire([]string{x, y}, nil)
				mu.Lock()
				writers[x]++
				writers[y]++
				overlap := writers[x] != 1 || writers[y] != 1
				mu.Unlock()
				if overlap {
					t.Errorf("%s or %s held for writing by two at once", x, y)
				}
				runtime.Gosched()
				mu.Lock()
				writers[x]--
				writers[y]--
				mu.Unlock()
				release()
			}
		}()
	}
	wg.Wait()
	if n := m.held(); n != 0 {
		t.Fatalf("%d entries left, want 0", n)
	}
}
