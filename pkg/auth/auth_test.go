package auth_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/auth/authtest"
	"github.com/sindri-db/sindri/pkg/auth/logincode"
	"github.com/sindri-db/sindri/pkg/store"
)

var ctx = context.Background()

const (
	sharedSecret = "a-shared-secret-of-some-length"
	clientID     = authtest.ClientID
	clientSecret = authtest.ClientSecret
)

func randomString() string { return authtest.Random() }

// env is one test's world: a store, a provider, an Authenticator and
// sindri's OAuth routes on a loopback server.
type env struct {
	t       *testing.T
	store   *store.Store
	dbURL   string
	prov    *authtest.Provider
	auth    *auth.Authenticator
	srv     *httptest.Server
	browser *http.Client
}

type envOption func(*auth.Options)

func newEnv(t *testing.T, options ...envOption) *env {
	t.Helper()
	e := &env{t: t, prov: authtest.NewProvider(t)}
	e.store, e.dbURL = newStore(t)
	mux := http.NewServeMux()
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	e.prov.SetRedirectURI(e.srv.URL + "/oauth_callback")
	opts := auth.Options{
		SharedSecret: sharedSecret,
		EmailDomain:  "@example.com",
		Store:        e.store,
		Logger:       testLogger(),
		OAuth: &auth.OAuthOptions{
			ClientID:     clientID,
			ClientSecret: clientSecret,
			RedirectURL:  e.srv.URL + "/oauth_callback",
			AuthURL:      e.prov.AuthURL(),
			TokenURL:     e.prov.TokenURL(),
			UserinfoURL:  e.prov.UserinfoURL(),
			Scopes:       []string{"openid", "email"},
			WaitTimeout:  10 * time.Second,
		},
	}
	for _, o := range options {
		o(&opts)
	}
	a, err := auth.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.auth = a
	mux.HandleFunc("/authenticate", a.HandleAuthenticate)
	mux.HandleFunc("/access_tokens", a.HandleAccessTokens)
	mux.HandleFunc("/oauth_callback", a.HandleCallback)
	// A browser: follows redirects across both servers, keeps cookies.
	e.browser = newBrowser(t, "")
	return e
}

// newBrowser is a browser (redirects followed, cookies kept) whose
// connections come from the loopback address from ("" for the default).
func newBrowser(t *testing.T, from string) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := clientFrom(from)
	c.Jar = jar
	return c
}

// clientFrom is an HTTP client whose connections come from the loopback
// address from (any 127.0.0.0/8 address reaches a server on 127.0.0.1),
// so that a test can play several client addresses.
func clientFrom(from string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if from != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
		tr.DialContext = d.DialContext
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

type response struct {
	status int
	header http.Header
	body   []byte
	url    *url.URL // the last one, after redirects
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

func do(t *testing.T, c *http.Client, req *http.Request) response {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body, url: resp.Request.URL}
}

func (e *env) get(path string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return do(e.t, e.browser, req)
}

// browse runs the browser leg for state: /authenticate, the provider, the
// callback. It returns the callback's page: the confirmation page when
// the sign-in succeeded.
func (e *env) browse(state string) response {
	e.t.Helper()
	return e.get("/authenticate?state=" + url.QueryEscape(state))
}

// login runs the browser leg for state and confirms it as the person.
func (e *env) login(state string) response {
	e.t.Helper()
	page := e.browse(state)
	if page.status != http.StatusOK || !isConfirmPage(page) {
		e.t.Fatalf("after signing in: %s, want the confirmation page", page)
	}
	r := e.decide(e.browser, page, "confirm")
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "Logged in") {
		e.t.Fatalf("confirming: %s", r)
	}
	return r
}

func isConfirmPage(r response) bool {
	return strings.HasPrefix(r.header.Get("Content-Type"), "text/html") &&
		strings.Contains(string(r.body), `name="decision" value="confirm"`)
}

var hiddenInput = regexp.MustCompile(`<input type="hidden" name="([a-z]+)" value="([^"]*)">`)

