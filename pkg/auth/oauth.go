package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode"

	"golang.org/x/oauth2"
)

// The Draupnir-compatible login:
//
//  1. The client picks a random state S and opens GET /authenticate?state=S
//     in the browser (HandleAuthenticate), which redirects to the
//     provider's consent page.
//  2. Meanwhile the client calls POST /access_tokens with S
//     (HandleAccessTokens), which waits up to WaitTimeout.
//  3. The provider sends the browser to GET /oauth_callback?code=C&state=S
//     (HandleCallback): the server exchanges C, reads the verified e-mail
//     address from the userinfo endpoint, checks its domain and hands the
//     outcome to the waiting call, which mints a token and answers 201.
//
// The token is minted when the waiting client collects it, not in the
// callback, so that no token exists that nobody holds (a browser leg whose
// client never came). The state is the only link between the two legs:
// whoever knows it while the login is pending receives the token, as in
// Draupnir, so clients must pick it at random. With PKCE (on unless
// DisablePKCE) a code stolen from the redirect is useless on its own.
//
// Each state has one browser leg and one waiting client: a second wait
// gets 409, a second callback or an /authenticate after the callback is
// refused. Pending states live in memory, at most MaxPending of them
// (the oldest are dropped); one nobody waits on is forgotten WaitTimeout
// after its last event.

// Defaults of OAuthOptions.
const (
	DefaultWaitTimeout     = 60 * time.Second
	DefaultExchangeTimeout = 30 * time.Second
	DefaultMaxPending      = 1000
	// MaxStateLength is the longest state accepted.
	MaxStateLength = 256
)

// maxBodyBytes bounds the bodies of POST /access_tokens and of the
// provider's userinfo answer.
const maxBodyBytes = 64 << 10

// OAuthOptions configure the OAuth login.
type OAuthOptions struct {
	ClientID     string
	ClientSecret string
	// RedirectURL is this server's /oauth_callback as the provider knows it.
	RedirectURL string
	// AuthURL and TokenURL are the provider's endpoints; UserinfoURL its
	// OpenID Connect userinfo endpoint, which must answer with "email"
	// (and, if it knows, "email_verified").
	AuthURL, TokenURL, UserinfoURL string
	Scopes                         []string
	// WaitTimeout is how long POST /access_tokens waits for the browser
	// leg, and how long a finished or started login waits for the other
	// leg (default 60 s).
	WaitTimeout time.Duration
	// ExchangeTimeout bounds the code exchange plus the userinfo request
	// (default 30 s).
	ExchangeTimeout time.Duration
	// MaxPending bounds the logins in progress (default 1000).
	MaxPending int
	// HTTPClient talks to the provider (default: one with ExchangeTimeout).
	HTTPClient *http.Client
	// DisablePKCE leaves out the PKCE challenge, for providers that
	// refuse it.
	DisablePKCE bool
}

