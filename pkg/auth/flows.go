package auth

import (
	"container/list"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"net/netip"
	"sync"
	"time"
)

// The pending logins, keyed by the client's state, live in memory: a
// login is a minute's affair and a restart merely makes users log in again.

var (
	errStateUnknown = errors.New("unknown or expired state")
	errStateInUse   = errors.New("state already waited on")
	errStateUsed    = errors.New("state already used")
	// Two clients waited on the state: the login is void, and the state
	// refused until the flow expires.
	errContested = errors.New("state waited on twice")
	// The request does not carry the cookie of the browser that opened
	// /authenticate for this login.
	errOtherBrowser = errors.New("login opened in another browser")
	// The browser leg succeeded and the login waits for the person's
	// confirmation (a reload of the confirmation page).
	errAwaitingConfirmation = errors.New("login awaits confirmation")
	// A confirmation without the form's secret: not from the page.
	errForgedConfirmation = errors.New("confirmation without the page's secret")
	// The confirmation names another waiting client than the one waiting.
	errOtherWaiter = errors.New("confirmation for another waiting client")
	// No room: too many logins from this address, or in all.
	errAddressFull = errors.New("too many logins from one address")
	errTableFull   = errors.New("too many logins in progress")
)

// outcome is how a login ended for its waiting client: an e-mail address
// that passed every check and that the person confirmed, or the error to
// answer with.
type outcome struct {
	email string
	fail  *apiError
}

// waiter is the client waiting in POST /access_tokens, as the
// confirmation page names it.
type waiter struct {
	id    uint64
	addr  netip.Addr
	since time.Time
}

// confirmation is a browser leg that succeeded: the checked e-mail address
// and the secret of the form that confirms or refuses it.
type confirmation struct {
	email string
	csrf  string
}

// flow is one login in progress.
type flow struct {
	state   string
	id      string // random; names the cookie of the flow's browser
	elem    *list.Element
	charged string    // the address key the flow counts against
	expires time.Time // when it is dropped unless a client waits on it

	browser  string // secret in the cookie of the browser that opened /authenticate; "" before
	verifier string // PKCE code verifier, made with browser
	callback bool   // the provider called back (once)
	pending  *confirmation

	waiter     *waiter       // set once: a state is waited on once
	contested  bool          // a second client waited: void, kept until it expires
	waiterCame chan struct{} // closed when waiter is set
	done       chan struct{} // closed when result is set
	result     *outcome
}

func (f *flow) cookieName() string { return loginCookiePrefix + f.id }

// flows is the bounded table of pending logins. Each flow counts against
// the address of the request that made it (a wait or an /authenticate),
// at most perAddr of them, and max in all: a full table refuses new
// logins and never drops one in progress.
type flows struct {
	mu      sync.Mutex
	m       map[string]*flow
	order   *list.List // oldest first
	charges map[string]int
	max     int
	perAddr int
	ttl     time.Duration
	now     func() time.Time
	waiters uint64
}

func newFlows(max, perAddr int, ttl time.Duration, now func() time.Time) *flows {
	return &flows{m: make(map[string]*flow), order: list.New(), charges: make(map[string]int),
		max: max, perAddr: perAddr, ttl: ttl, now: now}
}

// newSecret is 128 random bits as text, for cookies, forms and ids.
func newSecret() string { return rand.Text() }

