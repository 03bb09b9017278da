package spec

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/auth/authtest"
	"github.com/sindri-db/sindri/pkg/auth/logincode"
)

// startOAuthServer starts sindrid, then restarts it with an [oauth]
// section whose redirect_url is its own /oauth_callback (the address is
// known only once startServer picked it) and whose endpoints are p's;
// extra goes into that section too.
func startOAuthServer(t *testing.T, p *authtest.Provider, extra ...string) *server {
	t.Helper()
	s := startServer(t, "")
	if err := s.stop(); err != nil {
		t.Fatalf("sindrid exit after SIGTERM: %v", err)
	}
	redirect := "http://" + s.http + "/oauth_callback"
	p.SetRedirectURI(redirect)
	f, err := os.OpenFile(s.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "\n[oauth]\nclient_id = %q\nclient_secret = %q\nredirect_url = %q\nauth_url = %q\ntoken_url = %q\nuserinfo_url = %q\n%s\n",
		authtest.ClientID, authtest.ClientSecret, redirect, p.AuthURL(), p.TokenURL(), p.UserinfoURL(), strings.Join(extra, "\n"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s.stop = start(t, s.config, s.http)
	return s
}

// browserFrom is a browser (redirects followed, cookies kept) whose
// connections come from the loopback address from ("" for the default).
func browserFrom(t *testing.T, from string) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := httpFrom(from)
	c.Jar = jar
	return c
}

// httpFrom is an HTTP client whose connections come from the loopback
// address from: any 127.0.0.0/8 address reaches sindrid on 127.0.0.1, so
// a test can play clients on several machines.
func httpFrom(from string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if from != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
		tr.DialContext = d.DialContext
	}
	return &http.Client{Transport: tr, Timeout: 90 * time.Second}
}

// browserPage is the page a browser ended on.
type browserPage struct {
	status int
	body   string
	url    *url.URL
}

func (p browserPage) String() string {
	return fmt.Sprintf("%d at %s: %s", p.status, p.url, strings.TrimSpace(p.body))
}

func (p browserPage) confirmation() bool {
	return strings.Contains(p.body, `name="decision" value="confirm"`)
}

