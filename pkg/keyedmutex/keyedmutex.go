// Package keyedmutex is a map of reader/writer locks, one per key, whose
// entries exist only while somebody holds or waits for them: keys (ids,
// volume names) are never reused, and a map that kept every key ever
// locked would grow for ever.
package keyedmutex

import (
	"cmp"
	"slices"
	"sync"
)

// Map holds a lock per key. The zero value is ready to use; a Map must not
// be copied after first use.
type Map[K cmp.Ordered] struct {
	mu    sync.Mutex
	locks map[K]*entry
}

// entry counts who holds or waits for its lock, so that it leaves the map
// when nobody does.
type entry struct {
	sync.RWMutex
	refs int
}

func (m *Map[K]) acquire(key K) *entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.locks == nil {
		m.locks = map[K]*entry{}
	}
	e := m.locks[key]
	if e == nil {
		e = &entry{}
		m.locks[key] = e
	}
	e.refs++
	return e
}

func (m *Map[K]) release(key K, e *entry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.refs--; e.refs == 0 {
		delete(m.locks, key)
	}
}

// Lock waits for key's lock, exclusively, and returns its release.
func (m *Map[K]) Lock(key K) (unlock func()) {
	e := m.acquire(key)
	e.Lock()
	return func() {
		e.Unlock()
		m.release(key, e)
	}
}

// TryLock takes key's lock, exclusively, if nobody holds it.
func (m *Map[K]) TryLock(key K) (unlock func(), ok bool) {
	e := m.acquire(key)
	if !e.TryLock() {
		m.release(key, e)
		return nil, false
	}
	return func() {
		e.Unlock()
		m.release(key, e)
	}, true
}

// Acquire locks the keys in write exclusively and those in read shared (a
// key in both is locked exclusively), always in key order so that two
// callers cannot deadlock, and returns the function that releases them
// all.
func (m *Map[K]) Acquire(write, read []K) (release func()) {
	exclusive := map[K]bool{}
	for _, k := range read {
		exclusive[k] = false
	}
	for _, k := range write {
		exclusive[k] = true
	}
	keys := make([]K, 0, len(exclusive))
	for k := range exclusive {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	held := make([]*entry, len(keys))
	for i, k := range keys {
		held[i] = m.acquire(k)
		if exclusive[k] {
			held[i].Lock()
		} else {
			held[i].RLock()
		}
	}
	return func() {
		for i := len(keys) - 1; i >= 0; i-- {
			if exclusive[keys[i]] {
				held[i].Unlock()
			} else {
				held[i].RUnlock()
			}
			m.release(keys[i], held[i])
		}
	}
}

// held is how many keys have an entry (tests).
func (m *Map[K]) held() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.locks)
}