// secretEqual compares secrets in constant time; an empty one matches
// nothing.
func secretEqual(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// contestedOutcome is what the waiting client learns when a second client
// waits on its state: neither gets the login, since the person signing
// in could not tell which is theirs.
var contestedOutcome = &outcome{fail: &apiError{
	status: 409, code: "oauth_state_contested", title: "Login contested",
	detail: "Another request waited for the login with this state too, so neither receives it; start a new login with a new state.",
}}

// refusedOutcome is what the waiting client learns when the person who
// signed in refused to hand it the login.
var refusedOutcome = &outcome{fail: &apiError{
	status: 403, code: "oauth_login_refused", title: "Login refused in the browser",
	detail: "The person who signed in refused to give this login to the command waiting for it; nobody received a token.",
}}

// sweepLocked drops the expired flows nobody waits on.
func (fs *flows) sweepLocked() {
	now := fs.now()
	for e := fs.order.Front(); e != nil; {
		next := e.Next()
		if f := e.Value.(*flow); (f.waiter == nil || f.contested) && now.After(f.expires) {
			fs.removeLocked(f)
		}
		e = next
	}
}

func (fs *flows) removeLocked(f *flow) {
	if fs.m[f.state] != f {
		return
	}
	delete(fs.m, f.state)
	fs.order.Remove(f.elem)
	if fs.charges[f.charged]--; fs.charges[f.charged] <= 0 {
		delete(fs.charges, f.charged)
	}
}

// addLocked makes a flow for state charged to the address key, or refuses
// with errAddressFull or errTableFull.
func (fs *flows) addLocked(state, key string) (*flow, error) {
	fs.sweepLocked()
	switch {
	case fs.charges[key] >= fs.perAddr:
		return nil, errAddressFull
	case len(fs.m) >= fs.max:
		return nil, errTableFull
	}
	f := &flow{state: state, id: newSecret(), charged: key, expires: fs.now().Add(fs.ttl),
		waiterCame: make(chan struct{}), done: make(chan struct{})}
	f.elem = fs.order.PushBack(f)
	fs.m[state] = f
	fs.charges[key]++
	return f, nil
}

// start records that a browser opened /authenticate for state. The first
// browser gets a secret for its cookie (cookieValue) and the flow's PKCE
// verifier (made by newVerifier); the same browser coming again (it
// sends cookie(cookieName) back) gets them again, any other browser
// errOtherBrowser. A state whose browser leg ended is errStateUsed.
func (fs *flows) start(state, key string, cookie func(name string) string, newVerifier func() string) (verifier, cookieName, cookieValue string, err error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked()
	f := fs.m[state]
	if f == nil {
		if f, err = fs.addLocked(state, key); err != nil {
			return "", "", "", err
		}
	}
	switch {
	case f.contested:
		return "", "", "", errContested
	case f.callback || f.result != nil:
		return "", "", "", errStateUsed
	case f.browser == "":
		f.browser, f.verifier = newSecret(), newVerifier()
	case !secretEqual(cookie(f.cookieName()), f.browser):
		return "", "", "", errOtherBrowser
	}
	if f.waiter == nil {
		f.expires = fs.now().Add(fs.ttl)
	}
	return f.verifier, f.cookieName(), f.browser, nil
}

// wait registers the one client waiting on state, from addr (counted as
// key when it makes the flow). A second client makes the login void
// (contested): the first is answered with contestedOutcome unless its
// login was already confirmed, the second gets errStateInUse, and the
// state stays refused until the flow expires. Otherwise somebody waiting
// first on a state a client is known to use (a Draupnir client built with
// an old Go always picks the same one) would be named on the page of the
// person whose own client was turned away.
func (fs *flows) wait(state string, addr netip.Addr, key string) (*flow, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked()
	f := fs.m[state]
	if f == nil {
		var err error
		if f, err = fs.addLocked(state, key); err != nil {
			return nil, err
		}
	} else if f.waiter != nil || f.contested {
		if !f.contested {
			f.contested = true
			fs.finishLocked(f, contestedOutcome)
		}
		f.expires = fs.now().Add(fs.ttl)
		return nil, errStateInUse
	}
	fs.waiters++
	f.waiter = &waiter{id: fs.waiters, addr: addr, since: fs.now()}
	close(f.waiterCame)
	return f, nil
}

// callback claims state for the provider's one callback, which must come
// to the browser that opened /authenticate. A reload of a callback whose
// login awaits confirmation is errAwaitingConfirmation, with the flow.
func (fs *flows) callback(state string, cookie func(name string) string) (f *flow, verifier string, err error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked()
	f = fs.m[state]
	switch {
	case f == nil || f.browser == "":
		return nil, "", errStateUnknown
	case f.contested:
		return nil, "", errContested
	case !secretEqual(cookie(f.cookieName()), f.browser):
		return nil, "", errOtherBrowser
	case f.pending != nil && f.result == nil:
		return f, "", errAwaitingConfirmation
	case f.callback || f.result != nil:
		return nil, "", errStateUsed
	}
	f.callback = true
	return f, f.verifier, nil
}

// finish records the outcome of f for its client, who may already wait
// or come within the TTL. False: the flow is gone (its client gave up or
// it expired), so nobody will learn the outcome.
func (fs *flows) finish(f *flow, o *outcome) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.finishLocked(f, o)
}