// formOf reads the hidden fields of the confirmation page's form.
func formOf(t *testing.T, page response) url.Values {
	t.Helper()
	form := url.Values{}
	for _, m := range hiddenInput.FindAllStringSubmatch(string(page.body), -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	for _, k := range []string{"state", "csrf", "waiter"} {
		if form.Get(k) == "" {
			t.Fatalf("the confirmation page has no %q field:\n%s", k, page.body)
		}
	}
	return form
}

// decide posts the confirmation page's form with decision through c, as
// the form's action says (relative to the page).
func (e *env) decide(c *http.Client, page response, decision string) response {
	e.t.Helper()
	return e.postForm(c, page, formOf(e.t, page), decision)
}

func (e *env) postForm(c *http.Client, page response, form url.Values, decision string) response {
	e.t.Helper()
	form.Set("decision", decision)
	action, err := page.url.Parse("oauth_callback")
	if err != nil {
		e.t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, action.String(), strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(e.t, c, req)
}

func (e *env) post(contentType, body string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/access_tokens", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(e.t, http.DefaultClient, req)
}

func accessTokensBody(state string) string {
	return fmt.Sprintf(`{"data":{"type":"access_tokens","attributes":{"state":%q}}}`, state)
}

// wait starts POST /access_tokens for state in a goroutine and returns
// once the server has registered it.
func (e *env) wait(state string) <-chan response {
	e.t.Helper()
	return e.waitWith(ctx, http.DefaultClient, state)
}

// waitWith is wait through c, for as long as c lives.
func (e *env) waitWith(c context.Context, client *http.Client, state string) <-chan response {
	e.t.Helper()
	ch := e.startWait(c, client, state)
	deadline := time.Now().Add(10 * time.Second)
	for !auth.Waiting(e.auth, state) {
		if time.Now().After(deadline) {
			e.t.Fatal("POST /access_tokens is not waiting")
		}
		time.Sleep(time.Millisecond)
	}
	return ch
}

// startWait starts POST /access_tokens for state without waiting for the
// server to register it.
func (e *env) startWait(c context.Context, client *http.Client, state string) <-chan response {
	ch := make(chan response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(c, http.MethodPost, e.srv.URL+"/access_tokens", strings.NewReader(accessTokensBody(state)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			ch <- response{status: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		ch <- response{status: resp.StatusCode, header: resp.Header, body: body}
	}()
	return ch
}

func receive(t *testing.T, ch <-chan response) response {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("POST /access_tokens did not answer")
	}
	return response{}
}

// tokenOf checks a 201 from POST /access_tokens and decodes it.
func tokenOf(t *testing.T, r response) auth.TokenResponse {
	t.Helper()
	if r.status != http.StatusCreated {
		t.Fatalf("POST /access_tokens: want 201, got %s", r)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var raw map[string]any
	if err := json.Unmarshal(r.body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"access_token", "token_type", "refresh_token", "expiry"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("the answer has no %q: %s", k, r.body)
		}
	}
	var tok auth.TokenResponse
	if err := json.Unmarshal(r.body, &tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

// apiErrorOf checks a JSON:API error document and returns its code.
func apiErrorOf(t *testing.T, r response, status int) string {
	t.Helper()
	if r.status != status {
		t.Fatalf("want %d, got %s", status, r)
	}
	if ct := r.header.Get("Content-Type"); ct != auth.MediaType {
		t.Errorf("content type %q, want %q", ct, auth.MediaType)
	}
	var doc struct {
		Errors []struct{ Status, Code, Title, Detail string }
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatalf("not JSON: %s", r.body)
	}
	if len(doc.Errors) != 1 {
		t.Fatalf("want one error: %s", r.body)
	}
	e := doc.Errors[0]
	if e.Status != fmt.Sprint(status) || e.Code == "" || e.Title == "" || e.Detail == "" {
		t.Errorf("incomplete error object: %s", r.body)
	}
	return e.Code
}

func (e *env) authenticate(token string) (auth.Principal, error) {
	req := httptest.NewRequest(http.MethodGet, "/instances", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	return e.auth.Authenticate(req)
}

func (e *env) mustAuthenticate(token string) auth.Principal {
	e.t.Helper()
	p, err := e.authenticate(token)
	if err != nil {
		e.t.Fatalf("authenticate %q: %v", token, err)
	}
	return p
}

func (e *env) refused(token string) {
	e.t.Helper()
	if p, err := e.authenticate(token); !errors.Is(err, auth.ErrUnauthorized) {
		e.t.Fatalf("authenticate %q: want ErrUnauthorized, got %+v, %v", token, p, err)
	}
}

func (e *env) tokenRows() int {
	e.t.Helper()
	conn, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "select count(*) from tokens").Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// checkStoredHashed fails unless the tokens table holds plaintext's
// SHA-256 and nowhere the plaintext itself.
func (e *env) checkStoredHashed(plaintext string) {
	e.t.Helper()
	conn, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(ctx)
	sum := sha256.Sum256([]byte(plaintext))
	var n int
	if err := conn.QueryRow(ctx, "select count(*) from tokens where token_hash = $1", sum[:]).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	if n != 1 {
		e.t.Errorf("%d rows hold the token's hash, want 1", n)
	}
	rows, err := conn.Query(ctx, "select t::text, encode(token_hash, 'escape') from tokens t")
	if err != nil {
		e.t.Fatal(err)
	}
	texts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var row, escaped string
		err := r.Scan(&row, &escaped)
		return row + " " + escaped, err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	secret := strings.TrimPrefix(plaintext, auth.TokenPrefix)
	for _, text := range texts {
		if strings.Contains(text, secret) || strings.Contains(text, hex.EncodeToString([]byte(plaintext))) {
			e.t.Errorf("the tokens table holds the plaintext: %s", text)
		}
	}
}

func TestOAuthLogin(t *testing.T) {
	e := newEnv(t)
	e.prov.Login(map[string]any{"email": "alice@example.com", "email_verified": true})
	state := randomString()
	waiting := e.wait(state)

	page := e.browse(state)
	if page.status != http.StatusOK || !isConfirmPage(page) || !strings.Contains(string(page.body), "alice@example.com") {
		t.Fatalf("after signing in: %s (%s), want the confirmation page", page, page.header.Get("Content-Type"))
	}
	if page.url.Path != "/oauth_callback" {
		t.Errorf("the browser ended at %s", page.url)
	}
	// The page names the waiting client: its address, when it began, the
	// login code the command printed; and says this browser is there too.
	for _, want := range []string{"127.0.0.1", logincode.For(state), "same address", "Only confirm if you started this login yourself"} {
		if !strings.Contains(string(page.body), want) {
			t.Errorf("the confirmation page does not say %q:\n%s", want, page.body)
		}
	}
	for _, h := range []string{"X-Frame-Options", "Content-Security-Policy"} {
		if page.header.Get(h) == "" {
			t.Errorf("the confirmation page has no %s header", h)
		}
	}
	// Nothing is handed out before the person confirms.
	select {
	case r := <-waiting:
		t.Fatalf("POST /access_tokens answered before the confirmation: %s", r)
	case <-time.After(300 * time.Millisecond):
	}
	if n := e.tokenRows(); n != 0 {
		t.Errorf("%d tokens before the confirmation, want 0", n)
	}

	done := e.decide(e.browser, page, "confirm")
	if done.status != http.StatusOK || !strings.Contains(string(done.body), "alice@example.com") ||
		!strings.HasPrefix(done.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("confirmed: %s", done)
	}
	tok := tokenOf(t, receive(t, waiting))
	if strings.Contains(string(page.body), tok.AccessToken) || strings.Contains(string(done.body), tok.AccessToken) {
		t.Error("a browser page shows the token")
	}
	if !strings.HasPrefix(tok.AccessToken, auth.TokenPrefix) || tok.RefreshToken != tok.AccessToken || tok.TokenType != "Bearer" {
		t.Errorf("token answer %+v", tok)
	}
	if want := time.Now().Add(auth.DefaultTokenTTL); tok.Expiry.Before(want.Add(-time.Minute)) || tok.Expiry.After(want.Add(time.Minute)) {
		t.Errorf("expiry %v, want about %v", tok.Expiry, want)
	}
	for _, token := range []string{tok.AccessToken, tok.RefreshToken} {
		p := e.mustAuthenticate(token)
		if p.Email != "alice@example.com" || p.Upload || p.Kind != store.TokenOAuth || p.TokenID == 0 || p.Owner() != "alice@example.com" {
			t.Errorf("principal %+v", p)
		}
	}
	e.checkStoredHashed(tok.AccessToken)
	if n := e.tokenRows(); n != 1 {
		t.Errorf("%d tokens, want 1", n)
	}
	pkce := e.prov.PKCESeen()
	if pkce != 1 {
		t.Errorf("PKCE verified %d times, want 1", pkce)
	}
	if n := auth.PendingLogins(e.auth); n != 0 {
		t.Errorf("%d logins pending", n)
	}

	// The provider calling back again with the same state is refused, and
	// so is a second confirmation.
	again := e.get(page.url.RequestURI())
	if again.status != http.StatusConflict && again.status != http.StatusBadRequest {
		t.Errorf("second callback: %s", again)
	}
	if r := e.decide(e.browser, page, "confirm"); r.status != http.StatusGone && r.status != http.StatusForbidden {
		t.Errorf("second confirmation: %s", r)
	}
	if n := e.tokenRows(); n != 1 {
		t.Errorf("%d tokens after a replayed callback and confirmation, want 1", n)
	}
}

func TestCallbackBeforeWait(t *testing.T) {
	e := newEnv(t)
	e.prov.LoginEmail("bob@example.com")
	state := randomString()

	// The browser finishes first; the callback waits a moment for the
	// command before it shows the confirmation page.
	pages := make(chan response, 1)
	go func() { pages <- e.browse(state) }()
	deadline := time.Now().Add(10 * time.Second)
	for auth.PendingLogins(e.auth) == 0 || e.prov.Exchanges() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the browser leg did not reach the callback")
		}
		time.Sleep(time.Millisecond)
	}
	waiting := e.startWait(ctx, http.DefaultClient, state)
	var page response
	select {
	case page = <-pages:
	case <-time.After(30 * time.Second):
		t.Fatal("no confirmation page")
	}
	if !isConfirmPage(page) {
		t.Fatalf("callback page: %s", page)
	}
	if n := e.tokenRows(); n != 0 {
		t.Errorf("%d tokens before the confirmation, want 0", n)
	}
	e.decide(e.browser, page, "confirm")
	tok := tokenOf(t, receive(t, waiting))
	if p := e.mustAuthenticate(tok.RefreshToken); p.Email != "bob@example.com" {
		t.Errorf("principal %+v", p)
	}
}

// With no command waiting, the signed-in browser is told so and may
// reload: the page then names the command that came meanwhile.
func TestCallbackWithoutWaiter(t *testing.T) {
	e := newEnv(t)
	auth.SetWaiterGrace(e.auth, 200*time.Millisecond)
	e.prov.LoginEmail("bob@example.com")
	state := randomString()
	start := time.Now()
	page := e.browse(state)
	if page.status != http.StatusAccepted || !strings.Contains(string(page.body), "no command is waiting") {
		t.Fatalf("callback without a waiting command: %s", page)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("the callback waited only %v for a command, want the grace of 200ms", d)
	}
	waiting := e.wait(state)
	reload := e.get(page.url.RequestURI())
	if !isConfirmPage(reload) {
		t.Fatalf("reloaded: %s", reload)
	}
	if e.prov.Exchanges() != 1 {
		t.Errorf("%d code exchanges, want 1 (a reload does not exchange again)", e.prov.Exchanges())
	}
	e.decide(e.browser, reload, "confirm")
	tokenOf(t, receive(t, waiting))
}

func TestEmailDomain(t *testing.T) {
	for _, tc := range []struct {
		email string
		ok    bool
	}{
		{"carol@example.com", true},
		{"Carol.Upper@EXAMPLE.com", true},
		{"mallory@evil.com", false},
		{"mallory@notexample.com", false},
		{"mallory@example.com.evil.com", false},
		{"mallory@sub.example.com", false},
	} {
		t.Run(tc.email, func(t *testing.T) {
			e := newEnv(t)
			e.prov.Login(map[string]any{"email": tc.email, "email_verified": true})
			state := randomString()
			waiting := e.wait(state)
			page := e.browse(state)
			if tc.ok {
				e.decide(e.browser, page, "confirm")
				tok := tokenOf(t, receive(t, waiting))
				if p := e.mustAuthenticate(tok.AccessToken); p.Email != strings.ToLower(tc.email) {
					t.Errorf("principal %+v", p)
				}
				return
			}
			if code := apiErrorOf(t, receive(t, waiting), http.StatusForbidden); code != "oauth_email_domain" {
				t.Errorf("code %q", code)
			}
			if page.status != http.StatusForbidden || !strings.Contains(string(page.body), "@example.com") {
				t.Errorf("callback page: %s", page)
			}
			if n := e.tokenRows(); n != 0 {
				t.Errorf("%d tokens minted for a refused user", n)
			}
		})
	}
}

func TestAnyDomainWhenAllowed(t *testing.T) {
	e := newEnv(t, func(o *auth.Options) { o.EmailDomain, o.AllowAnyEmail = "", true })
	e.prov.Login(map[string]any{"email": "dave@anywhere.org", "email_verified": true})
	state := randomString()
	waiting := e.wait(state)
	e.login(state)
	tok := tokenOf(t, receive(t, waiting))
	if p := e.mustAuthenticate(tok.AccessToken); p.Email != "dave@anywhere.org" {
		t.Errorf("principal %+v", p)
	}
}

// OAuth with no trusted domain needs AllowAnyEmail; an OAuth token is
// not accepted without either.
func TestAnyDomainNeedsAllowAnyEmail(t *testing.T) {
	st, _ := newStore(t)
	o := &auth.OAuthOptions{ClientID: "x", RedirectURL: "http://127.0.0.1:1/oauth_callback", AuthURL: "http://127.0.0.1:1/a",
		TokenURL: "http://127.0.0.1:1/t", UserinfoURL: "http://127.0.0.1:1/u"}
	if _, err := auth.New(auth.Options{Store: st, OAuth: o}); err == nil || !strings.Contains(err.Error(), "AllowAnyEmail") {
		t.Errorf("OAuth without a domain or AllowAnyEmail: %v, want an error naming AllowAnyEmail", err)
	}
	if _, err := auth.New(auth.Options{Store: st, OAuth: o, EmailDomain: "@example.com", AllowAnyEmail: true}); err == nil {
		t.Error("a domain and AllowAnyEmail together accepted")
	}
	if _, err := auth.New(auth.Options{Store: st, OAuth: o, AllowAnyEmail: true}); err != nil {
		t.Errorf("AllowAnyEmail: %v", err)
	}
	a, err := auth.New(auth.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	plain, _, err := a.MintToken(ctx, store.TokenOAuth, "", "eve@anywhere.org", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuthenticateToken(ctx, plain); !errors.Is(err, auth.ErrUnauthorized) {
		t.Errorf("an OAuth token with no domain and no AllowAnyEmail: %v, want ErrUnauthorized", err)
	}
}

func TestUnverifiedEmail(t *testing.T) {
	for _, verified := range []any{false, "false", "no", nil, "missing"} {
		t.Run(fmt.Sprint(verified), func(t *testing.T) {
			e := newEnv(t)
			claims := map[string]any{"email": "erin@example.com", "email_verified": verified}
			if verified == "missing" {
				delete(claims, "email_verified")
			}
			e.prov.Login(claims)
			state := randomString()
			waiting := e.wait(state)
			page := e.browse(state)
			if code := apiErrorOf(t, receive(t, waiting), http.StatusForbidden); code != "oauth_email_unverified" {
				t.Errorf("code %q", code)
			}
			want := "has not verified erin@example.com"
			if verified == nil || verified == "missing" {
				want = `did not say whether it has verified erin@example.com (its answer has no "email_verified")`
			}
			if page.status != http.StatusForbidden || !strings.Contains(string(page.body), want) {
				t.Errorf("callback page: %s, want 403 saying %q", page, want)
			}
			if n := e.tokenRows(); n != 0 {
				t.Errorf("%d tokens minted", n)
			}
		})
	}
	for _, verified := range []any{true, "true", "True"} {
		t.Run(fmt.Sprint(verified), func(t *testing.T) {
			e := newEnv(t)
			e.prov.Login(map[string]any{"email": "erin@example.com", "email_verified": verified})
			state := randomString()
			waiting := e.wait(state)
			e.login(state)
			tokenOf(t, receive(t, waiting))
		})
	}
}

func TestNoEmail(t *testing.T) {
	e := newEnv(t)
	e.prov.Login(map[string]any{"sub": "1234"})
	state := randomString()
	waiting := e.wait(state)
	e.browse(state)
	if code := apiErrorOf(t, receive(t, waiting), http.StatusBadGateway); code != "oauth_no_email" {
		t.Errorf("code %q", code)
	}
}

func TestProviderErrors(t *testing.T) {
	t.Run("access denied", func(t *testing.T) {
		e := newEnv(t)
		e.prov.Refuse("access_denied")
		state := randomString()
		waiting := e.wait(state)
		page := e.browse(state)
		if code := apiErrorOf(t, receive(t, waiting), http.StatusForbidden); code != "oauth_access_denied" {
			t.Errorf("code %q", code)
		}
		if page.status != http.StatusForbidden || !strings.Contains(string(page.body), "access_denied") {
			t.Errorf("callback page: %s", page)
		}
	})
	t.Run("server error", func(t *testing.T) {
		e := newEnv(t)
		e.prov.Refuse("server_error")
		state := randomString()
		waiting := e.wait(state)
		e.browse(state)
		if code := apiErrorOf(t, receive(t, waiting), http.StatusBadGateway); code != "oauth_provider_error" {
			t.Errorf("code %q", code)
		}
	})
	t.Run("wrong client secret", func(t *testing.T) {
		e := newEnv(t, func(o *auth.Options) { o.OAuth.ClientSecret = "wrong" })
		e.prov.Login(map[string]any{"email": "frank@example.com"})
		state := randomString()
		waiting := e.wait(state)
		page := e.browse(state)
		if code := apiErrorOf(t, receive(t, waiting), http.StatusBadGateway); code != "oauth_provider_error" {
			t.Errorf("code %q", code)
		}
		if page.status != http.StatusBadGateway || strings.Contains(string(page.body), clientSecret) {
			t.Errorf("callback page: %s", page)
		}
		if n := e.tokenRows(); n != 0 {
			t.Errorf("%d tokens minted", n)
		}
	})
	t.Run("provider down", func(t *testing.T) {
		e := newEnv(t, func(o *auth.Options) { o.OAuth.TokenURL = "http://127.0.0.1:1/token" })
		e.prov.Login(map[string]any{"email": "frank@example.com"})
		state := randomString()
		waiting := e.wait(state)
		e.browse(state)
		if code := apiErrorOf(t, receive(t, waiting), http.StatusBadGateway); code != "oauth_provider_error" {
			t.Errorf("code %q", code)
		}
	})
}

func TestWaitTimeout(t *testing.T) {
	const wait = 300 * time.Millisecond
	e := newEnv(t, func(o *auth.Options) { o.OAuth.WaitTimeout = wait })
	auth.SetWaiterGrace(e.auth, 10*time.Millisecond)
	e.prov.LoginEmail("gina@example.com")
	state := randomString()

	// The browser reaches the provider, then dawdles.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/authenticate?state="+state, nil)
	first := do(t, noFollow, req)
	if first.status != http.StatusFound {
		t.Fatalf("/authenticate: %s", first)
	}
	consent := first.header.Get("Location")
	if !strings.HasPrefix(consent, e.prov.AuthURL()+"?") || !strings.Contains(consent, "state="+state) {
		t.Fatalf("redirected to %q", consent)
	}

	start := time.Now()
	r := e.post("application/json", accessTokensBody(state))
	took := time.Since(start)
	if code := apiErrorOf(t, r, http.StatusGatewayTimeout); code != "oauth_timeout" {
		t.Errorf("code %q", code)
	}
	if took < wait || took > wait+5*time.Second {
		t.Errorf("timed out after %v, want about %v", took, wait)
	}

	// The login is over: its late callback is refused and mints nothing.
	req, _ = http.NewRequest(http.MethodGet, consent, nil)
	page := do(t, e.browser, req)
	if page.status != http.StatusBadRequest {
		t.Errorf("late callback: %s", page)
	}
	if n := e.tokenRows(); n != 0 {
		t.Errorf("%d tokens minted", n)
	}

	// A finished login nobody collects is forgotten after the wait too.
	e.browse(randomString())
	time.Sleep(2 * wait)
	e.browse(randomString()) // sweeps
	if n := auth.PendingLogins(e.auth); n != 1 {
		t.Errorf("%d logins pending, want 1", n)
	}
}

func TestClientGoesAway(t *testing.T) {
	e := newEnv(t)
	state := randomString()
	c, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(c, http.MethodPost, e.srv.URL+"/access_tokens", strings.NewReader(accessTokensBody(state)))
		req.Header.Set("Content-Type", "application/json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !auth.Waiting(e.auth, state) {
		if time.Now().After(deadline) {
			t.Fatal("not waiting")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	for auth.PendingLogins(e.auth) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the abandoned login is still pending")
		}
		time.Sleep(time.Millisecond)
	}
}

// A second client waiting on a state voids the login for both: the
// person signing in could not tell which is theirs. This is what stops a
// squatter on a state a client is known to use (a Draupnir client built
// with an old Go always sends 1298498081) from being named on the page of
// the person whose own client was turned away.
func TestSecondWaiter(t *testing.T) {
	t.Run("browser already signing in", func(t *testing.T) {
		e := newEnv(t)
		e.prov.LoginEmail("hank@example.com")
		state := "1298498081"
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		squatter := e.waitWith(c, clientFrom("127.0.0.2"), state)
		noFollow := newBrowser(t, "")
		noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		r := do(t, noFollow, mustRequest(t, http.MethodGet, e.srv.URL+"/authenticate?state="+state))
		if r.status != http.StatusFound {
			t.Fatalf("/authenticate: %s", r)
		}
		// Hank's own client comes second.
		if code := apiErrorOf(t, e.post("application/json", accessTokensBody(state)), http.StatusConflict); code != "oauth_state_in_use" {
			t.Errorf("the second waiter: code %q", code)
		}
		if code := apiErrorOf(t, receive(t, squatter), http.StatusConflict); code != "oauth_state_contested" {
			t.Errorf("the first waiter: code %q, want oauth_state_contested", code)
		}
		noFollow.CheckRedirect = nil
		page := do(t, noFollow, mustRequest(t, http.MethodGet, r.header.Get("Location")))
		if page.status != http.StatusConflict || !strings.Contains(string(page.body), "Two commands asked for this login") {
			t.Errorf("the browser's page: %s", page)
		}
		if n := e.tokenRows(); n != 0 {
			t.Errorf("%d tokens minted, want 0", n)
		}
	})
	t.Run("browser after", func(t *testing.T) {
		e := newEnv(t)
		e.prov.LoginEmail("hank@example.com")
		state := "1298498081"
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		squatter := e.waitWith(c, clientFrom("127.0.0.2"), state)
		if code := apiErrorOf(t, e.post("application/json", accessTokensBody(state)), http.StatusConflict); code != "oauth_state_in_use" {
			t.Errorf("the second waiter: code %q", code)
		}
		if code := apiErrorOf(t, receive(t, squatter), http.StatusConflict); code != "oauth_state_contested" {
			t.Errorf("the first waiter: code %q, want oauth_state_contested", code)
		}
		// The squatter waits again at once: still refused, and so is the
		// browser that opens the link now.
		if code := apiErrorOf(t, receive(t, e.startWait(c, clientFrom("127.0.0.2"), state)), http.StatusConflict); code != "oauth_state_in_use" {
			t.Errorf("waiting again on a contested state: code %q", code)
		}
		if code := apiErrorOf(t, e.browse(state), http.StatusConflict); code != "oauth_state_contested" {
			t.Errorf("the link of a contested state: code %q", code)
		}
		if n := e.tokenRows(); n != 0 {
			t.Errorf("%d tokens minted, want 0", n)
		}
	})
	t.Run("forgotten after the wait", func(t *testing.T) {
		const wait = 300 * time.Millisecond
		e := newEnv(t, func(o *auth.Options) { o.OAuth.WaitTimeout = wait })
		e.prov.LoginEmail("hank@example.com")
		state := randomString()
		first := e.wait(state)
		apiErrorOf(t, e.post("application/json", accessTokensBody(state)), http.StatusConflict)
		apiErrorOf(t, receive(t, first), http.StatusConflict)
		time.Sleep(2 * wait)
		waiting := e.wait(state)
		e.login(state)
		tokenOf(t, receive(t, waiting))
	})
}

func TestUnknownState(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{
		"/oauth_callback?code=abc&state=never-seen",
		"/oauth_callback?code=abc",
		"/oauth_callback?code=abc&state=",
	} {
		r := e.get(path)
		if r.status != http.StatusBadRequest || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
			t.Errorf("%s: %s", path, r)
		}
	}
	// A state known only from a waiting client has no browser leg yet:
	// a callback for it is refused and the client keeps waiting.
	e.prov.LoginEmail("ivy@example.com")
	state := randomString()
	waiting := e.wait(state)
	if r := e.get("/oauth_callback?code=forged&state=" + state); r.status != http.StatusBadRequest {
		t.Errorf("forged callback: %s", r)
	}
	e.login(state)
	tokenOf(t, receive(t, waiting))
}

func TestAuthenticateRedirect(t *testing.T) {
	e := newEnv(t)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/authenticate?state=s-1", nil)
	r := do(t, noFollow, req)
	if r.status != http.StatusFound {
		t.Fatalf("%s", r)
	}
	loc, err := url.Parse(r.header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	if loc.Path != "/authorize" || q.Get("state") != "s-1" || q.Get("client_id") != clientID ||
		q.Get("redirect_uri") != e.srv.URL+"/oauth_callback" || q.Get("scope") != "openid email" ||
		q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		t.Errorf("consent URL %s", loc)
	}

	long := strings.Repeat("x", auth.MaxStateLength+1)
	for _, path := range []string{"/authenticate", "/authenticate?state=", "/authenticate?state=" + long, "/authenticate?state=a%20b", "/authenticate?state=a&state=b"} {
		if code := apiErrorOf(t, e.get(path), http.StatusBadRequest); code != "bad_request" {
			t.Errorf("%s: code %q", path, code)
		}
	}
	req, _ = http.NewRequest(http.MethodPost, e.srv.URL+"/authenticate?state=s-2", nil)
	apiErrorOf(t, do(t, http.DefaultClient, req), http.StatusMethodNotAllowed)
}

func TestMalformedAccessTokens(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("x", auth.MaxStateLength+1)
	for _, tc := range []struct{ name, contentType, body string }{
		{"empty", "application/json", ""},
		{"not JSON", "application/json", "state=abc"},
		{"array", "application/json", "[]"},
		{"no data", "application/json", "{}"},
		{"data null", "application/json", `{"data":null}`},
		{"wrong type", "application/json", `{"data":{"type":"images","attributes":{"state":"abc"}}}`},
		{"no attributes", "application/json", `{"data":{"type":"access_tokens"}}`},
		{"no state", "application/json", `{"data":{"type":"access_tokens","attributes":{}}}`},
		{"empty state", "application/json", accessTokensBody("")},
		{"state not a string", "application/json", `{"data":{"type":"access_tokens","attributes":{"state":42}}}`},
		{"long state", "application/json", accessTokensBody(long)},
		{"state with a space", "application/json", accessTokensBody("a b")},
		{"trailing data", "application/json", accessTokensBody("abc") + `{}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code := apiErrorOf(t, e.post(tc.contentType, tc.body), http.StatusBadRequest); code != "bad_request" {
				t.Errorf("code %q", code)
			}
		})
	}
	t.Run("form content type", func(t *testing.T) {
		apiErrorOf(t, e.post("application/x-www-form-urlencoded", accessTokensBody("abc")), http.StatusUnsupportedMediaType)
	})
	t.Run("GET", func(t *testing.T) {
		apiErrorOf(t, e.get("/access_tokens"), http.StatusMethodNotAllowed)
	})
	t.Run("huge body", func(t *testing.T) {
		body := `{"data":{"type":"access_tokens","attributes":{"state":"abc","x":"` + strings.Repeat("y", 1<<20) + `"}}}`
		apiErrorOf(t, e.post("application/json", body), http.StatusBadRequest)
	})
	if n := auth.PendingLogins(e.auth); n != 0 {
		t.Errorf("%d logins pending after bad requests", n)
	}
}

// draupnirPost sends POST /access_tokens as Draupnir 5.3.6's client does:
// its headers, and its body (marshalled from a struct without a JSON:API
// type, so "type" and "id" are empty).
func (e *env) draupnirPost(state string) response {
	e.t.Helper()
	body := fmt.Sprintf(`{"data":{"type":"","id":"","attributes":{"state":%q}}}`+"\n", state)
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/access_tokens", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer ")
	req.Header.Set("Draupnir-Version", "5.3.6")
	return do(e.t, http.DefaultClient, req)
}

// draupnirWait starts draupnirPost in the background and returns once the
// login waits on state.
func (e *env) draupnirWait(state string) chan response {
	e.t.Helper()
	ch := make(chan response, 1)
	go func() { ch <- e.draupnirPost(state) }()
	deadline := time.Now().Add(10 * time.Second)
	for !auth.Waiting(e.auth, state) {
		if time.Now().After(deadline) {
			e.t.Fatal("the Draupnir request is not waiting")
		}
		time.Sleep(time.Millisecond)
	}
	return ch
}

// draupnirErrorOf checks Draupnir's bare error object and returns it.
func draupnirErrorOf(t *testing.T, r response, status int) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("want %d, got %s", status, r)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q, want application/json", ct)
	}
	var obj map[string]any
	if err := json.Unmarshal(r.body, &obj); err != nil {
		t.Fatalf("not one JSON object: %s", r.body)
	}
	for _, k := range []string{"id", "status", "code", "title", "detail", "source"} {
		if _, ok := obj[k]; !ok || len(obj) != 6 {
			t.Errorf("not Draupnir's six members (no %q): %s", k, r.body)
		}
	}
	if obj["status"] != fmt.Sprint(status) || obj["title"] == "" || obj["detail"] == "" {
		t.Errorf("incomplete error object: %s", r.body)
	}
	return obj
}

// A Draupnir client logs in with its own body and reads its own errors.
func TestDraupnirClientAccessTokens(t *testing.T) {
	e := newEnv(t)
	e.prov.LoginEmail("dora@example.com")
	state := "1298498081" // Draupnir's states are rand.Int31() in decimal
	waiting := e.draupnirWait(state)
	e.login(state)
	tok := tokenOf(t, receive(t, waiting))
	if p := e.mustAuthenticate(tok.RefreshToken); p.Email != "dora@example.com" {
		t.Errorf("principal %+v", p)
	}

	// A refused login: sindri's code and words, in Draupnir's object.
	e.prov.LoginEmail("mallory@evil.com")
	state = "1298498082"
	waiting = e.draupnirWait(state)
	e.browse(state)
	obj := draupnirErrorOf(t, receive(t, waiting), http.StatusForbidden)
	if obj["id"] != "oauth_email_domain" || obj["code"] != "oauth_email_domain" || !strings.Contains(obj["detail"].(string), "mallory@evil.com") {
		t.Errorf("refused login: %v", obj)
	}

	// A body that is not the document is Draupnir's "Invalid JSON".
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/access_tokens", strings.NewReader(`{"data":`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Draupnir-Version", "5.3.6")
	obj = draupnirErrorOf(t, do(t, http.DefaultClient, req), http.StatusBadRequest)
	if obj["title"] != "Invalid JSON" || obj["detail"] != "Your JSON is malformed" || obj["id"] != "bad_request" {
		t.Errorf("malformed body: %v", obj)
	}
	// The same from a 5.4 client is a JSON:API document with the reason.
	req, _ = http.NewRequest(http.MethodPost, e.srv.URL+"/access_tokens", strings.NewReader(`{"data":`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Draupnir-Version", "5.4.0")
	apiErrorOf(t, do(t, http.DefaultClient, req), http.StatusBadRequest)

	// The JSON errors of /authenticate too.
	req, _ = http.NewRequest(http.MethodGet, e.srv.URL+"/authenticate", nil)
	req.Header.Set("Draupnir-Version", "5.3.6")
	if obj = draupnirErrorOf(t, do(t, http.DefaultClient, req), http.StatusBadRequest); obj["code"] != "bad_request" {
		t.Errorf("/authenticate without a state: %v", obj)
	}
	if n := auth.PendingLogins(e.auth); n != 0 {
		t.Errorf("%d logins pending", n)
	}
}

func TestOAuthDisabled(t *testing.T) {
	e := newEnv(t, func(o *auth.Options) { o.OAuth = nil })
	if e.auth.OAuthEnabled() {
		t.Error("OAuth enabled")
	}
	apiErrorOf(t, e.get("/authenticate?state=abc"), http.StatusNotImplemented)
	apiErrorOf(t, e.post("application/json", accessTokensBody("abc")), http.StatusNotImplemented)
	if obj := draupnirErrorOf(t, e.draupnirPost("abc"), http.StatusNotImplemented); obj["code"] != "oauth_not_configured" {
		t.Errorf("Draupnir client: %v", obj)
	}
	if r := e.get("/oauth_callback?state=abc&code=x"); r.status != http.StatusNotImplemented {
		t.Errorf("callback: %s", r)
	}
}

func TestSharedSecret(t *testing.T) {
	e := newEnv(t)
	p := e.mustAuthenticate(sharedSecret)
	if !p.Upload || p.Owner() != auth.UploadOwner || p.Email != "" || !p.CanAccess("alice@example.com") {
		t.Errorf("principal %+v", p)
	}
	for _, header := range [][]string{
		nil,
		{""},
		{"Bearer"},
		{"Bearer "},
		{"Bearer wrong-secret"},
		{"Bearer " + sharedSecret + "x"},
		{"Bearer " + sharedSecret[:len(sharedSecret)-1]},
		{"Basic " + sharedSecret},
		{"Basic " + base64.StdEncoding.EncodeToString([]byte("upload:"+sharedSecret))},
		{sharedSecret},
		{"Bearer " + sharedSecret, "Bearer " + sharedSecret},
		{"Bearer sdr_not-a-token"},
		{"Bearer " + strings.Repeat("a", 10000)},
	} {
		req := httptest.NewRequest(http.MethodGet, "/images", nil)
		for _, h := range header {
			req.Header.Add("Authorization", h)
		}
		if p, err := e.auth.Authenticate(req); !errors.Is(err, auth.ErrUnauthorized) {
			t.Errorf("%q: want ErrUnauthorized, got %+v, %v", header, p, err)
		}
	}
	// The scheme is case-insensitive (RFC 7235).
	req := httptest.NewRequest(http.MethodGet, "/images", nil)
	req.Header.Set("Authorization", "bearer "+sharedSecret)
	if p, err := e.auth.Authenticate(req); err != nil || !p.Upload {
		t.Errorf("lower-case scheme: %+v, %v", p, err)
	}

	// Without a shared secret nothing is the upload user.
	e2, err := auth.New(auth.Options{Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	req = httptest.NewRequest(http.MethodGet, "/images", nil)
	req.Header.Set("Authorization", "Bearer ")
	if _, err := e2.Authenticate(req); !errors.Is(err, auth.ErrUnauthorized) {
		t.Errorf("no secret configured: %v", err)
	}
}

func TestMintedTokens(t *testing.T) {
	now := time.Now()
	clock := now
	var mu sync.Mutex
	e := newEnv(t, func(o *auth.Options) {
		o.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	})
	setClock := func(t time.Time) { mu.Lock(); clock = t; mu.Unlock() }

	plain, tok, err := e.auth.MintToken(ctx, store.TokenOAuth, "", "Jane@Example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(plain, auth.TokenPrefix))
	if !strings.HasPrefix(plain, auth.TokenPrefix) || err != nil || len(raw) != 32 {
		t.Errorf("token %q: %v", plain, err)
	}
	if tok.Email != "jane@example.com" || tok.Kind != store.TokenOAuth || tok.ExpiresAt != nil {
		t.Errorf("token %+v", tok)
	}
	e.checkStoredHashed(plain)
	if p := e.mustAuthenticate(plain); p.TokenID != tok.ID || p.Email != "jane@example.com" || p.CanAccess("someone@example.com") || !p.CanAccess("jane@example.com") {
		t.Errorf("principal %+v", p)
	}
	other, _, err := e.auth.MintToken(ctx, store.TokenOAuth, "", "jane@example.com", nil)
	if err != nil || other == plain {
		t.Fatalf("second token %q: %v", other, err)
	}

	// Revoked.
	if err := e.auth.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	e.refused(plain)
	e.mustAuthenticate(other)
	if err := e.auth.RevokeToken(ctx, tok.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking twice: %v", err)
	}

	// Expired, by the database's clock.
	past := now.Add(-time.Hour)
	expired, _, err := e.auth.MintToken(ctx, store.TokenOAuth, "", "jane@example.com", &past)
	if err != nil {
		t.Fatal(err)
	}
	e.refused(expired)

	// Expired, by the authenticator's clock.
	soon := now.Add(time.Hour)
	expiring, _, err := e.auth.MintToken(ctx, store.TokenOAuth, "", "jane@example.com", &soon)
	if err != nil {
		t.Fatal(err)
	}
	e.mustAuthenticate(expiring)
	setClock(now.Add(2 * time.Hour))
	e.refused(expiring)
	e.mustAuthenticate(other)
	setClock(now)

	// An OAuth token outside the trusted domain is refused on use.
	outsider, _, err := e.auth.MintToken(ctx, store.TokenOAuth, "", "jane@elsewhere.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	e.refused(outsider)

	// Bad kinds and OAuth tokens without an e-mail address are refused.
	if _, _, err := e.auth.MintToken(ctx, "magic", "", "jane@example.com", nil); err == nil {
		t.Error("minted a token of an unknown kind")
	}
	if _, _, err := e.auth.MintToken(ctx, store.TokenOAuth, "", "", nil); err == nil {
		t.Error("minted an OAuth token without an e-mail address")
	}

	// The login's tokens expire after TokenTTL.
	e.prov.LoginEmail("jane@example.com")
	state := randomString()
	waiting := e.wait(state)
	e.login(state)
	login := tokenOf(t, receive(t, waiting))
	if want := now.Add(auth.DefaultTokenTTL); login.Expiry.Sub(want).Abs() > time.Second {
		t.Errorf("expiry %v, want %v", login.Expiry, want)
	}
	setClock(now.Add(auth.DefaultTokenTTL + time.Second))
	e.refused(login.RefreshToken)
}

func TestTokensNeverExpire(t *testing.T) {
	e := newEnv(t, func(o *auth.Options) { o.TokenTTL = -1 })
	e.prov.LoginEmail("kim@example.com")
	state := randomString()
	waiting := e.wait(state)
	e.login(state)
	tok := tokenOf(t, receive(t, waiting))
	if !tok.Expiry.IsZero() {
		t.Errorf("expiry %v, want zero", tok.Expiry)
	}
	if !strings.Contains(string(mustJSON(t, tok)), `"expiry":"0001-01-01T00:00:00Z"`) {
		t.Errorf("zero expiry renders as %s", mustJSON(t, tok))
	}
	e.mustAuthenticate(tok.AccessToken)
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAPITokens(t *testing.T) {
	e := newEnv(t)
	plain, tok, err := e.auth.CreateAPIToken(ctx, "ci-main.1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(plain, auth.TokenPrefix) || tok.Name != "ci-main.1" || tok.Kind != store.TokenAPI || tok.ExpiresAt != nil {
		t.Errorf("token %q %+v", plain, tok)
	}
	e.checkStoredHashed(plain)
	p := e.mustAuthenticate(plain)
	if p.TokenName != "ci-main.1" || p.Kind != store.TokenAPI || p.Upload || p.Owner() != "token:ci-main.1" || !p.CanAccess("token:ci-main.1") || p.CanAccess("upload") {
		t.Errorf("principal %+v, owner %q", p, p.Owner())
	}

	if _, _, err := e.auth.CreateAPIToken(ctx, "ci-main.1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("duplicate name: %v", err)
	}
	second, _, err := e.auth.CreateAPIToken(ctx, strings.Repeat("z", auth.MaxTokenNameLength))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "CI", "ci main", "ci/main", "ci:main", "ci\n", "é", strings.Repeat("z", auth.MaxTokenNameLength+1)} {
		if _, _, err := e.auth.CreateAPIToken(ctx, name); !errors.Is(err, auth.ErrInvalidTokenName) {
			t.Errorf("name %q: %v", name, err)
		}
	}

	list, err := e.auth.ListAPITokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "ci-main.1" || list[1].Name != strings.Repeat("z", auth.MaxTokenNameLength) {
		t.Errorf("list %+v", list)
	}
	// OAuth tokens are not API tokens.
	if _, _, err := e.auth.MintToken(ctx, store.TokenOAuth, "", "lee@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if list, _ := e.auth.ListAPITokens(ctx); len(list) != 2 {
		t.Errorf("list %+v", list)
	}

	if err := e.auth.RevokeAPIToken(ctx, "ci-main.1"); err != nil {
		t.Fatal(err)
	}
	e.refused(plain)
	e.mustAuthenticate(second)
	if err := e.auth.RevokeAPIToken(ctx, "ci-main.1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking twice: %v", err)
	}
	if err := e.auth.RevokeAPIToken(ctx, "Bad Name"); !errors.Is(err, auth.ErrInvalidTokenName) {
		t.Errorf("revoking a bad name: %v", err)
	}
	if list, _ := e.auth.ListAPITokens(ctx); len(list) != 1 {
		t.Errorf("list after revoke %+v", list)
	}
	// The name is free again; the old token stays dead.
	again, _, err := e.auth.CreateAPIToken(ctx, "ci-main.1")
	if err != nil {
		t.Fatal(err)
	}
	e.mustAuthenticate(again)
	e.refused(plain)
}

func TestStoreFailureIsNotUnauthorized(t *testing.T) {
	e := newEnv(t)
	plain, _, err := e.auth.CreateAPIToken(ctx, "ci")
	if err != nil {
		t.Fatal(err)
	}
	e.store.Close()
	_, err = e.authenticate(plain)
	if err == nil || errors.Is(err, auth.ErrUnauthorized) {
		t.Errorf("store down: want a server error, got %v", err)
	}
	// A bad token is still refused as such, and the shared secret works.
	e.refused("not-a-token")
	e.mustAuthenticate(sharedSecret)
}

func TestPrincipalOwner(t *testing.T) {
	for _, tc := range []struct {
		p     auth.Principal
		owner string
	}{
		{auth.Principal{Upload: true}, "upload"},
		{auth.Principal{Email: "a@example.com", TokenID: 3}, "a@example.com"},
		{auth.Principal{TokenName: "ci", TokenID: 4}, "token:ci"},
		{auth.Principal{TokenName: "ci", Email: "a@example.com", TokenID: 4}, "a@example.com"},
		{auth.Principal{}, ""},
	} {
		if got := tc.p.Owner(); got != tc.owner {
			t.Errorf("%+v: owner %q, want %q", tc.p, got, tc.owner)
		}
	}
	if (auth.Principal{}).CanAccess("") {
		t.Error("the zero principal can access unowned things")
	}
	if !(auth.Principal{Upload: true}).CanAccess("a@example.com") {
		t.Error("the upload user cannot access everything")
	}
}

func TestNewValidates(t *testing.T) {
	st, _ := newStore(t)
	if _, err := auth.New(auth.Options{}); err == nil {
		t.Error("no store accepted")
	}
	if _, err := auth.New(auth.Options{Store: st, EmailDomain: "a@b@c"}); err == nil {
		t.Error("bad domain accepted")
	}
	if _, err := auth.New(auth.Options{Store: st, OAuth: &auth.OAuthOptions{ClientID: "x"}}); err == nil {
		t.Error("incomplete OAuth options accepted")
	}
	// A domain without "@" gets one.
	a, err := auth.New(auth.Options{Store: st, EmailDomain: "Example.com"})
	if err != nil {
		t.Fatal(err)
	}
	plain, _, err := a.MintToken(ctx, store.TokenOAuth, "", "x@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer "+plain)
	if _, err := a.Authenticate(req); err != nil {
		t.Error(err)
	}
}
