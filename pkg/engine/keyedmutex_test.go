package engine

import (
	"sync"
	"testing"
)

func TestKeyedMutexExcludesAndForgets(t *testing.T) {
	var k keyedMutex
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
