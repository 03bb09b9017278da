package console

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// serve runs the console as sindrid does, under the API's server (its
// middleware, its router, the console's routes exempt from the API's
// header and token), over f.
func serve(t testing.TB, f *fake, tls bool) *httptest.Server {
	t.Helper()
	s := api.NewServer(api.Options{Logger: slog.New(slog.DiscardHandler), VersionExempt: RouteKeys,
		Authenticate: func(r *http.Request) (any, error) { return nil, api.ErrUnauthorized }})
	c, err := New(f.options())
	if err != nil {
		t.Fatal(err)
	}
	Register(s, c)
	s.Router().Handle("/instances", http.NotFoundHandler()).Methods(http.MethodGet) // an API route
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(s.Handler())
	} else {
		srv = httptest.NewServer(s.Handler())
	}
	t.Cleanup(srv.Close)
	return srv
}

// browser is a client with cookies that does not follow redirects, so
// that each answer can be checked.
type browser struct {
	t    testing.TB
	base string
	c    *http.Client
}

func newBrowser(t testing.TB, srv *httptest.Server) *browser {
	jar, _ := cookiejar.New(nil)
	c := *srv.Client() // a browser of its own, not the server's shared client
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: t, base: srv.URL, c: &c}
}

type answer struct {
	status   int
	body     string
	location string
	header   http.Header
}

func (b *browser) do(req *http.Request) answer {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: string(body), location: resp.Header.Get("Location"), header: resp.Header}
}

func (b *browser) get(path string) answer {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, b.base+path, nil)
	return b.do(req)
}

// post submits a form; headers are pairs (e.g. "Origin", "https://evil").
func (b *browser) post(path string, form url.Values, headers ...string) answer {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return b.do(req)
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the CSRF token in a page's forms.
func csrf(t testing.TB, page string) string {
	t.Helper()
	m := csrfInput.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return html.UnescapeString(m[1])
}

// signIn signs b in with token and returns the session's CSRF token.
func (b *browser) signIn(token string) string {
	b.t.Helper()
	page := b.get("/ui/login")
	if page.status != http.StatusOK {
		b.t.Fatalf("sign-in page: %d %s", page.status, page.body)
	}
	a := b.post("/ui/login", url.Values{"csrf": {csrf(b.t, page.body)}, "token": {token}})
	if a.status != http.StatusSeeOther || a.location != "/ui/" {
		b.t.Fatalf("sign in: %d to %q: %s", a.status, a.location, a.body)
	}
	return csrf(b.t, b.get("/ui/").body)
}

func TestSignInWithATokenMakesASessionCookie(t *testing.T) {
	f := newFake()
	for _, tls := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%t", tls), func(t *testing.T) {
			srv := serve(t, f, tls)
			b := newBrowser(t, srv)
			if a := b.get("/ui/instances"); a.status != http.StatusSeeOther || a.location != "/ui/login?next=%2Fui%2Finstances" {
				t.Fatalf("signed out: %d to %q, want the sign-in page", a.status, a.location)
			}
			page := b.get("/ui/login")
			if !strings.Contains(page.body, `<label for="token">Token</label>`) || strings.Contains(page.body, "oauth-signin") {
				t.Fatalf("sign-in page without OAuth: want the labelled token field only:\n%s", page.body)
			}
			a := b.post("/ui/login", url.Values{"csrf": {csrf(t, page.body)}, "token": {"sdr_wrong"}})
			if a.status != http.StatusUnauthorized || !strings.Contains(a.body, "This token is not valid here") {
				t.Fatalf("a wrong token: %d %s", a.status, a.body)
			}
			a = b.post("/ui/login", url.Values{"csrf": {csrf(t, a.body)}, "token": {adaToken}, "next": {"/ui/instances"}})
			if a.status != http.StatusSeeOther || a.location != "/ui/instances" {
				t.Fatalf("sign in: %d to %q", a.status, a.location)
			}
			var session *http.Cookie
			for _, c := range (&http.Response{Header: a.header}).Cookies() {
				if c.Name == sessionCookie && c.Value != "" {
					session = c
				}
			}
			if session == nil {
				t.Fatalf("no session cookie: %v", a.header["Set-Cookie"])
			}
			if !session.HttpOnly || session.SameSite != http.SameSiteLaxMode || session.Secure != tls || session.Path != "/ui/" {
				t.Fatalf("session cookie %q: want HttpOnly, SameSite=Lax, Secure only over HTTPS (%t), Path=/ui/", session.String(), tls)
			}
			if strings.Contains(session.Value, adaToken) {
				t.Fatal("the session cookie holds the token")
			}
			if page := b.get("/ui/instances"); page.status != 200 || !strings.Contains(page.body, "ada@example.com") {
				t.Fatalf("signed in: %d %s", page.status, page.body)
			}
		})
	}
}

