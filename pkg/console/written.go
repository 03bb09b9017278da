package console

import (
	"context"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
)

// WrittenFunc returns the bytes each of the actor's instances has written
// (engine.InstanceService.Written).
type WrittenFunc func(ctx context.Context, a engine.Actor) (map[int64]int64, error)

// writtenEvery is how long a measure of the disk written is shown before
// it is taken again: it costs a filesystem-wide storage call (a BTRFS
// transaction commit, a listing of every ZFS dataset), so pages never wait
// for it.
const writtenEvery = 30 * time.Second

// writtenCache keeps the latest measure per actor and takes the next in
// the background.
type writtenCache struct {
	measure WrittenFunc
	now     func() time.Time
	mu      sync.Mutex
	byActor map[engine.Actor]*writtenMeasure
}

type writtenMeasure struct {
	at      time.Time
	bytes   map[int64]int64
	running bool
}

// writtenMissing is how soon a measure is taken again when it lacks an
// instance the page shows (one made since).
const writtenMissing = 2 * time.Second

// get returns the latest measure for a (nil before the first), and starts
// a new one when it is older than writtenEvery, or than writtenMissing
// and lacks one of shown.
func (c *writtenCache) get(a engine.Actor, shown []int64) map[int64]int64 {
	if c == nil || c.measure == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.byActor[a]
	if m == nil {
		m = &writtenMeasure{}
		c.byActor[a] = m
	}
	age := c.now().Sub(m.at)
	stale := age >= writtenEvery
	for _, id := range shown {
		if _, ok := m.bytes[id]; !ok && age >= writtenMissing {
			stale = true
			break
		}
	}
	if !m.running && stale {
		m.running = true
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			bytes, err := c.measure(ctx, a)
			c.mu.Lock()
			defer c.mu.Unlock()
			m.running = false
			if err == nil {
				m.bytes, m.at = bytes, c.now()
			}
		}()
	}
	return m.bytes
}
