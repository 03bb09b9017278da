package auth

import (
	"container/list"
	"errors"
	"sync"
	"time"
)

// The pending logins, keyed by the client's state, live in memory: a
// login is a minute's affair and a restart merely makes users log in again.

var (
	errStateUnknown = errors.New("unknown or expired state")
	errStateInUse   = errors.New("state already waited on")
	errStateUsed    = errors.New("state already used")
)

// outcome is how a browser leg ended: an e-mail address that passed every
// check, or the error to answer the waiting client with.
type outcome struct {
	email string
	fail  *apiError
}

// flow is one login in progress.
type flow struct {
	state    string
	elem     *list.Element
	verifier string    // PKCE code verifier
	expires  time.Time // when it is dropped unless a client waits on it
	started  bool      // the browser went through /authenticate
	callback bool      // the provider called back (once)
	waiter   bool      // a client waits in /access_tokens (once)
	done     chan struct{}
	result   *outcome // set, under the lock, before done is closed
}

// flows is the bounded table of pending logins.
type flows struct {
	mu    sync.Mutex
	m     map[string]*flow
	order *list.List // oldest first
	max   int
	ttl   time.Duration
	now   func() time.Time
}

func newFlows(max int, ttl time.Duration, now func() time.Time) *flows {
	return &flows{m: make(map[string]*flow), order: list.New(), max: max, ttl: ttl, now: now}
}

// evictedOutcome is what a client waiting on a login dropped to make room
// learns.
var evictedOutcome = &outcome{fail: &apiError{
	status: 503, code: "oauth_too_many_logins",
	title:  "Too many logins in progress",
	detail: "Too many logins were started at once and this one was dropped; try again.",
}}

// sweepLocked drops the expired flows nobody waits on.
func (fs *flows) sweepLocked() {
	now := fs.now()
	for e := fs.order.Front(); e != nil; {
		next := e.Next()
		if f := e.Value.(*flow); !f.waiter && now.After(f.expires) {
			fs.removeLocked(f)
		}
		e = next
	}
}

func (fs *flows) removeLocked(f *flow) {
	if fs.m[f.state] == f {
		delete(fs.m, f.state)
		fs.order.Remove(f.elem)
	}
}

// addLocked makes a flow for state, dropping the oldest when the table is
// full; a client waiting on a dropped flow is told so at once.
func (fs *flows) addLocked(state string) *flow {
	fs.sweepLocked()
	for len(fs.m) >= fs.max {
		old := fs.order.Front().Value.(*flow)
		fs.removeLocked(old)
		if old.result == nil {
			old.result = evictedOutcome
			close(old.done)
		}
	}
	f := &flow{state: state, expires: fs.now().Add(fs.ttl), done: make(chan struct{})}
	f.elem = fs.order.PushBack(f)
	fs.m[state] = f
	return f
}

// start records that the browser went through /authenticate and returns
// the flow's PKCE verifier (made by newVerifier on first use). A state
// whose browser leg already ended is errStateUsed.
func (fs *flows) start(state string, newVerifier func() string) (string, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked()
	f := fs.m[state]
	if f == nil {
		f = fs.addLocked(state)
	} else if f.callback || f.result != nil {
		return "", errStateUsed
	}
	if !f.started {
		f.started, f.verifier = true, newVerifier()
	}
	if !f.waiter {
		f.expires = fs.now().Add(fs.ttl)
	}
	return f.verifier, nil
}

// wait registers the one client waiting on state.
func (fs *flows) wait(state string) (*flow, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked()
	f := fs.m[state]
	if f == nil {
		f = fs.addLocked(state)
	} else if f.waiter {
		return nil, errStateInUse
	}
	f.waiter = true
	return f, nil
}

// callback claims state for the provider's one callback; the state must
// have gone through /authenticate and not have been called back yet.
func (fs *flows) callback(state string) (f *flow, verifier string, err error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked()
	f = fs.m[state]
	switch {
	case f == nil || !f.started:
		return nil, "", errStateUnknown
	case f.callback || f.result != nil:
		return nil, "", errStateUsed
	}
	f.callback = true
	return f, f.verifier, nil
}

// finish records the outcome of f's browser leg for its client, who may
// already wait or come within the TTL. False: the flow is gone (its client
// gave up, it expired or was dropped), so nobody will learn the outcome.
func (fs *flows) finish(f *flow, o *outcome) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[f.state] != f || f.result != nil {
		return false
	}
	f.result = o
	if !f.waiter {
		f.expires = fs.now().Add(fs.ttl)
	}
	close(f.done)
	return true
}

// release ends the wait on f, successful or not: a state is waited on once.
func (fs *flows) release(f *flow) *outcome {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.removeLocked(f)
	return f.result
}

// len is the number of flows held.
func (fs *flows) len() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.m)
}
