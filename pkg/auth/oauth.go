package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/oauth2"

	"github.com/sindri-db/sindri/pkg/auth/logincode"
	"github.com/sindri-db/sindri/pkg/store"
)

// The Draupnir-compatible login, bound to the person who signs in:
//
//  1. The client picks a random state S, prints the login code of S
//     (package logincode) and opens GET /authenticate?state=S in the
//     browser (HandleAuthenticate). The server gives that browser a cookie
//     for the login and redirects it to the provider's consent page.
//  2. Meanwhile the client calls POST /access_tokens with S
//     (HandleAccessTokens), which waits up to WaitTimeout. The server
//     notes the client's address and when it began to wait.
//  3. The provider sends the browser to GET /oauth_callback?code=C&state=S
//     (HandleCallback): the server checks the browser's cookie, exchanges
//     C, reads the verified e-mail address from the userinfo endpoint and
//     checks its domain. A failure goes to the waiting client at once. A
//     success is not handed out yet: the browser gets a confirmation page
//     naming the waiting client (its address, when it began, the login
//     code), and the person confirms or refuses with a POST to
//     /oauth_callback carrying the page's secret and the cookie.
//  4. A confirmation hands the e-mail address to the waiting call, which
//     mints a token and answers 201; a refusal answers it 403.
//
// Why the confirmation: the state is the only link between the two legs
// and the client picks it, so whoever waits on a state receives the login
// of whoever opens its link. Without step 3's page, an attacker waiting on
// S who sends a colleague the link /authenticate?state=S would receive the
// colleague's token. The page shows the colleague that the login is not
// theirs (no such command, another address, a code their terminal does not
// show) and nothing is handed out unless they confirm anyway.
//
// The token is minted when the waiting client collects it, not in the
// callback, so that no token exists that nobody holds. With PKCE (on
// unless DisablePKCE) a code stolen from the redirect is useless on its
// own, and the cookie keeps a stolen callback URL from being completed in
// another browser.
//
// Each state has one browser, one callback and one waiting client: a
// second wait gets 409, a second browser or callback is refused. Pending
// logins live in memory; each counts against the address that began it
// (MaxPendingPerAddress) and all together against MaxPending. A full table
// refuses new logins with 429 and never drops one in progress. One nobody
// waits on is forgotten WaitTimeout after its last event.

// Defaults of OAuthOptions.
const (
	DefaultWaitTimeout     = 60 * time.Second
	DefaultExchangeTimeout = 30 * time.Second
	DefaultMaxPending      = 1000
	// DefaultMaxPendingPerAddress bounds the logins one client address
	// (an IPv4 address, an IPv6 /64) may have in progress.
	DefaultMaxPendingPerAddress = 10
	// MaxStateLength is the longest state accepted.
	MaxStateLength = 256
)

// maxBodyBytes bounds the bodies of POST /access_tokens and of the
// provider's userinfo answer.
const maxBodyBytes = 64 << 10

// waiterGrace is how long the callback waits for the client to begin
// waiting before it tells the person that no command waits yet.
const waiterGrace = 5 * time.Second

// loginCookiePrefix starts the name of the cookie that binds a login to
// the browser that opened its link; the flow's random id ends it.
const loginCookiePrefix = "sindri_login_"

// OAuthOptions configure the OAuth login.
type OAuthOptions struct {
	ClientID     string
	ClientSecret string
	// RedirectURL is this server's /oauth_callback as the provider knows it.
	RedirectURL string
	// AuthURL and TokenURL are the provider's endpoints; UserinfoURL its
	// OpenID Connect userinfo endpoint, which must answer with "email"
	// and "email_verified".
	AuthURL, TokenURL, UserinfoURL string
	Scopes                         []string
	// WaitTimeout is how long POST /access_tokens waits for the browser
	// leg and its confirmation, and how long a finished or started login
	// waits for the other leg (default 60 s).
	WaitTimeout time.Duration
	// ExchangeTimeout bounds the code exchange plus the userinfo request
	// (default 30 s).
	ExchangeTimeout time.Duration
	// MaxPending bounds the logins in progress (default 1000), and
	// MaxPendingPerAddress those begun from one client address (default
	// 10, or MaxPending/2 when that is smaller); it must be below
	// MaxPending so that one address never takes every slot.
	MaxPending           int
	MaxPendingPerAddress int
	// TrustedProxies are the reverse proxies whose X-Forwarded-For (and
	// X-Forwarded-Host, X-Forwarded-Proto) say who the client is; from
	// anywhere else the headers are ignored and the client is RemoteAddr.
	TrustedProxies []netip.Prefix
	// HTTPClient talks to the provider (default: one with ExchangeTimeout).
	HTTPClient *http.Client
	// DisablePKCE leaves out the PKCE challenge, for providers that
	// refuse it.
	DisablePKCE bool
}

