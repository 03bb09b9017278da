package spec

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/auth/authtest"
)

// startOAuthServer starts sindrid, then restarts it with an [oauth]
// section whose redirect_url is its own /oauth_callback (the address is
// known only once startServer picked it) and whose endpoints are p's.
func startOAuthServer(t *testing.T, p *authtest.Provider) *server {
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
	fmt.Fprintf(f, "\n[oauth]\nclient_id = %q\nclient_secret = %q\nredirect_url = %q\nauth_url = %q\ntoken_url = %q\nuserinfo_url = %q\n",
		authtest.ClientID, authtest.ClientSecret, redirect, p.AuthURL(), p.TokenURL(), p.UserinfoURL())
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s.stop = start(t, s.config, s.http)
	return s
}

// authenticate runs `sindri authenticate --no-browser` as u, plays the
// browser with the URL it prints (following the redirects across sindrid
// and the provider), and returns the command's stdout, stderr and exit
// code, and the status of the page the browser ended on.
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
	loginURL := ""
	for loginURL == "" && sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if strings.HasPrefix(strings.TrimSpace(line), "http") {
			loginURL = strings.TrimSpace(line)
		}
	}
	if loginURL != "" {
		if !strings.HasPrefix(loginURL, "http://"+cliServerAddr(u)+"/authenticate?state=") {
			t.Errorf("login URL %q, want http://%s/authenticate?state=…", loginURL, cliServerAddr(u))
		}
		browser := &http.Client{Timeout: 30 * time.Second}
		resp, err := browser.Get(loginURL)
		if err != nil {
			t.Errorf("browser: GET %s: %v", loginURL, err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			page = resp.StatusCode
			t.Logf("browser ended on %s: %d %s", resp.Request.URL, resp.StatusCode, bytes.TrimSpace(body))
		}
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

// cliServerAddr is the host:port of the SINDRI_URL in u's environment.
func cliServerAddr(u *cliUser) string {
	for _, e := range u.env {
		if v, ok := strings.CutPrefix(e, "SINDRI_URL=http://"); ok {
			return v
		}
	}
	return ""
}

func TestAuthenticate(t *testing.T) {
	p := authtest.NewProvider(t)
	s := startOAuthServer(t, p)
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

	t.Run("usage", func(t *testing.T) {
		u := newCLIUser(t, "", "")
		u.fails(2, []string{"no server URL"}, "authenticate", "--no-browser")
		u = newCLIUser(t, serverURL, "")
		u.fails(2, []string{"unknown flag"}, "authenticate", "--bogus")
	})
}
