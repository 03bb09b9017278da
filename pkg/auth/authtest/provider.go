// Package authtest is a small OAuth2/OIDC provider on loopback for tests of
// sindri's login: authorize grants at once (or refuses, as told), token
// checks the client, the code, the redirect URI and PKCE, userinfo answers
// with the claims the test set.
package authtest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// The client the provider knows.
const (
	ClientID     = "sindri-test-client"
	ClientSecret = "sindri-test-client-secret"
)

// Provider is the loopback provider; URL is its base URL.
type Provider struct {
	URL string

	mu          sync.Mutex
	redirectURI string         // what the client must use
	claims      map[string]any // userinfo of the next login
	deny        string         // an error to redirect with instead of a code
	codes       map[string]grant
	tokens      map[string]map[string]any
	exchanges   int
	pkceSeen    int
}

type grant struct {
	claims      map[string]any
	redirectURI string
	challenge   string
}

// NewProvider serves a provider until the test ends.
func NewProvider(t testing.TB) *Provider {
	p := &Provider{codes: map[string]grant{}, tokens: map[string]map[string]any{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	mux.HandleFunc("GET /userinfo", p.userinfo)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// AuthURL, TokenURL and UserinfoURL are the provider's endpoints.
func (p *Provider) AuthURL() string     { return p.URL + "/authorize" }
func (p *Provider) TokenURL() string    { return p.URL + "/token" }
func (p *Provider) UserinfoURL() string { return p.URL + "/userinfo" }

// SetRedirectURI names the one redirect URI the client may use.
func (p *Provider) SetRedirectURI(uri string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.redirectURI = uri
}

// Login makes the next login grant a code whose userinfo is claims.
func (p *Provider) Login(claims map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.claims, p.deny = claims, ""
}

// LoginEmail is Login as a verified e-mail address.
func (p *Provider) LoginEmail(email string) {
	p.Login(map[string]any{"sub": email, "email": email, "email_verified": true})
}

// Refuse makes the next logins redirect back with error e.
func (p *Provider) Refuse(e string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deny = e
}

// PKCESeen counts the code exchanges that carried a verified PKCE verifier.
func (p *Provider) PKCESeen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pkceSeen
}

// Exchanges counts the codes exchanged for tokens.
func (p *Provider) Exchanges() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exchanges
}

// Random is a random URL-safe string, for codes, tokens and states.
func Random() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (p *Provider) authorize(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	q := r.URL.Query()
	if q.Get("client_id") != ClientID || q.Get("response_type") != "code" || q.Get("redirect_uri") != p.redirectURI {
		http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
		return
	}
	if q.Get("state") == "" || !strings.Contains(q.Get("scope"), "email") {
		http.Error(w, "no state or no email scope", http.StatusBadRequest)
		return
	}
	back, _ := url.Parse(p.redirectURI)
	v := url.Values{"state": {q.Get("state")}}
	if p.deny != "" {
		v.Set("error", p.deny)
		v.Set("error_description", "the user said no")
	} else {
		if q.Get("code_challenge") != "" && q.Get("code_challenge_method") != "S256" {
			http.Error(w, "only S256", http.StatusBadRequest)
			return
		}
		code := Random()
		p.codes[code] = grant{claims: p.claims, redirectURI: q.Get("redirect_uri"), challenge: q.Get("code_challenge")}
		v.Set("code", code)
	}
	back.RawQuery = v.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

func tokenError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":%q}`, code)
}

func (p *Provider) token(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := r.ParseForm(); err != nil {
		tokenError(w, 400, "invalid_request")
		return
	}
	id, secret, ok := r.BasicAuth()
	if ok {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != ClientID || secret != ClientSecret {
		tokenError(w, 401, "invalid_client")
		return
	}
	g, ok := p.codes[r.PostForm.Get("code")]
	delete(p.codes, r.PostForm.Get("code")) // codes are single-use
	if r.PostForm.Get("grant_type") != "authorization_code" || !ok || r.PostForm.Get("redirect_uri") != g.redirectURI {
		tokenError(w, 400, "invalid_grant")
		return
	}
	if g.challenge != "" {
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
			tokenError(w, 400, "invalid_grant")
			return
		}
		p.pkceSeen++
	}
	p.exchanges++
	access := Random()
	p.tokens[access] = g.claims
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, access)
}

func (p *Provider) userinfo(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	claims, ok := p.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	if !ok {
		http.Error(w, "bad token", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(claims)
}