type oauthFlow struct {
	cfg            oauth2.Config
	redirect       *url.URL
	userinfoURL    string
	wait           time.Duration
	exchange       time.Duration
	client         *http.Client
	pkce           bool
	trustedProxies []netip.Prefix
	grace          time.Duration // waiterGrace; tests shorten it
	flows          *flows
}

func newOAuthFlow(o OAuthOptions, now func() time.Time) (*oauthFlow, error) {
	for _, f := range []struct{ name, val string }{
		{"client ID", o.ClientID}, {"redirect URL", o.RedirectURL}, {"auth URL", o.AuthURL},
		{"token URL", o.TokenURL}, {"userinfo URL", o.UserinfoURL},
	} {
		if f.val == "" {
			return nil, fmt.Errorf("auth: OAuth needs a %s", f.name)
		}
	}
	redirect, err := url.Parse(o.RedirectURL)
	if err != nil || (redirect.Scheme != "http" && redirect.Scheme != "https") || redirect.Host == "" {
		return nil, fmt.Errorf("auth: the OAuth redirect URL %q is not an absolute http(s) URL", o.RedirectURL)
	}
	f := &oauthFlow{
		cfg: oauth2.Config{
			ClientID: o.ClientID, ClientSecret: o.ClientSecret, RedirectURL: o.RedirectURL,
			Endpoint: oauth2.Endpoint{AuthURL: o.AuthURL, TokenURL: o.TokenURL},
			Scopes:   append([]string(nil), o.Scopes...),
		},
		redirect:       redirect,
		userinfoURL:    o.UserinfoURL,
		wait:           o.WaitTimeout,
		exchange:       o.ExchangeTimeout,
		client:         o.HTTPClient,
		pkce:           !o.DisablePKCE,
		trustedProxies: append([]netip.Prefix(nil), o.TrustedProxies...),
		grace:          waiterGrace,
	}
	if f.wait <= 0 {
		f.wait = DefaultWaitTimeout
	}
	if f.exchange <= 0 {
		f.exchange = DefaultExchangeTimeout
	}
	if f.client == nil {
		f.client = &http.Client{Timeout: f.exchange}
	}
	max, perAddr := o.MaxPending, o.MaxPendingPerAddress
	if max <= 0 {
		max = DefaultMaxPending
	}
	if perAddr <= 0 {
		perAddr = min(DefaultMaxPendingPerAddress, max/2)
	}
	if perAddr < 1 || perAddr >= max {
		return nil, fmt.Errorf("auth: the logins per address (%d) must be at least 1 and below the logins in all (%d), so that one address never takes every slot", perAddr, max)
	}
	f.flows = newFlows(max, perAddr, f.wait, now)
	return f, nil
}

// checkState validates a client's state: 1 to MaxStateLength printable
// ASCII characters, no spaces.
func checkState(values []string) (string, *apiError) {
	switch {
	case len(values) == 0 || values[0] == "":
		return "", badRequest("The state is missing: pass the random state the client picked.")
	case len(values) > 1:
		return "", badRequest("Pass one state, not several.")
	case len(values[0]) > MaxStateLength:
		return "", badRequest(fmt.Sprintf("The state is longer than %d characters.", MaxStateLength))
	}
	for _, c := range []byte(values[0]) {
		if c < 0x21 || c > 0x7e {
			return "", badRequest("The state may only hold printable ASCII characters without spaces.")
		}
	}
	return values[0], nil
}

// cookieOf reads r's cookies by name ("" when absent).
func cookieOf(r *http.Request) func(name string) string {
	return func(name string) string {
		c, err := r.Cookie(name)
		if err != nil {
			return ""
		}
		return c.Value
	}
}

// overHTTPS reports whether the browser reached the server over HTTPS:
// directly, or through a trusted proxy that says so.
func (o *oauthFlow) overHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	if !o.trusted(parseAddr(r.RemoteAddr)) {
		return false
	}
	v := r.Header.Values("X-Forwarded-Proto")
	return len(v) > 0 && strings.EqualFold(strings.TrimSpace(v[len(v)-1]), "https")
}

