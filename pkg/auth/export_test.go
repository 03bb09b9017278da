package auth

import "time"

// PendingLogins is the number of logins held in memory.
func PendingLogins(a *Authenticator) int { return a.oauth.flows.len() }

// Waiting reports whether a client waits on state.
func Waiting(a *Authenticator, state string) bool {
	fs := a.oauth.flows
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.m[state]
	return f != nil && f.waiter != nil
}

// SetWaiterGrace sets how long a callback waits for the client to come.
func SetWaiterGrace(a *Authenticator, d time.Duration) { a.oauth.grace = d }