func TestSignInRefusesAnotherSitesForm(t *testing.T) {
	f := newFake()
	srv := serve(t, f, false)
	// A page elsewhere posts the sign-in form with the attacker's token: it
	// cannot know this browser's sign-in secret.
	b := newBrowser(t, srv)
	b.get("/ui/login")
	if a := b.post("/ui/login", url.Values{"csrf": {"guess"}, "token": {bobToken}}); a.status != http.StatusForbidden {
		t.Fatalf("sign-in without the form's secret: %d %s", a.status, a.body)
	}
	page := b.get("/ui/login")
	if a := b.post("/ui/login", url.Values{"csrf": {csrf(t, page.body)}, "token": {bobToken}}, "Origin", "https://evil.example"); a.status != http.StatusForbidden {
		t.Fatalf("sign-in from another origin: %d %s", a.status, a.body)
	}
	if a := b.get("/ui/instances"); a.status != http.StatusSeeOther {
		t.Fatalf("the browser was signed in by a forged form: %d", a.status)
	}
}

func TestAUserSeesAndChangesOnlyTheirOwn(t *testing.T) {
	f := newFake()
	srv := serve(t, f, false)
	ada := newBrowser(t, srv)
	token := ada.signIn(adaToken)

	list := ada.get("/ui/instances")
	if !strings.Contains(list.body, `id="instance-5"`) || strings.Contains(list.body, `id="instance-6"`) || strings.Contains(list.body, "bob@example.com") {
		t.Fatalf("ada's instances page: want instance 5 only:\n%s", list.body)
	}
	backups := ada.get("/ui/backups")
	if !strings.Contains(backups.body, `id="backup-9"`) || strings.Contains(backups.body, `id="backup-10"`) {
		t.Fatalf("ada's backups page: want backup 9 only:\n%s", backups.body)
	}
	// Bob's instance: not found, in the services' words, on every path.
	for _, path := range []string{"/ui/instances/6", "/ui/instances/6/destroy", "/ui/backups/10/download", "/ui/backups/10/delete"} {
		a := ada.get(path)
		if a.status != http.StatusNotFound || strings.Contains(a.body, "bobs-secret-6") {
			t.Fatalf("GET %s as ada: %d, want 404 without bob's data:\n%s", path, a.status, a.body)
		}
	}
	if a := ada.get("/ui/instances/6"); !strings.Contains(a.body, "there is no instance 6") {
		t.Fatalf("the 404 does not say why in words:\n%s", a.body)
	}
	for _, path := range []string{"/ui/instances/6/destroy", "/ui/instances/6/reset", "/ui/instances/6/protection", "/ui/instances/6/expiry", "/ui/backups/10/delete"} {
		a := ada.post(path, url.Values{"csrf": {token}, "protected": {"true"}, "ttl": {"1h"}})
		if a.status != http.StatusNotFound {
			t.Fatalf("POST %s as ada with her CSRF token: %d, want 404", path, a.status)
		}
	}
	if changes := f.Changes(); len(changes) != 0 {
		t.Fatalf("ada changed bob's things: %q", changes)
	}
	if _, ok := f.instances[6]; !ok {
		t.Fatal("bob's instance is gone")
	}

	// The upload user sees everybody's, with the owner.
	up := newBrowser(t, srv)
	up.signIn(uploadToken)
	list = up.get("/ui/instances")
	for _, want := range []string{`id="instance-5"`, `id="instance-6"`, "<th scope=\"col\">Owner</th>", "bob@example.com", "ada@example.com"} {
		if !strings.Contains(list.body, want) {
			t.Fatalf("the upload user's instances page lacks %s:\n%s", want, list.body)
		}
	}
}