// canonicalURL is where to send a browser that opened /authenticate on
// another host name than the redirect URL's: the login's cookie must be
// set on the host the provider sends the browser back to. "" when the
// host is right, or when the browser was sent over once already (so that
// a proxy that rewrites the Host header does not make a loop).
func (o *oauthFlow) canonicalURL(r *http.Request) string {
	want := strings.ToLower(o.redirect.Hostname())
	q := r.URL.Query()
	if o.requestHost(r) == want || q.Has("redirected") {
		return ""
	}
	u := o.redirect.ResolveReference(&url.URL{Path: "authenticate"})
	q.Set("redirected", "1")
	u.RawQuery = q.Encode()
	return u.String()
}

// tooMany is the refusal of a login because of the bounds.
func (a *Authenticator) tooMany(w http.ResponseWriter, err error, addr netip.Addr) *apiError {
	w.Header().Set("Retry-After", fmt.Sprint(int(a.oauth.wait.Seconds())))
	if errors.Is(err, errAddressFull) {
		a.log.Warn("auth: login refused: too many from one address", "client", showAddr(addr), "max", a.oauth.flows.perAddr)
		return &apiError{
			status: http.StatusTooManyRequests, code: "oauth_too_many_logins", title: "Too many logins from your address",
			detail: fmt.Sprintf("%d logins begun from %s are in progress already, the most one address may have; finish them or try again in %s.",
				a.oauth.flows.perAddr, showAddr(addr), a.oauth.wait),
		}
	}
	a.log.Warn("auth: login refused: too many in progress", "client", showAddr(addr), "max", a.oauth.flows.max)
	return &apiError{
		status: http.StatusTooManyRequests, code: "oauth_too_many_logins", title: "Too many logins in progress",
		detail: fmt.Sprintf("%d logins are in progress on this server, the most it holds; try again in %s.", a.oauth.flows.max, a.oauth.wait),
	}
}

// HandleAuthenticate serves GET /authenticate?state=S: it gives the
// browser the login's cookie and redirects it to the provider's consent
// page (first to the redirect URL's host, if the browser came to another).
func (a *Authenticator) HandleAuthenticate(w http.ResponseWriter, r *http.Request) {
	if a.oauth == nil {
		writeAPIError(w, r, errOAuthDisabled)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, r, "GET")
		return
	}
	state, aerr := checkState(r.URL.Query()["state"])
	if aerr != nil {
		writeAPIError(w, r, aerr)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if u := a.oauth.canonicalURL(r); u != "" {
		http.Redirect(w, r, u, http.StatusFound)
		return
	}
	addr := a.oauth.clientAddr(r)
	verifier, name, value, err := a.oauth.flows.start(state, addrKey(addr), cookieOf(r), oauth2.GenerateVerifier)
	switch {
	case errors.Is(err, errStateUsed):
		writeAPIError(w, r, &apiError{
			status: http.StatusConflict, code: "oauth_state_used", title: "Login already completed",
			detail: "The browser leg of the login with this state has already ended; start a new login.",
		})
		return
	case errors.Is(err, errContested):
		writeAPIError(w, r, contestedOutcome.fail)
		return
	case errors.Is(err, errOtherBrowser):
		a.log.Warn("auth: login link opened in a second browser", "client", showAddr(addr))
		writeAPIError(w, r, &apiError{
			status: http.StatusConflict, code: "oauth_login_other_browser", title: "Login opened in another browser",
			detail: "This login link was opened in another browser already (or this browser keeps no cookies); finish it there, or start a new login.",
		})
		return
	case err != nil:
		writeAPIError(w, r, a.tooMany(w, err, addr))
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: "/", MaxAge: int(2 * a.oauth.wait.Seconds()),
		HttpOnly: true, Secure: a.oauth.overHTTPS(r), SameSite: http.SameSiteLaxMode,
	})
	var opts []oauth2.AuthCodeOption
	if a.oauth.pkce {
		opts = append(opts, oauth2.S256ChallengeOption(verifier))
	}
	http.Redirect(w, r, a.oauth.cfg.AuthCodeURL(state, opts...), http.StatusFound)
}

// accessTokensRequest is the body of POST /access_tokens.
type accessTokensRequest struct {
	Data *struct {
		Type       *string `json:"type"`
		Attributes *struct {
			State *string `json:"state"`
		} `json:"attributes"`
	} `json:"data"`
}

