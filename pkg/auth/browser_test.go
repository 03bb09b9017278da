package auth_test

import (
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/store"
)

// withConsole serves the browser login's start at /ui/login/oauth and
// answers a finished one with the token it hands out.
func (e *env) withConsole() {
	mux := e.srv.Config.Handler.(*http.ServeMux)
	mux.HandleFunc("/ui/login/oauth", func(w http.ResponseWriter, r *http.Request) {
		e.auth.StartBrowserLogin(w, r, "/ui/login/oauth")
	})
	e.auth.SetBrowserLoginDone(func(w http.ResponseWriter, r *http.Request, token string, tok store.Token) {
		w.Write([]byte("signed in with " + token))
	})
}

// stepping is a browser that keeps cookies and does not follow
// redirects, so that a test can stop between the legs.
func stepping(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	c := clientFrom("")
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

func (e *env) step(c *http.Client, u string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return do(e.t, c, req)
}

func TestBrowserLogin(t *testing.T) {
	e := newEnv(t)
	e.withConsole()
	e.prov.LoginEmail("ada@example.com")
	page := e.get("/ui/login/oauth")
	token, ok := strings.CutPrefix(string(page.body), "signed in with ")
	if page.status != http.StatusOK || !ok {
		t.Fatalf("browser login: %s", page)
	}
	if p := e.mustAuthenticate(token); p.Email != "ada@example.com" || p.Kind != store.TokenOAuth {
		t.Fatalf("the browser login's token is %+v", p)
	}
	e.checkStoredHashed(token)
	if e.prov.PKCESeen() != 1 {
		t.Fatalf("the code exchange carried no PKCE verifier")
	}
}

// A callback URL opened in another browser than the one that began the
// login hands out nothing (else an attacker could sign a victim's browser
// in as the attacker); the browser that began it can still finish, once.
func TestBrowserLoginIsBoundToItsBrowser(t *testing.T) {
	e := newEnv(t)
	e.withConsole()
	e.prov.LoginEmail("mallory@example.com")
	mallory := stepping(t)
	toProvider := e.step(mallory, e.srv.URL+"/ui/login/oauth")
	if toProvider.status != http.StatusFound {
		t.Fatalf("start: %s", toProvider)
	}
	back := e.step(mallory, toProvider.header.Get("Location"))
	callback := back.header.Get("Location")
	if back.status != http.StatusFound || !strings.Contains(callback, "/oauth_callback?") || !strings.Contains(callback, "state=ui_") {
		t.Fatalf("provider: %s to %q", back, callback)
	}
	rows := e.tokenRows()
	victim := stepping(t)
	if r := e.step(victim, callback); r.status != http.StatusForbidden || !strings.Contains(string(r.body), "begun in another browser") {
		t.Fatalf("the callback in another browser: %s", r)
	}
	if e.tokenRows() != rows {
		t.Fatal("a token was minted for another browser's callback")
	}
	if r := e.step(mallory, callback); r.status != http.StatusOK || !strings.HasPrefix(string(r.body), "signed in with sdr_") {
		t.Fatalf("the callback in the browser that began: %s", r)
	}
	if r := e.step(mallory, callback); r.status != http.StatusBadRequest {
		t.Fatalf("the callback again: %s", r)
	}
}

func TestBrowserLoginChecksTheDomain(t *testing.T) {
	e := newEnv(t)
	e.withConsole()
	rows := e.tokenRows()
	e.prov.LoginEmail("eve@elsewhere.org")
	if page := e.get("/ui/login/oauth"); page.status != http.StatusForbidden || !strings.Contains(string(page.body), "is not an address in @example.com") {
		t.Fatalf("a login outside the domain: %s", page)
	}
	if e.tokenRows() != rows {
		t.Fatal("a token was minted for an address outside the domain")
	}
}

// One address cannot hold every pending console sign-in (which would
// refuse everybody else's for browserLoginTTL): past the logins one
// address may have in progress, its next is refused with 429.
func TestBrowserLoginsBoundedPerAddress(t *testing.T) {
	const perAddr = 3
	e := newEnv(t, func(o *auth.Options) { o.OAuth.MaxPending, o.OAuth.MaxPendingPerAddress = 100, perAddr })
	e.withConsole()
	browser := stepping(t)
	for i := 0; i < perAddr; i++ {
		if r := e.step(browser, e.srv.URL+"/ui/login/oauth"); r.status != http.StatusFound {
			t.Fatalf("sign-in %d: %s", i+1, r)
		}
	}
	r := e.step(browser, e.srv.URL+"/ui/login/oauth")
	if r.status != http.StatusTooManyRequests || !strings.Contains(string(r.body), "from your address") {
		t.Fatalf("one sign-in more than an address may begin: %s", r)
	}
}