func TestAChangeWithoutTheCSRFTokenChangesNothing(t *testing.T) {
	f := newFake()
	srv := serve(t, f, false)
	ada := newBrowser(t, srv)
	token := ada.signIn(adaToken)
	cases := []struct {
		name    string
		form    url.Values
		headers []string
	}{
		{"no token", url.Values{}, nil},
		{"a wrong token", url.Values{"csrf": {"x" + token}}, nil},
		{"another origin", url.Values{"csrf": {token}}, []string{"Origin", "https://evil.example"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := ada.post("/ui/instances/5/destroy", c.form, c.headers...)
			if a.status != http.StatusForbidden || !strings.Contains(a.body, "nothing was changed") {
				t.Fatalf("forged destroy: %d %s", a.status, a.body)
			}
		})
	}
	// And without the session cookie at all (another site's form, whose
	// request SameSite=Lax strips of the cookie).
	stranger := newBrowser(t, srv)
	if a := stranger.post("/ui/instances/5/destroy", url.Values{"csrf": {token}}); a.status != http.StatusForbidden {
		t.Fatalf("destroy without a session: %d", a.status)
	}
	if changes := f.Changes(); len(changes) != 0 {
		t.Fatalf("a forged form changed something: %q", changes)
	}
	// With the token, the same form destroys, as ada.
	a := ada.post("/ui/instances/5/destroy", url.Values{"csrf": {token}}, "Origin", ada.base)
	if a.status != http.StatusSeeOther || a.location != "/ui/instances" {
		t.Fatalf("destroy: %d to %q %s", a.status, a.location, a.body)
	}
	if changes := f.Changes(); len(changes) != 1 || changes[0] != "ada@example.com: destroy instance 5" {
		t.Fatalf("changes: %q", changes)
	}
	if page := ada.get("/ui/instances"); !strings.Contains(page.body, "Instance 5 was destroyed.") {
		t.Fatalf("no notice after the destroy:\n%s", page.body)
	}
}