// TokenResponse is the body of a successful POST /access_tokens, shaped
// like golang.org/x/oauth2's Token as Draupnir clients expect. AccessToken
// and RefreshToken hold the same token: Draupnir clients send the refresh
// token as their bearer token, other clients the access token. Expiry is
// the zero time when the token does not expire.
type TokenResponse struct {
	AccessToken  string    `json:"access_token"`
	TokenType    string    `json:"token_type"`
	RefreshToken string    `json:"refresh_token"`
	Expiry       time.Time `json:"expiry"`
}

// HandleAccessTokens serves POST /access_tokens: it waits for the browser
// leg of the login with the body's state and the person's confirmation,
// and answers 201 with a TokenResponse, or with a JSON:API error: 400 for
// a bad body, 409 when the state is waited on already, 429 when too many
// logins are in progress (from the client's address, or in all), 403 when
// the user was refused or refused the login, 502 when the provider failed,
// 504 "oauth_timeout" when the login was not finished and confirmed
// within WaitTimeout.
func (a *Authenticator) HandleAccessTokens(w http.ResponseWriter, r *http.Request) {
	if a.oauth == nil {
		writeAPIError(w, r, errOAuthDisabled)
		return
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, r, "POST")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && mt != MediaType) {
			writeAPIError(w, r, &apiError{
				status: http.StatusUnsupportedMediaType, code: "unsupported_media_type", title: "Unsupported media type",
				detail: fmt.Sprintf("Send the body as application/json or %s, not %q.", MediaType, ct),
			})
			return
		}
	}
	var body accessTokensRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	err := dec.Decode(&body)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("data after the JSON document")
	}
	const shape = `The body must be {"data":{"type":"access_tokens","attributes":{"state":"..."}}}`
	switch {
	case err != nil:
		writeAPIError(w, r, badBody(shape+": "+err.Error()+"."))
		return
	case body.Data == nil:
		writeAPIError(w, r, badBody(shape+`: "data" is missing.`))
		return
	// Draupnir clients send "type":"" (the contract: the route's own type).
	case body.Data.Type != nil && *body.Data.Type != "" && *body.Data.Type != "access_tokens":
		writeAPIError(w, r, badBody(fmt.Sprintf(`%s: the type is %q, not "access_tokens".`, shape, *body.Data.Type)))
		return
	case body.Data.Attributes == nil || body.Data.Attributes.State == nil:
		writeAPIError(w, r, badBody(shape+`: "state" is missing.`))
		return
	}
	state, aerr := checkState([]string{*body.Data.Attributes.State})
	if aerr != nil {
		writeAPIError(w, r, aerr)
		return
	}

	addr := a.oauth.clientAddr(r)
	f, err := a.oauth.flows.wait(state, addr, addrKey(addr))
	switch {
	case errors.Is(err, errStateInUse):
		a.log.Warn("auth: a second client waits on a login's state: the login is void", "client", showAddr(addr))
		writeAPIError(w, r, &apiError{
			status: http.StatusConflict, code: "oauth_state_in_use", title: "Login already waited on",
			detail: "Another request already waits for the login with this state, so neither receives it; start a new login with a new state.",
		})
		return
	case err != nil:
		writeAPIError(w, r, a.tooMany(w, err, addr))
		return
	}
	timer := time.NewTimer(a.oauth.wait)
	defer timer.Stop()
	var o *outcome
	select {
	case <-f.done:
		o = a.oauth.flows.release(f)
	case <-timer.C:
		o = a.oauth.flows.release(f) // it may have come just now
	case <-r.Context().Done():
		a.oauth.flows.release(f)
		a.log.Info("auth: login abandoned: the client went away", "client", showAddr(addr))
		return
	}
	switch {
	case o == nil:
		a.log.Info("auth: login timed out", "client", showAddr(addr), "wait", a.oauth.wait)
		writeAPIError(w, r, &apiError{
			status: http.StatusGatewayTimeout, code: "oauth_timeout", title: "Login timed out",
			detail: fmt.Sprintf("The login was not finished and confirmed in the browser within %s; try again.", a.oauth.wait),
		})
		return
	case o.fail != nil:
		writeAPIError(w, r, o.fail)
		return
	}

	secret, tok, err := a.mintOAuthToken(r.Context(), o.email)
	if errors.Is(err, store.ErrUnavailable) {
		a.log.Warn("auth: minting a login's token: the metadata store is unavailable", "email", o.email, "err", err)
		w.Header().Set("Retry-After", "2")
		writeAPIError(w, r, &apiError{
			status: http.StatusServiceUnavailable, code: "metadata_unavailable", title: "Metadata store unavailable",
			detail: "The token could not be recorded because sindri's metadata database is changing leader or out of reach; log in again in a few seconds.",
		})
		return
	}
	if err != nil {
		a.log.Error("auth: minting a login's token", "email", o.email, "err", err)
		writeAPIError(w, r, &apiError{
			status: http.StatusInternalServerError, code: "internal_server_error", title: "Internal server error",
			detail: "The token could not be recorded; try again.",
		})
		return
	}
	a.log.Info("auth: logged in", "email", o.email, "token_id", tok.ID, "client", showAddr(addr))
	resp := TokenResponse{AccessToken: secret, TokenType: "Bearer", RefreshToken: secret}
	if tok.ExpiresAt != nil {
		resp.Expiry = tok.ExpiresAt.UTC()
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(resp)
}