func (fs *flows) finishLocked(f *flow, o *outcome) bool {
	if fs.m[f.state] != f || f.result != nil {
		return false
	}
	f.result = o
	if f.waiter == nil {
		f.expires = fs.now().Add(fs.ttl)
	}
	close(f.done)
	return true
}

// awaitConfirmation records that f's browser leg succeeded for email and
// that the person has yet to confirm it; it returns the confirmation. Nil:
// the flow is gone.
func (fs *flows) awaitConfirmation(f *flow, email string) *confirmation {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[f.state] != f || f.result != nil {
		return nil
	}
	if f.pending == nil {
		f.pending = &confirmation{email: email, csrf: newSecret()}
	}
	if f.waiter == nil {
		f.expires = fs.now().Add(fs.ttl)
	}
	return f.pending
}

// waiterOf returns a copy of f's waiting client once it is there, waiting
// up to grace for it; nil if none came (or the flow is gone).
func (fs *flows) waiterOf(ctx context.Context, f *flow, grace time.Duration) *waiter {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-f.waiterCame:
	case <-t.C:
	case <-ctx.Done():
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[f.state] != f || f.waiter == nil || f.result != nil {
		return nil
	}
	w := *f.waiter
	return &w
}

// pendingOf returns f's confirmation, nil when there is none (any more).
func (fs *flows) pendingOf(f *flow) *confirmation {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[f.state] != f || f.result != nil {
		return nil
	}
	return f.pending
}

// confirm ends the login with state as the person decided in the
// browser: accept hands the checked e-mail address to the waiting client,
// refusal gives it refusedOutcome. The request must come from the
// browser that opened /authenticate (cookie), from the confirmation page
// (csrf) and name the client waiting now (waiterID). It returns the
// e-mail address the login was for.
func (fs *flows) confirm(state string, cookie func(name string) string, csrf string, waiterID uint64, accept bool) (string, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked()
	f := fs.m[state]
	switch {
	case f == nil || f.browser == "":
		return "", errStateUnknown
	case f.contested:
		return "", errContested
	case !secretEqual(cookie(f.cookieName()), f.browser):
		return "", errOtherBrowser
	case f.result != nil:
		return "", errStateUsed
	case f.pending == nil:
		return "", errStateUnknown
	case !secretEqual(csrf, f.pending.csrf):
		return "", errForgedConfirmation
	case f.waiter == nil || f.waiter.id != waiterID:
		return "", errOtherWaiter
	}
	o := refusedOutcome
	if accept {
		o = &outcome{email: f.pending.email}
	}
	fs.finishLocked(f, o)
	return f.pending.email, nil
}

// release ends the wait on f, successful or not: a state is waited on
// once. A contested flow stays (refusing its state) until it expires.
func (fs *flows) release(f *flow) *outcome {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if !f.contested {
		fs.removeLocked(f)
	}
	return f.result
}

// len is the number of flows held.
func (fs *flows) len() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.m)
}