func TestInstanceActionsGoThroughTheServices(t *testing.T) {
	f := newFake()
	srv := serve(t, f, false)
	ada := newBrowser(t, srv)
	token := ada.signIn(adaToken)

	page := ada.get("/ui/instances/5")
	for _, want := range []string{
		`value="psql &#34;postgres://u5:p%40ss%2F5@db.example.com:6005/postgres?sslmode=require&#34;"`,
		`id="database-url" readonly value="postgres://u5:p%40ss%2F5@db.example.com:6005/postgres?sslmode=require"`,
		`value="eval $(sindri env 5)"`,
		`data-copy="database-url"`, `<label for="database-url">`,
		`href="/ui/instances/5/destroy"`, `href="/ui/instances/5/reset"`,
	} {
		if !strings.Contains(page.body, want) {
			t.Fatalf("instance page lacks %s:\n%s", want, page.body)
		}
	}
	confirm := ada.get("/ui/instances/5/destroy")
	if confirm.status != 200 || !strings.Contains(confirm.body, `action="/ui/instances/5/destroy"`) || !strings.Contains(confirm.body, "cannot be undone") {
		t.Fatalf("destroy confirmation: %d %s", confirm.status, confirm.body)
	}
	before := time.Now()
	for _, step := range []struct {
		path string
		form url.Values
		want string
	}{
		{"/ui/instances/5/protection", url.Values{"protected": {"true"}}, "ada@example.com: update instance 5 protected true"},
		{"/ui/instances/5/protection", url.Values{"protected": {"false"}}, "ada@example.com: update instance 5 protected false"},
		{"/ui/instances/5/reset", url.Values{}, "ada@example.com: reset instance 5"},
		{"/ui/backups", url.Values{"instance_id": {"5"}}, "ada@example.com: back up instance 5"},
	} {
		step.form.Set("csrf", token)
		a := ada.post(step.path, step.form)
		if a.status != http.StatusSeeOther || a.location != "/ui/instances/5" {
			t.Fatalf("POST %s: %d to %q: %s", step.path, a.status, a.location, a.body)
		}
		if changes := f.Changes(); changes[len(changes)-1] != step.want {
			t.Fatalf("POST %s: the service saw %q, want %q", step.path, changes[len(changes)-1], step.want)
		}
	}
	a := ada.post("/ui/instances/5/expiry", url.Values{"csrf": {token}, "ttl": {"24h"}})
	if a.status != http.StatusSeeOther {
		t.Fatalf("extend: %d %s", a.status, a.body)
	}
	if exp := *f.instances[5].ExpiresAt; exp.Before(before.Add(24*time.Hour-time.Second)) || exp.After(time.Now().Add(24*time.Hour)) {
		t.Fatalf("extended to %s, want a day from now", exp)
	}

	// The services' refusal, in the API's words and status.
	f.failNext(fmt.Errorf("you have 5 protected instances, the limit (limits.protected_instances_per_user) is 5: unprotect one first: %w", engine.ErrQuotaExceeded))
	a = ada.post("/ui/instances/5/protection", url.Values{"csrf": {token}, "protected": {"true"}})
	if a.status != http.StatusTooManyRequests || !strings.Contains(a.body, "Quota exceeded") ||
		!strings.Contains(a.body, "the limit (limits.protected_instances_per_user) is 5") {
		t.Fatalf("a refused protect: %d %s", a.status, a.body)
	}
	// An internal failure shows the request id, never the error.
	f.failNext(errors.New("pq: connection to 10.0.0.7 refused"))
	a = ada.post("/ui/instances/5/reset", url.Values{"csrf": {token}})
	if a.status != http.StatusInternalServerError || strings.Contains(a.body, "10.0.0.7") || !strings.Contains(a.body, "request id") {
		t.Fatalf("an internal failure: %d %s", a.status, a.body)
	}
}