// HandleCallback serves /oauth_callback. GET ?code=C&state=S is where the
// provider sends the browser back: the server finishes the browser leg
// and, when it succeeded, shows the confirmation page (confirmPage). POST
// is that page's form: the person's decision. The pages are short and
// never hold the token.
func (a *Authenticator) HandleCallback(w http.ResponseWriter, r *http.Request) {
	if a.oauth == nil {
		page(w, http.StatusNotImplemented, "OAuth login is not configured on this server.")
		return
	}
	switch r.Method {
	case http.MethodGet:
		a.callback(w, r)
	case http.MethodPost:
		a.decide(w, r)
	default:
		w.Header().Set("Allow", "GET, POST")
		page(w, http.StatusMethodNotAllowed, "Use GET, or POST the confirmation form.")
	}
}

func (a *Authenticator) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state, aerr := checkState(q["state"])
	if aerr != nil {
		page(w, http.StatusBadRequest, "Login failed: "+aerr.detail)
		return
	}
	if strings.HasPrefix(state, browserStatePrefix) {
		a.browserCallback(w, r, state)
		return
	}
	f, verifier, err := a.oauth.flows.callback(state, cookieOf(r))
	switch {
	case errors.Is(err, errAwaitingConfirmation):
		a.showConfirmation(w, r, f, state)
		return
	case errors.Is(err, errStateUsed):
		page(w, http.StatusConflict, "This login has already been completed. To log in again, run the login command again.")
		return
	case errors.Is(err, errContested):
		page(w, http.StatusConflict, contestedPage)
		return
	case errors.Is(err, errOtherBrowser):
		a.log.Warn("auth: login callback in a browser that did not open the login", "client", showAddr(a.oauth.clientAddr(r)))
		page(w, http.StatusForbidden, "This login was begun in another browser (or this browser keeps no cookies), and sindri finishes a login only in the browser that opened its link. Nothing was handed out. Finish the login there, or run the login command again.")
		return
	case err != nil:
		page(w, http.StatusBadRequest, "This login is unknown or has expired. Run the login command again.")
		return
	}

	o := a.browserLeg(r.Context(), q, verifier)
	if o.fail != nil {
		delivered := a.oauth.flows.finish(f, o)
		a.log.Info("auth: login refused", "code", o.fail.code, "reason", o.fail.detail, "delivered", delivered)
		page(w, o.fail.status, "Login failed: "+o.fail.detail)
		return
	}
	if a.oauth.flows.awaitConfirmation(f, o.email) == nil {
		a.log.Info("auth: login finished after its client gave up", "email", o.email)
		page(w, http.StatusGone, fmt.Sprintf("You signed in as %s, but the command that started the login is no longer waiting. Run it again.", o.email))
		return
	}
	a.showConfirmation(w, r, f, state)
}

