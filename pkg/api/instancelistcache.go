package api

import (
	"sync"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// renderedInstances keeps each instance of the last listings rendered by
// appendInstance, with the values it was rendered from: a listing renders
// again only the instances that changed (a thousand unchanged ones cost a
// comparison each, not a URL, three times and a dozen escaped strings).
// Both wire formats share the bytes: they differ in Content-Type only.
//
// The rendered bytes hold the password, as the response does; they live
// in this process's memory only, bounded by the instances there are: a
// listing drops the entries of its scope (the actor's instances, or every
// one for the upload user) that it no longer lists, and a destroy drops
// the destroyed one's.
type renderedInstances struct {
	mu      sync.Mutex
	entries map[int64]*renderedInstance
	// listing counts the listings; an entry's listed is the last that
	// showed it.
	listing uint64
}

type renderedInstance struct {
	inst   store.Instance
	json   []byte
	listed uint64
}

// render returns the fragments of instances, rendering those whose values
// changed since they were last rendered, and forgets the instances of a's
// scope that are not among them.
func (c *renderedInstances) render(h *Handlers, a engine.Actor, instances []store.Instance) [][]byte {
	fragments := make([][]byte, len(instances))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[int64]*renderedInstance{}
	}
	c.listing++
	for i, inst := range instances {
		e := c.entries[inst.ID]
		if e == nil || !sameListing(e.inst, inst) {
			e = &renderedInstance{inst: inst, json: appendInstance(nil, h.instanceResource(inst, false))}
			if inst.ExpiresAt != nil { // the caller's pointer, not to be kept
				at := *inst.ExpiresAt
				e.inst.ExpiresAt = &at
			}
			c.entries[inst.ID] = e
		}
		e.listed = c.listing
		fragments[i] = e.json
	}
	for id, e := range c.entries {
		if e.listed != c.listing && (a.Upload || e.inst.Owner == a.Owner) {
			delete(c.entries, id)
		}
	}
	return fragments
}

// forget drops instance id's entry.
func (c *renderedInstances) forget(id int64) {
	c.mu.Lock()
	delete(c.entries, id)
	c.mu.Unlock()
}

// sameListing tells whether a and b render to the same bytes in a list
// (the owner too, by which the entries are forgotten).
func sameListing(a, b store.Instance) bool {
	return a.ID == b.ID && a.ImageID == b.ImageID && a.Owner == b.Owner && a.Status == b.Status &&
		a.Port == b.Port && a.Username == b.Username && a.Password == b.Password && a.Error == b.Error &&
		a.Protected == b.Protected && a.Host == b.Host && a.Hostname == b.Hostname && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		(a.ExpiresAt == nil) == (b.ExpiresAt == nil) && (a.ExpiresAt == nil || a.ExpiresAt.Equal(*b.ExpiresAt))
}
