package auth

// PendingLogins is the number of logins held in memory.
func PendingLogins(a *Authenticator) int { return a.oauth.flows.len() }

// Waiting reports whether a client waits on state.
func Waiting(a *Authenticator, state string) bool {
	fs := a.oauth.flows
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.m[state]
	return f != nil && f.waiter
}