type oauthFlow struct {
	cfg         oauth2.Config
	userinfoURL string
	wait        time.Duration
	exchange    time.Duration
	client      *http.Client
	pkce        bool
	flows       *flows
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
	f := &oauthFlow{
		cfg: oauth2.Config{
			ClientID: o.ClientID, ClientSecret: o.ClientSecret, RedirectURL: o.RedirectURL,
			Endpoint: oauth2.Endpoint{AuthURL: o.AuthURL, TokenURL: o.TokenURL},
			Scopes:   append([]string(nil), o.Scopes...),
		},
		userinfoURL: o.UserinfoURL,
		wait:        o.WaitTimeout,
		exchange:    o.ExchangeTimeout,
		client:      o.HTTPClient,
		pkce:        !o.DisablePKCE,
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
	max := o.MaxPending
	if max <= 0 {
		max = DefaultMaxPending
	}
	f.flows = newFlows(max, f.wait, now)
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

// HandleAuthenticate serves GET /authenticate?state=S: it redirects the
// browser to the provider's consent page.
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
	verifier, err := a.oauth.flows.start(state, oauth2.GenerateVerifier)
	if err != nil {
		writeAPIError(w, r, &apiError{
			status: http.StatusConflict, code: "oauth_state_used", title: "Login already completed",
			detail: "The browser leg of the login with this state has already ended; start a new login.",
		})
		return
	}
	var opts []oauth2.AuthCodeOption
	if a.oauth.pkce {
		opts = append(opts, oauth2.S256ChallengeOption(verifier))
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, a.oauth.cfg.AuthCodeURL(state, opts...), http.StatusFound)
}

// accessTokensRequest is the body of POST /access_tokens.
type accessTokensRequest struct {
	Data *struct {
		Type       string `json:"type"`
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
// leg of the login with the body's state and answers 201 with a
// TokenResponse, or with a JSON:API error: 400 for a bad body, 409 when
// the state is waited on already, 403 when the user was refused, 502 when
// the provider failed, 504 "oauth_timeout" when the browser leg did not
// finish within WaitTimeout.
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
	case body.Data.Type != "" && body.Data.Type != "access_tokens":
		// An empty or missing type is the route's own: Draupnir's
		// clients send "type":"".
		writeAPIError(w, r, badBody(fmt.Sprintf(`%s: the type is %q, not "access_tokens".`, shape, body.Data.Type)))
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

	f, err := a.oauth.flows.wait(state)
	if err != nil {
		writeAPIError(w, r, &apiError{
			status: http.StatusConflict, code: "oauth_state_in_use", title: "Login already waited on",
			detail: "Another request already waits for the login with this state; start a new login with a new state.",
		})
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
		a.log.Info("auth: login abandoned: the client went away")
		return
	}
	switch {
	case o == nil:
		a.log.Info("auth: login timed out", "wait", a.oauth.wait)
		writeAPIError(w, r, &apiError{
			status: http.StatusGatewayTimeout, code: "oauth_timeout", title: "Login timed out",
			detail: fmt.Sprintf("The browser did not finish the login within %s; try again.", a.oauth.wait),
		})
		return
	case o.fail != nil:
		writeAPIError(w, r, o.fail)
		return
	}

	secret, tok, err := a.mintOAuthToken(r.Context(), o.email)
	if err != nil {
		a.log.Error("auth: minting a login's token", "email", o.email, "err", err)
		writeAPIError(w, r, &apiError{
			status: http.StatusInternalServerError, code: "internal_server_error", title: "Internal server error",
			detail: "The token could not be recorded; try again.",
		})
		return
	}
	a.log.Info("auth: logged in", "email", o.email, "token_id", tok.ID)
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

// HandleCallback serves GET /oauth_callback?code=C&state=S, where the
// provider sends the browser back: it finishes the login for the waiting
// client and tells the user in a short plain-text page, which never holds
// the token.
func (a *Authenticator) HandleCallback(w http.ResponseWriter, r *http.Request) {
	if a.oauth == nil {
		page(w, http.StatusNotImplemented, "OAuth login is not configured on this server.")
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		page(w, http.StatusMethodNotAllowed, "Use GET.")
		return
	}
	q := r.URL.Query()
	state, aerr := checkState(q["state"])
	if aerr != nil {
		page(w, http.StatusBadRequest, "Login failed: "+aerr.detail)
		return
	}
	f, verifier, err := a.oauth.flows.callback(state)
	switch {
	case errors.Is(err, errStateUsed):
		page(w, http.StatusConflict, "This login has already been completed. To log in again, run the login command again.")
		return
	case err != nil:
		page(w, http.StatusBadRequest, "This login is unknown or has expired. Run the login command again.")
		return
	}

	o := a.browserLeg(r.Context(), q, verifier)
	delivered := a.oauth.flows.finish(f, o)
	if o.fail != nil {
		a.log.Info("auth: login refused", "code", o.fail.code, "reason", o.fail.detail)
		page(w, o.fail.status, "Login failed: "+o.fail.detail)
		return
	}
	if !delivered {
		a.log.Info("auth: login finished after its client gave up", "email", o.email)
		page(w, http.StatusGone, fmt.Sprintf("You signed in as %s, but the command that started the login is no longer waiting. Run it again.", o.email))
		return
	}
	page(w, http.StatusOK, fmt.Sprintf("Logged in to sindri as %s. You can close this window and go back to the command line.", o.email))
}

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
	email, verified, err := a.userinfo(ctx, tok)
	if err != nil {
		a.log.Warn("auth: reading the OAuth userinfo", "err", err)
		return fail(http.StatusBadGateway, "oauth_provider_error", "Identity provider error",
			"Reading the user's e-mail address from the identity provider failed: "+err.Error()+".")
	}
	switch {
	case email == "" || strings.Count(email, "@") != 1 || strings.HasPrefix(email, "@") || strings.HasSuffix(email, "@"):
		return fail(http.StatusBadGateway, "oauth_no_email", "No e-mail address",
			`The identity provider did not give the user's e-mail address (is the "email" scope requested?).`)
	case !verified:
		return fail(http.StatusForbidden, "oauth_email_unverified", "E-mail address not verified",
			fmt.Sprintf("The identity provider has not verified %s.", email))
	case !a.domainAllows(email):
		return fail(http.StatusForbidden, "oauth_email_domain", "E-mail domain not trusted",
			fmt.Sprintf("%s is not an address in %s, the domain this server trusts.", email, a.domain))
	}
	return &outcome{email: email}
}

func fail(status int, code, title, detail string) *outcome {
	return &outcome{fail: &apiError{status: status, code: code, title: title, detail: detail}}
}

// userinfo reads the user's e-mail address, lower case, and whether it is
// verified (true when the provider does not say).
func (a *Authenticator) userinfo(ctx context.Context, tok *oauth2.Token) (email string, verified bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.oauth.userinfoURL, nil)
	if err != nil {
		return "", false, err
	}
	tok.SetAuthHeader(req)
	req.Header.Set("Accept", "application/json")
	resp, err := a.oauth.client.Do(req)
	if err != nil {
		return "", false, errors.New("no answer")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	var info struct {
		Email         string          `json:"email"`
		EmailVerified json.RawMessage `json:"email_verified"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBodyBytes)).Decode(&info); err != nil {
		return "", false, errors.New("the answer is not a JSON object")
	}
	// Some providers send the flag as a string.
	switch strings.Trim(strings.ToLower(string(info.EmailVerified)), `"`) {
	case "", "null", "true":
		verified = true
	}
	return strings.ToLower(strings.TrimSpace(info.Email)), verified, nil
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