// showConfirmation answers with f's confirmation page, once its client
// waits (up to waiterGrace).
func (a *Authenticator) showConfirmation(w http.ResponseWriter, r *http.Request, f *flow, state string) {
	c := a.oauth.flows.pendingOf(f)
	var wt *waiter
	if c != nil {
		wt = a.oauth.flows.waiterOf(r.Context(), f, a.oauth.grace)
	}
	switch {
	case c == nil || (wt == nil && a.oauth.flows.pendingOf(f) == nil):
		page(w, http.StatusGone, "The command that started this login is no longer waiting; nothing was handed out. Run it again.")
		return
	case wt == nil:
		page(w, http.StatusAccepted, fmt.Sprintf("You signed in as %s, but no command is waiting for this login yet. If you have just started the login command, reload this page in a few seconds; otherwise close this window.", c.email))
		return
	}
	browser := a.oauth.clientAddr(r)
	a.log.Info("auth: login awaits confirmation", "email", c.email, "client", showAddr(wt.addr), "browser", showAddr(browser))
	now := a.now()
	confirmPage(w, confirmData{
		Email:       c.email,
		Client:      showAddr(wt.addr),
		Began:       wt.since.UTC().Format("2006-01-02 15:04:05 UTC"),
		Ago:         now.Sub(wt.since).Round(time.Second).String(),
		Code:        logincode.For(state),
		Browser:     showAddr(browser),
		SameAddress: wt.addr.IsValid() && wt.addr == browser,
		State:       state,
		CSRF:        c.csrf,
		Waiter:      wt.id,
	})
}

// decide serves the confirmation form: the person confirms or refuses.
func (a *Authenticator) decide(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		page(w, http.StatusBadRequest, "The confirmation form could not be read. Run the login command again.")
		return
	}
	form := r.PostForm
	state, aerr := checkState(form["state"])
	waiterID, err := strconv.ParseUint(form.Get("waiter"), 10, 64)
	decision := form.Get("decision")
	if aerr != nil || err != nil || (decision != "confirm" && decision != "refuse") {
		page(w, http.StatusBadRequest, "This is not sindri's confirmation form (it needs a state, a waiter and a decision, confirm or refuse). Nothing was handed out.")
		return
	}
	email, err := a.oauth.flows.confirm(state, cookieOf(r), form.Get("csrf"), waiterID, decision == "confirm")
	client := showAddr(a.oauth.clientAddr(r))
	switch {
	case errors.Is(err, errOtherBrowser), errors.Is(err, errForgedConfirmation):
		a.log.Warn("auth: login confirmation refused: not from the browser that signed in", "browser", client, "err", err)
		page(w, http.StatusForbidden, "This confirmation does not come from the page sindri showed the browser that signed in; nothing was handed out.")
		return
	case errors.Is(err, errContested):
		page(w, http.StatusConflict, contestedPage)
		return
	case errors.Is(err, errOtherWaiter):
		page(w, http.StatusConflict, "The command waiting for this login is not the one the page named; nothing was handed out. Run the login command again.")
		return
	case errors.Is(err, errStateUsed):
		page(w, http.StatusConflict, "This login has already ended. To log in again, run the login command again.")
		return
	case err != nil:
		page(w, http.StatusGone, "This login is unknown or has expired, or the command that started it is no longer waiting; nothing was handed out. Run it again.")
		return
	}
	for _, c := range r.Cookies() {
		if strings.HasPrefix(c.Name, loginCookiePrefix) {
			http.SetCookie(w, &http.Cookie{Name: c.Name, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
		}
	}
	if decision == "refuse" {
		a.log.Warn("auth: login refused by the person who signed in", "email", email, "browser", client)
		page(w, http.StatusOK, "You refused: the command waiting for this login received nothing. If you did not start this login yourself, somebody may have sent you its link to obtain access to sindri in your name; tell your sindri administrator.")
		return
	}
	a.log.Info("auth: login confirmed", "email", email, "browser", client)
	page(w, http.StatusOK, fmt.Sprintf("Logged in to sindri as %s. You can close this window and go back to the command line.", email))
}

// contestedPage tells the browser of a contested login why nothing
// happened.
const contestedPage = "Two commands asked for this login at once, so nothing was handed out. " +
	"(The draupnir client always uses the same login state, so two of them may collide, or somebody may be waiting on it.) " +
	"Wait a minute and run the login command again; if this happens again, tell your sindri administrator."

// browserLeg turns the provider's answer into an outcome: the code
// exchanged, the e-mail address read and checked.
func (a *Authenticator) browserLeg(ctx context.Context, q map[string][]string, verifier string) *outcome {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	if e := get("error"); e != "" {
		detail := "The identity provider refused the login: " + sanitize(e)
		if d := get("error_description"); d != "" {
			detail += " (" + sanitize(d) + ")"
		}
		if e == "access_denied" {
			return fail(http.StatusForbidden, "oauth_access_denied", "Login refused", detail+".")
		}
		return fail(http.StatusBadGateway, "oauth_provider_error", "Identity provider error", detail+".")
	}
	code := get("code")
	if code == "" {
		return fail(http.StatusBadGateway, "oauth_provider_error", "Identity provider error",
			"The identity provider sent back neither a code nor an error.")
	}

	ctx, cancel := context.WithTimeout(ctx, a.oauth.exchange)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, a.oauth.client)
	var opts []oauth2.AuthCodeOption
	if a.oauth.pkce {
		opts = append(opts, oauth2.VerifierOption(verifier))
	}
	tok, err := a.oauth.cfg.Exchange(ctx, code, opts...)
	if err != nil {
		a.log.Warn("auth: exchanging an OAuth code", "err", err)
		why := "no usable answer"
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			why = fmt.Sprintf("HTTP %d", re.Response.StatusCode)
			if re.ErrorCode != "" {
				why += " " + sanitize(re.ErrorCode)
			}
		}
		return fail(http.StatusBadGateway, "oauth_provider_error", "Identity provider error",
			"Exchanging the authorisation code with the identity provider failed ("+why+").")
	}
	info, err := a.userinfo(ctx, tok)
	if err != nil {
		a.log.Warn("auth: reading the OAuth userinfo", "err", err)
		return fail(http.StatusBadGateway, "oauth_provider_error", "Identity provider error",
			"Reading the user's e-mail address from the identity provider failed: "+err.Error()+".")
	}
	email := info.email
	switch {
	case email == "" || strings.Count(email, "@") != 1 || strings.HasPrefix(email, "@") || strings.HasSuffix(email, "@"):
		return fail(http.StatusBadGateway, "oauth_no_email", "No e-mail address",
			`The identity provider did not give the user's e-mail address (is the "email" scope requested?).`)
	case !info.verifiedStated:
		return fail(http.StatusForbidden, "oauth_email_unverified", "E-mail address not verified",
			fmt.Sprintf(`The identity provider did not say whether it has verified %s (its answer has no "email_verified"), and sindri accepts only verified addresses.`, email))
	case !info.verified:
		return fail(http.StatusForbidden, "oauth_email_unverified", "E-mail address not verified",
			fmt.Sprintf("The identity provider has not verified %s, and sindri accepts only verified addresses.", email))
	case !a.domainAllows(email):
		return fail(http.StatusForbidden, "oauth_email_domain", "E-mail domain not trusted",
			fmt.Sprintf("%s is not an address in %s, the domain this server trusts.", email, a.domain))
	}
	return &outcome{email: email}
}

