package storage

import (
	"sort"
	"sync"
	"syscall"
)

// NameLocks are reader/writer locks keyed by entry name, for drivers that
// must keep a check and the step it guards together (no clone of an image
// that is being destroyed) without serialising unrelated names.
// The zero value is ready to use.
type NameLocks struct {
	mu    sync.Mutex
	locks map[string]*nameLock
}

type nameLock struct {
	sync.RWMutex
	users int
}

// Acquire locks the names in write for writing and those in read for
// reading, always in name order so that two callers cannot deadlock, and
// returns the function that releases them all.
func (l *NameLocks) Acquire(write, read []string) (release func()) {
	modes := map[string]bool{}
	for _, n := range read {
		modes[n] = false
	}
	for _, n := range write {
		modes[n] = true
	}
	names := make([]string, 0, len(modes))
	for n := range modes {
		names = append(names, n)
	}
	sort.Strings(names)
	held := make([]*nameLock, len(names))
	for i, n := range names {
		held[i] = l.get(n)
		if modes[n] {
			held[i].Lock()
		} else {
			held[i].RLock()
		}
	}
	return func() {
		for i := len(names) - 1; i >= 0; i-- {
			if modes[names[i]] {
				held[i].Unlock()
			} else {
				held[i].RUnlock()
			}
			l.put(names[i])
		}
	}
}

func (l *NameLocks) get(name string) *nameLock {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.locks == nil {
		l.locks = map[string]*nameLock{}
	}
	nl := l.locks[name]
	if nl == nil {
		nl = &nameLock{}
		l.locks[name] = nl
	}
	nl.users++
	return nl
}

func (l *NameLocks) put(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	nl := l.locks[name]
	nl.users--
	if nl.users == 0 {
		delete(l.locks, name)
	}
}

// StatCapacity reports the total and free bytes of the filesystem at path.
func StatCapacity(path string) (Capacity, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return Capacity{}, err
	}
	return Capacity{
		TotalBytes: int64(st.Blocks) * st.Bsize,
		FreeBytes:  int64(st.Bavail) * st.Bsize,
	}, nil
}