// browse opens u in browser and follows it across sindrid and the
// provider to the page it ends on.
func browse(t *testing.T, browser *http.Client, u string) browserPage {
	t.Helper()
	resp, err := browser.Get(u)
	if err != nil {
		t.Fatalf("browser: GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return browserPage{status: resp.StatusCode, body: string(body), url: resp.Request.URL}
}

var hiddenField = regexp.MustCompile(`<input type="hidden" name="([a-z]+)" value="([^"]*)">`)

// decide submits the confirmation page's form with decision, as a browser
// does: its hidden fields, to the form's action relative to the page.
func decide(t *testing.T, browser *http.Client, p browserPage, decision string) browserPage {
	t.Helper()
	form := url.Values{"decision": {decision}}
	for _, m := range hiddenField.FindAllStringSubmatch(p.body, -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	if !strings.Contains(p.body, `<form method="post" action="oauth_callback">`) {
		t.Fatalf("the confirmation page has no form posting to oauth_callback:\n%s", p.body)
	}
	action, _ := p.url.Parse("oauth_callback")
	resp, err := browser.PostForm(action.String(), form)
	if err != nil {
		t.Fatalf("browser: POST %s: %v", action, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return browserPage{status: resp.StatusCode, body: string(body), url: resp.Request.URL}
}

// authenticate runs `sindri authenticate --no-browser` as u, plays the
// browser with the URL it prints (following the redirects across sindrid
// and the provider), confirms the login on the confirmation page once it
// has checked that the page shows the code the command printed, and
// returns the command's stdout, stderr and exit code, and the status of
// the page the browser ended on.
func (u *cliUser) authenticate(t *testing.T) (stdout, stderr string, code, page int) {
	t.Helper()
	cmd := exec.Command(u.bin, "authenticate", "--no-browser")
	cmd.Env = u.env
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killer := time.AfterFunc(100*time.Second, func() { cmd.Process.Kill() })
	defer killer.Stop()

	var out strings.Builder
	sc := bufio.NewScanner(pipe)
	loginURL, loginCode := "", ""
	for loginURL == "" && sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if m := codeLine.FindStringSubmatch(line); m != nil {
			loginCode = m[1]
		}
		if strings.HasPrefix(strings.TrimSpace(line), "http") {
			loginURL = strings.TrimSpace(line)
		}
	}
	if loginURL != "" {
		if !strings.HasPrefix(loginURL, "http://"+cliServerAddr(u)+"/authenticate?state=") {
			t.Errorf("login URL %q, want http://%s/authenticate?state=…", loginURL, cliServerAddr(u))
		}
		if loginCode == "" {
			t.Errorf("sindri authenticate printed no login code before the URL:\n%s", out.String())
		}
		browser := browserFrom(t, "")
		p := browse(t, browser, loginURL)
		if p.confirmation() {
			// What the person checks before confirming: the code their
			// terminal shows, and the command's address.
			if loginCode == "" || !strings.Contains(p.body, loginCode) || !strings.Contains(p.body, "127.0.0.1") {
				t.Errorf("the confirmation page does not show the code %q and the address 127.0.0.1:\n%s", loginCode, p.body)
			}
			p = decide(t, browser, p, "confirm")
		}
		page = p.status
		t.Logf("browser ended on %s", p)
	}
	rest, _ := io.ReadAll(pipe)
	out.Write(rest)
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("sindri authenticate: %v", err)
	}
	if loginURL == "" {
		t.Fatalf("sindri authenticate printed no URL (exit %d)\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
	}
	return out.String(), errOut.String(), code, page
}

// codeLine is the line of `sindri authenticate` with the login code.
var codeLine = regexp.MustCompile(`^Login code: ([A-Z2-7]{4}-[A-Z2-7]{4}) `)

// cliServerAddr is the host:port of the SINDRI_URL in u's environment.
func cliServerAddr(u *cliUser) string {
	for _, e := range u.env {
		if v, ok := strings.CutPrefix(e, "SINDRI_URL=http://"); ok {
			return v
		}
	}
	return ""
}

// answer is a response to a waiting POST /access_tokens.
type answer struct {
	status int
	header http.Header
	body   string
	err    error
}

// draupnirAccessToken sends, from the loopback address from, the request a
// Draupnir 5.3 client's `draupnir authenticate` sends (its client's
// CreateAccessToken: google/jsonapi's document of a struct without a
// primary field, hence "type":"", and its do(): Content-Type, the bearer
// of its stored refresh token, empty before the first login, and its
// version), and returns the answer once it comes.
func draupnirAccessToken(ctx context.Context, s *server, from, state string) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		body := `{"data":{"type":"","attributes":{"state":"` + state + `"}}}` + "\n"
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.http+"/access_tokens", strings.NewReader(body))
		if err != nil {
			ch <- answer{err: err}
			return
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer ")
		req.Header.Set("Draupnir-Version", "5.3.6")
		resp, err := httpFrom(from).Do(req)
		if err != nil {
			ch <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		ch <- answer{status: resp.StatusCode, header: resp.Header, body: string(data)}
	}()
	return ch
}

func receiveAnswer(t *testing.T, ch <-chan answer) answer {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("POST /access_tokens: %v", a.err)
		}
		return a
	case <-time.After(90 * time.Second):
		t.Fatal("POST /access_tokens did not answer")
	}
	return answer{}
}

func TestAuthenticate(t *testing.T) {
	p := authtest.NewProvider(t)
	s := startOAuthServer(t, p, "max_pending_logins = 20", "max_pending_logins_per_address = 3")
	serverURL := "http://" + s.http

	t.Run("login", func(t *testing.T) {
		p.LoginEmail("ada@example.com")
		u := newCLIUser(t, serverURL, "")
		out, errOut, code, page := u.authenticate(t)
		if code != 0 {
			t.Fatalf("sindri authenticate: exit %d, want 0\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if page != http.StatusOK {
			t.Errorf("browser's last page: %d, want 200", page)
		}
		if errOut != "" {
			t.Errorf("stderr %q, want nothing", errOut)
		}
		if !strings.Contains(out, "Logged in") {
			t.Errorf("stdout %q, want a line saying the login worked", out)
		}
		path := filepath.Join(u.configDir(), "config.json")
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct{ URL, Token string }
		if err := json.Unmarshal(data, &cfg); err != nil {
			t.Fatalf("%s: %v\n%s", path, err, data)
		}
		if cfg.Token == "" || cfg.Token == s.secret {
			t.Fatalf("%s: token %q, want the token the server issued", path, cfg.Token)
		}
		if strings.Contains(out, cfg.Token) {
			t.Errorf("stdout shows the token: %q", out)
		}
		// The stored token works (SINDRI_TOKEN is unset).
		u.ok("instances", "list")
		// And the API accepts it as the bearer.
		if status, body := s.call(t, "GET", "/instances", cfg.Token, nil); status != http.StatusOK {
			t.Errorf("GET /instances with the stored token: %d %s", status, body)
		}

		// An administrator sees the login and ends it: the token stops
		// working at once.
		list, err := exec.Command(sindrid, "token", "list", "--all", "-config", s.config).CombinedOutput()
		if err != nil || !strings.Contains(string(list), "oauth") || !strings.Contains(string(list), "ada@example.com") || strings.Contains(string(list), cfg.Token) {
			t.Fatalf("sindrid token list --all: %v\n%s", err, list)
		}
		if out, err := exec.Command(sindrid, "token", "revoke", "--email", "ADA@example.com", "-config", s.config).CombinedOutput(); err != nil || !strings.Contains(string(out), "1 login(s)") {
			t.Fatalf("sindrid token revoke --email: %v\n%s", err, out)
		}
		status, body := s.call(t, "GET", "/instances", cfg.Token, nil)
		expectError(t, "a revoked login", status, body, 401, "unauthorized")
		out2, err := exec.Command(sindrid, "token", "revoke", "--email", "ada@example.com", "-config", s.config).CombinedOutput()
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 || !strings.Contains(string(out2), "no unrevoked login") {
			t.Fatalf("revoking again: %v, want exit status 1 saying there is no login\n%s", err, out2)
		}
		err = exec.Command(sindrid, "token", "revoke", "--id", "1", "--email", "ada@example.com", "-config", s.config).Run()
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 {
			t.Fatalf("revoke with two selectors: %v, want exit status 2", err)
		}
	})

	t.Run("domain refused", func(t *testing.T) {
		p.LoginEmail("mallory@elsewhere.org")
		u := newCLIUser(t, serverURL, "")
		out, errOut, code, page := u.authenticate(t)
		if code != 1 {
			t.Fatalf("sindri authenticate: exit %d, want 1\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if page != http.StatusForbidden {
			t.Errorf("browser's last page: %d, want 403", page)
		}
		line := strings.TrimSuffix(errOut, "\n")
		if line == "" || strings.Contains(line, "\n") || !strings.HasPrefix(line, "sindri: ") {
			t.Errorf("stderr %q, want one line starting with \"sindri: \"", errOut)
		}
		for _, want := range []string{"E-mail domain not trusted", "mallory@elsewhere.org", "@example.com"} {
			if !strings.Contains(line, want) {
				t.Errorf("stderr %q, want it to contain %q", line, want)
			}
		}
		if _, err := os.Stat(filepath.Join(u.configDir(), "config.json")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("config file after a refused login: %v, want none", err)
		}
	})

	// A Draupnir 5.3 client logs in: it prints no code, and its user
	// confirms by the address and the time.
	t.Run("draupnir client", func(t *testing.T) {
		p.LoginEmail("grace@example.com")
		state := "1298498081" // rand.Int31() as an unseeded Draupnir client picks it
		waiting := draupnirAccessToken(context.Background(), s, "", state)
		browser := browserFrom(t, "")
		page := browse(t, browser, serverURL+"/authenticate?state="+state)
		if !page.confirmation() {
			t.Fatalf("after signing in: %s, want the confirmation page", page)
		}
		for _, want := range []string{"grace@example.com", "127.0.0.1", "same address", logincode.For(state)} {
			if !strings.Contains(page.body, want) {
				t.Errorf("the confirmation page does not say %q:\n%s", want, page.body)
			}
		}
		if done := decide(t, browser, page, "confirm"); done.status != http.StatusOK || !strings.Contains(done.body, "Logged in") {
			t.Fatalf("confirming: %s", done)
		}
		a := receiveAnswer(t, waiting)
		if a.status != http.StatusCreated || a.header.Get("Content-Type") != "application/json" {
			t.Fatalf("POST /access_tokens: %d %s %s", a.status, a.header.Get("Content-Type"), a.body)
		}
		// Draupnir decodes the body as golang.org/x/oauth2's Token and
		// sends its refresh_token as the bearer from then on.
		var tok struct {
			AccessToken  string    `json:"access_token"`
			TokenType    string    `json:"token_type"`
			RefreshToken string    `json:"refresh_token"`
			Expiry       time.Time `json:"expiry"`
		}
		if err := json.Unmarshal([]byte(a.body), &tok); err != nil || tok.RefreshToken == "" || tok.TokenType != "Bearer" || tok.Expiry.IsZero() {
			t.Fatalf("token answer %s: %v", a.body, err)
		}
		if status, body := s.call(t, "GET", "/instances", tok.RefreshToken, nil, "Draupnir-Version", "5.3.6"); status != http.StatusOK {
			t.Errorf("GET /instances as Draupnir with the refresh_token: %d %s", status, body)
		}
	})

	// Issue 12's theft: the attacker waits on a state and sends a
	// colleague the link. The colleague signs in, is shown who is asking,
	// and refuses; the attacker holds nothing, whatever they try.
	t.Run("stolen login link", func(t *testing.T) {
		p.LoginEmail("victim@example.com")
		state := "attacker-" + authtest.Random()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stolen := draupnirAccessToken(ctx, s, "127.0.0.2", state)
		time.Sleep(200 * time.Millisecond) // the attacker waits first (the callback would wait for them anyway)

		victim := browserFrom(t, "")
		page := browse(t, victim, serverURL+"/authenticate?state="+state)
		if !page.confirmation() {
			t.Fatalf("the victim's page after signing in: %s", page)
		}
		for _, want := range []string{"127.0.0.2", "not from the command's address", "Only confirm if you started this login yourself", logincode.For(state)} {
			if !strings.Contains(page.body, want) {
				t.Errorf("the confirmation page does not say %q:\n%s", want, page.body)
			}
		}
		attacker := browserFrom(t, "127.0.0.2")
		if got := browse(t, attacker, page.url.String()); got.status != http.StatusForbidden {
			t.Errorf("the victim's callback URL replayed by the attacker: %s, want 403", got)
		}
		if got := decide(t, attacker, page, "confirm"); got.status != http.StatusForbidden {
			t.Errorf("the victim's form posted by the attacker: %s, want 403", got)
		}
		select {
		case a := <-stolen:
			t.Fatalf("the attacker's call answered before the victim decided: %d %s %v", a.status, a.body, a.err)
		case <-time.After(200 * time.Millisecond):
		}
		if done := decide(t, victim, page, "refuse"); done.status != http.StatusOK || !strings.Contains(done.body, "received nothing") {
			t.Errorf("refusing: %s", done)
		}
		a := receiveAnswer(t, stolen)
		if a.status != http.StatusForbidden || !strings.Contains(a.body, "oauth_login_refused") || strings.Contains(a.body, "sdr_") {
			t.Errorf("the attacker's answer: %d %s, want 403 oauth_login_refused", a.status, a.body)
		}
		list, err := exec.Command(sindrid, "token", "list", "--all", "-config", s.config).CombinedOutput()
		if err != nil || strings.Contains(string(list), "victim@example.com") {
			t.Errorf("sindrid token list --all: %v, want no token of victim@example.com\n%s", err, list)
		}
	})

	// A flood of waits from one address is refused beyond its bound, and
	// a login from another address goes through meanwhile.
	t.Run("flood from one address", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		flood := make(chan answer, 4)
		for range 4 {
			go func() { flood <- <-draupnirAccessToken(ctx, s, "127.0.0.3", authtest.Random()) }()
		}
		a := receiveAnswer(t, flood)
		if a.status != http.StatusTooManyRequests || !strings.Contains(a.body, "oauth_too_many_logins") || !strings.Contains(a.body, "127.0.0.3") {
			t.Fatalf("the fourth wait from one address: %d %s, want 429 oauth_too_many_logins naming 127.0.0.3", a.status, a.body)
		}
		select {
		case a := <-flood:
			t.Fatalf("a second of four waits answered: %d %s %v", a.status, a.body, a.err)
		case <-time.After(200 * time.Millisecond):
		}
		p.LoginEmail("heidi@example.com")
		u := newCLIUser(t, serverURL, "")
		if out, errOut, code, _ := u.authenticate(t); code != 0 {
			t.Fatalf("a login from 127.0.0.1 during the flood: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
	})

	t.Run("usage", func(t *testing.T) {
		u := newCLIUser(t, "", "")
		u.fails(2, []string{"no server URL"}, "authenticate", "--no-browser")
		u = newCLIUser(t, serverURL, "")
		u.fails(2, []string{"unknown flag"}, "authenticate", "--bogus")
	})
}
