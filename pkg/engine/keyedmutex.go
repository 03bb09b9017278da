package engine

import (
	"sync"
)

// keyedMutex is a mutex per id.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[int64]*refMutex
}

// refMutex counts who holds or waits for it, so that the map entry goes
// when nobody does: ids are never reused, and the map would otherwise grow
// with every instance ever made.
type refMutex struct {
	sync.Mutex
	refs int
}

func (k *keyedMutex) acquire(id int64) *refMutex {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.locks == nil {
		k.locks = map[int64]*refMutex{}
	}
	m := k.locks[id]
	if m == nil {
		m = &refMutex{}
		k.locks[id] = m
	}
	m.refs++
	return m
}

func (k *keyedMutex) release(id int64, m *refMutex) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if m.refs--; m.refs == 0 {
		delete(k.locks, id)
	}
}

// Lock waits for id's lock and returns its release.
func (k *keyedMutex) Lock(id int64) func() {
	m := k.acquire(id)
	m.Lock()
	return func() {
		m.Unlock()
		k.release(id, m)
	}
}

// TryLock takes id's lock if it is free.
func (k *keyedMutex) TryLock(id int64) (func(), bool) {
	m := k.acquire(id)
	if !m.TryLock() {
		k.release(id, m)
		return nil, false
	}
	return func() {
		m.Unlock()
		k.release(id, m)
	}, true
}

// held is how many ids have a lock entry (tests).
func (k *keyedMutex) held() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.locks)
}