func TestCreatingAnInstanceShowsItLive(t *testing.T) {
	f := newFake()
	f.createStarted, f.createRelease = make(chan struct{}, 1), make(chan struct{})
	srv := serve(t, f, false)
	ada := newBrowser(t, srv)
	token := ada.signIn(adaToken)

	images := ada.get("/ui/images")
	if !strings.Contains(images.body, `id="new-instance-1"`) || strings.Contains(images.body, `id="new-instance-2"`) {
		t.Fatalf("want a new-instance button on the ready image 1 only:\n%s", images.body)
	}
	if !strings.Contains(images.body, `data-live="1"`) {
		t.Fatal("the images page is not live while image 2 finalises")
	}
	a := ada.post("/ui/instances", url.Values{"csrf": {token}, "image_id": {"1"}})
	if a.status != http.StatusSeeOther || a.location != "/ui/instances" {
		t.Fatalf("create: %d to %q %s", a.status, a.location, a.body)
	}
	<-f.createStarted
	page := ada.get("/ui/instances")
	if !strings.Contains(page.body, `data-live="1"`) || !strings.Contains(page.body, "Creating an instance of image 1…") {
		t.Fatalf("while creating: want a live page that says so:\n%s", page.body)
	}
	close(f.createRelease)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(page.body, `data-operation="done" data-instance="101"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the created instance never shows:\n%s", page.body)
		}
		time.Sleep(10 * time.Millisecond)
		page = ada.get("/ui/instances")
	}
	if strings.Contains(page.body, `data-live="1"`) || !strings.Contains(page.body, `id="instance-101" data-status="running"`) {
		t.Fatalf("once created: want the running instance and no more refreshing:\n%s", page.body)
	}

	// A refusal says why, as the API would.
	f.createStarted = nil
	a = ada.post("/ui/instances", url.Values{"csrf": {token}, "image_id": {"2"}})
	for page = ada.get("/ui/instances"); strings.Contains(page.body, `data-operation="running"`); page = ada.get("/ui/instances") {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(page.body, "Creating an instance of image 2 failed: Image not ready: image 2 is finalising, not ready") {
		t.Fatalf("a refused create:\n%s", page.body)
	}
}

func TestOverviewShowsTheStatusFigures(t *testing.T) {
	f := newFake()
	f.status.Healthy, f.status.Problems = false, []string{"1 instance(s) failed"}
	srv := serve(t, f, false)
	ada := newBrowser(t, srv)
	ada.signIn(adaToken)
	page := ada.get("/ui/")
	for _, want := range []string{
		`<strong id="status"><data value="degraded">`, "<li>1 instance(s) failed</li>",
		`<dd id="version"><data value="9.9.9">`, `<dd id="storage-driver"><data value="btrfs">`,
		`<data value="65">65 ms</data>`, fmt.Sprintf(`<dd id="total"><data value="%d">100.0 GiB`, int64(100<<30)),
		fmt.Sprintf(`<dd id="used-by-instances"><data value="%d">10.0 GiB`, int64(10<<30)),
		`<data value="2" data-status="running">`, `<data value="1" data-status="finalising">`,
		`<rect class="instances" x="0" y="0" width="10.000"`, `<rect class="backups" x="10.000" y="0" width="5.000"`,
	} {
		if !strings.Contains(page.body, want) {
			t.Fatalf("overview lacks %s:\n%s", want, page.body)
		}
	}
}

func TestSignOutEndsTheSessionAndARevokedTokenSignsOut(t *testing.T) {
	f := newFake()
	srv := serve(t, f, false)
	ada := newBrowser(t, srv)
	token := ada.signIn(adaToken)
	if a := ada.post("/ui/logout", url.Values{"csrf": {token}}); a.status != http.StatusSeeOther || a.location != "/ui/login" {
		t.Fatalf("sign out: %d to %q", a.status, a.location)
	}
	if a := ada.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("after sign-out: %d, want the sign-in page", a.status)
	}
	ada.signIn(adaToken)
	f.mu.Lock()
	delete(f.tokens, adaToken) // revoked
	f.mu.Unlock()
	if a := ada.get("/ui/instances"); a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/ui/login") {
		t.Fatalf("with a revoked token: %d to %q, want the sign-in page", a.status, a.location)
	}
}

func TestConsoleHeadersAndStaticFiles(t *testing.T) {
	f := newFake()
	srv := serve(t, f, false)
	b := newBrowser(t, srv)
	page := b.get("/ui/login")
	if csp := page.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Fatalf("CSP: %q", csp)
	}
	if page.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("pages must not be cached: %q", page.header.Get("Cache-Control"))
	}
	for _, path := range []string{"/ui/static/console.js", "/ui/static/console.css"} {
		if a := b.get(path); a.status != 200 || len(a.body) < 100 {
			t.Fatalf("%s: %d (%d bytes)", path, a.status, len(a.body))
		}
	}
	// The API's rules do not leak in: no version header is asked for, and
	// an API route still wants one.
	if a := b.get("/ui"); a.status != http.StatusMovedPermanently || a.location != "/ui/" {
		t.Fatalf("/ui: %d to %q", a.status, a.location)
	}
	if a := b.get("/instances"); a.status != http.StatusBadRequest {
		t.Fatalf("an API route without its header: %d", a.status)
	}
}

func TestTheInstancesPageShowsTheDiskWritten(t *testing.T) {
	f := newFake()
	measured := make(chan struct{}, 10)
	opts := f.options()
	opts.Written = func(ctx context.Context, a engine.Actor) (map[int64]int64, error) {
		defer func() { measured <- struct{}{} }()
		if a.Owner != "ada@example.com" || a.Upload {
			return nil, fmt.Errorf("measured for %+v, want ada", a)
		}
		return map[int64]int64{5: 12345}, nil
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s := api.NewServer(api.Options{Logger: slog.New(slog.DiscardHandler), VersionExempt: RouteKeys})
	Register(s, c)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	ada := newBrowser(t, srv)
	ada.signIn(adaToken)
	page := ada.get("/ui/instances")
	if !strings.Contains(page.body, "<th scope=\"col\">Disk written</th>") || !strings.Contains(page.body, "measuring…") {
		t.Fatalf("before the first measure:\n%s", page.body)
	}
	<-measured
	page = ada.get("/ui/instances")
	if !strings.Contains(page.body, `<data value="12345">12.1 KiB</data>`) {
		t.Fatalf("after the measure:\n%s", page.body)
	}
}

func TestInstanceRowsAreEscaped(t *testing.T) {
	hostile := []string{`"><script>alert(1)</script>`, `<img src=x onerror=alert(2)>`, `a&b'c"d`}
	row := instanceRow{ID: 7, Owner: hostile[0], Image: hostile[1], Status: hostile[2], Err: hostile[0],
		HostPort: hostile[1], Created: hostile[2], Expires: hostile[0], In: hostile[1], Written: hostile[2], WrittenBytes: 3}
	out := string(instanceRows([]instanceRow{row}, true, true))
	for _, v := range hostile {
		if strings.Contains(out, v) {
			t.Fatalf("%q is in the rows unescaped:\n%s", v, out)
		}
		if !strings.Contains(out, html.EscapeString(v)) {
			t.Fatalf("%q is not in the rows escaped:\n%s", v, out)
		}
	}
	if strings.Count(out, "<") != strings.Count(string(instanceRows([]instanceRow{{ID: 7, Status: "running", Err: "x", Written: "1 B"}}, true, true)), "<") {
		t.Fatalf("the values added elements:\n%s", out)
	}

	// And on the page, a hostile owner and image name stay text.
	f := newFake()
	f.images[1] = store.Image{ID: 1, Name: hostile[1], Status: store.ImageReady}
	f.instances[8] = store.Instance{ID: 8, ImageID: 1, Owner: hostile[0], Status: store.InstanceRunning}
	srv := serve(t, f, false)
	up := newBrowser(t, srv)
	up.signIn(uploadToken)
	for _, path := range []string{"/ui/instances", "/ui/instances/8", "/ui/images"} {
		page := up.get(path)
		if strings.Contains(page.body, "<script>alert") || strings.Contains(page.body, "<img src=x") {
			t.Fatalf("%s carries the hostile markup:\n%s", path, page.body)
		}
	}
}

// The OAuth sign-in's end (called by package auth at /oauth_callback)
// makes a session; signing out revokes the token it minted, while a
// pasted token stays its holder's.
func TestOAuthSessionRevokesItsTokenAtSignOut(t *testing.T) {
	f := newFake()
	f.tokens["sdr_minted"] = auth.Principal{Email: "ada@example.com", TokenID: 77, Kind: store.TokenOAuth}
	c, err := New(f.options())
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	c.oauthSignedIn(w, httptest.NewRequest(http.MethodGet, "https://sindri.example/oauth_callback?code=c&state=ui_x", nil), "sdr_minted", store.Token{ID: 77})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/ui/" {
		t.Fatalf("after the OAuth sign-in: %d to %q", w.Code, w.Header().Get("Location"))
	}
	session := w.Result().Cookies()[0]
	if session.Name != sessionCookie || !session.Secure || !session.HttpOnly || session.SameSite != http.SameSiteLaxMode {
		t.Fatalf("session cookie over HTTPS: %s", session)
	}
	r := httptest.NewRequest(http.MethodGet, "/ui/", nil)
	r.AddCookie(session)
	w = httptest.NewRecorder()
	c.ServeHTTP(w, r)
	csrfToken := csrf(t, w.Body.String())
	r = httptest.NewRequest(http.MethodPost, "/ui/logout", strings.NewReader(url.Values{"csrf": {csrfToken}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.AddCookie(session)
	w = httptest.NewRecorder()
	c.ServeHTTP(w, r)
	if w.Code != http.StatusSeeOther || len(f.revoked) != 1 || f.revoked[0] != 77 {
		t.Fatalf("sign-out: %d, revoked %v, want token 77", w.Code, f.revoked)
	}

	// A pasted token is not revoked.
	srv := serve(t, f, false)
	ada := newBrowser(t, srv)
	token := ada.signIn(adaToken)
	ada.post("/ui/logout", url.Values{"csrf": {token}})
	if len(f.revoked) != 1 {
		t.Fatalf("signing out revoked a pasted token: %v", f.revoked)
	}
}