func fail(status int, code, title, detail string) *outcome {
	return &outcome{fail: &apiError{status: status, code: code, title: title, detail: detail}}
}

// userinfoAnswer is what the login needs of the provider's userinfo.
type userinfoAnswer struct {
	email string // lower case
	// verified is "email_verified" (true, or "true" as some providers
	// send it); verifiedStated whether the answer has the claim at all.
	verified, verifiedStated bool
}

// userinfo reads the user's e-mail address and whether the provider
// verified it.
func (a *Authenticator) userinfo(ctx context.Context, tok *oauth2.Token) (userinfoAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.oauth.userinfoURL, nil)
	if err != nil {
		return userinfoAnswer{}, err
	}
	tok.SetAuthHeader(req)
	req.Header.Set("Accept", "application/json")
	resp, err := a.oauth.client.Do(req)
	if err != nil {
		return userinfoAnswer{}, errors.New("no answer")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return userinfoAnswer{}, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	var info struct {
		Email         string          `json:"email"`
		EmailVerified json.RawMessage `json:"email_verified"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBodyBytes)).Decode(&info); err != nil {
		return userinfoAnswer{}, errors.New("the answer is not a JSON object")
	}
	flag := strings.ToLower(string(info.EmailVerified))
	return userinfoAnswer{
		email:          strings.ToLower(strings.TrimSpace(info.Email)),
		verifiedStated: flag != "" && flag != "null",
		verified:       flag == "true" || flag == `"true"`,
	}, nil
}

// sanitize bounds and cleans text from the provider before it goes into a
// message.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}

// page answers the browser with a short plain-text page.
func page(w http.ResponseWriter, status int, text string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	io.WriteString(w, text+"\n")
}
