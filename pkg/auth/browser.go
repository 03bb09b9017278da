package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/sindri-db/sindri/pkg/store"
)

// The browser's own login (the web console's sign-in): the browser that
// opens it is the one that receives the login, so no client waits and no
// confirmation page is needed.
//
//  1. StartBrowserLogin picks a random state (prefixed "ui_"), gives the
//     browser a cookie holding a random secret bound to that state, and
//     redirects it to the provider's consent page (with PKCE).
//  2. The provider sends the browser to GET /oauth_callback with that
//     state; HandleCallback sees the prefix, checks the cookie (a callback
//     URL opened in another browser carries none: nothing is handed out,
//     so nobody can sign a victim's browser in as themselves), exchanges
//     the code, checks the e-mail address as for every login, mints an
//     OAuth token and hands it to the BrowserLoginDone the console set.
//
// Each state is used once; pending browser logins are bounded in number,
// all together and per client address (as the client's logins are), and
// forgotten after browserLoginTTL.

const (
	browserStatePrefix = "ui_"
	browserLoginCookie = "sindri_ui_login"
	browserLoginTTL    = 10 * time.Minute
	maxBrowserLogins   = 1000
)

// BrowserLoginDone finishes a browser login: w answers the browser,
// token is the login's new token (its plaintext, given nowhere else) and
// tok its record. It is called from the callback's handler.
type BrowserLoginDone func(w http.ResponseWriter, r *http.Request, token string, tok store.Token)

type browserLogin struct {
	secretSum [sha256.Size]byte
	verifier  string
	expires   time.Time
	addr      string // addrKey of the client that began it
}

type browserLogins struct {
	mu      sync.Mutex
	pending map[string]browserLogin // by state
	done    BrowserLoginDone
}

// SetBrowserLoginDone sets what finishes the browser logins begun with
// StartBrowserLogin; without it they are refused.
func (a *Authenticator) SetBrowserLoginDone(done BrowserLoginDone) {
	a.browser.mu.Lock()
	defer a.browser.mu.Unlock()
	a.browser.done = done
}

// StartBrowserLogin begins a login of the browser that sent r and
// redirects it to the provider. A browser on another host name than the
// redirect URL's is first sent to loginPath on that host, so that the
// login's cookie reaches the callback.
func (a *Authenticator) StartBrowserLogin(w http.ResponseWriter, r *http.Request, loginPath string) {
	if a.oauth == nil {
		page(w, http.StatusNotImplemented, "OAuth login is not configured on this server: sign in with a token.")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if a.oauth.requestHost(r) != strings.ToLower(a.oauth.redirect.Hostname()) {
		u := a.oauth.redirect.ResolveReference(&url.URL{Path: loginPath})
		http.Redirect(w, r, u.String(), http.StatusFound)
		return
	}
	state, secret := browserStatePrefix+randomString(), randomString()
	verifier := oauth2.GenerateVerifier()
	now := a.now()
	client := a.oauth.clientAddr(r)
	addr := addrKey(client)
	b := &a.browser
	b.mu.Lock()
	fromAddr := 0
	for s, l := range b.pending {
		if now.After(l.expires) {
			delete(b.pending, s)
		} else if l.addr == addr {
			fromAddr++
		}
	}
	// One address may not hold every slot: the sign-ins of everybody
	// else would be refused until its own expired.
	addrFull := fromAddr >= a.oauth.flows.perAddr
	full := len(b.pending) >= maxBrowserLogins
	if !full && !addrFull {
		if b.pending == nil {
			b.pending = map[string]browserLogin{}
		}
		b.pending[state] = browserLogin{secretSum: sha256.Sum256([]byte(secret)), verifier: verifier, expires: now.Add(browserLoginTTL), addr: addr}
	}
	b.mu.Unlock()
	if addrFull {
		a.log.Warn("auth: console sign-in refused: too many from one address", "client", showAddr(client), "max", a.oauth.flows.perAddr)
		w.Header().Set("Retry-After", "60")
		page(w, http.StatusTooManyRequests, "Too many sign-ins begun from your address are in progress; finish one, or try again in a few minutes.")
		return
	}
	if full {
		w.Header().Set("Retry-After", "60")
		page(w, http.StatusTooManyRequests, "Too many sign-ins are in progress on this server; try again in a minute.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: browserLoginCookie, Value: secret, Path: "/", MaxAge: int(browserLoginTTL.Seconds()),
		HttpOnly: true, Secure: a.oauth.overHTTPS(r), SameSite: http.SameSiteLaxMode,
	})
	var opts []oauth2.AuthCodeOption
	if a.oauth.pkce {
		opts = append(opts, oauth2.S256ChallengeOption(verifier))
	}
	http.Redirect(w, r, a.oauth.cfg.AuthCodeURL(state, opts...), http.StatusFound)
}

var errNoBrowserLogin = errors.New("no such browser login")

// takeBrowserLogin removes and returns the pending browser login of state
// if r carries its cookie.
func (a *Authenticator) takeBrowserLogin(r *http.Request, state string) (browserLogin, BrowserLoginDone, error) {
	b := &a.browser
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.pending[state]
	if !ok || a.now().After(l.expires) {
		delete(b.pending, state)
		return browserLogin{}, nil, errNoBrowserLogin
	}
	sum := sha256.Sum256([]byte(cookieOf(r)(browserLoginCookie)))
	if subtle.ConstantTimeCompare(sum[:], l.secretSum[:]) != 1 {
		return browserLogin{}, nil, errOtherBrowser
	}
	delete(b.pending, state)
	return l, b.done, nil
}

// browserCallback finishes a browser login at the callback.
func (a *Authenticator) browserCallback(w http.ResponseWriter, r *http.Request, state string) {
	l, done, err := a.takeBrowserLogin(r, state)
	switch {
	case errors.Is(err, errOtherBrowser):
		a.log.Warn("auth: console sign-in callback in a browser that did not begin it", "client", showAddr(a.oauth.clientAddr(r)))
		page(w, http.StatusForbidden, "This sign-in was begun in another browser (or this browser keeps no cookies); nothing was handed out. Sign in again from the console.")
		return
	case err != nil:
		page(w, http.StatusBadRequest, "This sign-in is unknown, used or expired. Sign in again from the console.")
		return
	case done == nil:
		page(w, http.StatusNotImplemented, "This server has no console to sign in to.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: browserLoginCookie, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	o := a.browserLeg(r.Context(), r.URL.Query(), l.verifier)
	if o.fail != nil {
		a.log.Info("auth: console sign-in refused", "code", o.fail.code, "reason", o.fail.detail)
		page(w, o.fail.status, "Sign-in failed: "+o.fail.detail)
		return
	}
	secret, tok, err := a.mintOAuthToken(r.Context(), o.email)
	if err != nil {
		a.log.Error("auth: minting a console sign-in's token", "email", o.email, "err", err)
		page(w, http.StatusInternalServerError, "The sign-in could not be recorded; try again.")
		return
	}
	a.log.Info("auth: signed in to the console", "email", o.email, "token_id", tok.ID, "client", showAddr(a.oauth.clientAddr(r)))
	done(w, r, secret, tok)
}

func randomString() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}
