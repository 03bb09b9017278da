package auth_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/auth/logincode"
)

// noTheft fails the test now, saying whether the attacker's waiting call
// received a token.
func noTheft(t *testing.T, waiting <-chan response, why string) {
	t.Helper()
	select {
	case r := <-waiting:
		if r.status == http.StatusCreated {
			t.Fatalf("%s, and the attacker received the victim's token: %s", why, r)
		}
	case <-time.After(time.Second):
	}
	t.Fatal(why)
}

// notAnswered fails if the waiting call has answered.
func notAnswered(t *testing.T, waiting <-chan response, what string) {
	t.Helper()
	select {
	case r := <-waiting:
		t.Fatalf("%s: the waiting call answered %s", what, r)
	case <-time.After(100 * time.Millisecond):
	}
}

// The attack of issue 12: the attacker waits on a state of their choosing
// and sends a colleague the link. Whatever the colleague does short of
// confirming (which the page tells them not to), the attacker's call
// receives no token.
func TestLoginTheft(t *testing.T) {
	e := newEnv(t)
	attackerAPI := clientFrom("127.0.0.2")
	attackerBrowser := newBrowser(t, "127.0.0.2")
	e.prov.LoginEmail("victim@example.com")
	state := "1298498081" // chosen by the attacker (a Draupnir client's usual first state)
	link := e.srv.URL + "/authenticate?state=" + state

	c, cancel := context.WithCancel(ctx)
	defer cancel()
	waiting := e.waitWith(c, attackerAPI, state)

	// The victim opens the link and signs in with the provider.
	page := e.browse(state)
	if !isConfirmPage(page) {
		noTheft(t, waiting, fmt.Sprintf("the victim's page after signing in: %s, want the confirmation page", page))
	}
	body := string(page.body)
	for _, want := range []string{
		"victim@example.com",
		"127.0.0.2",          // the attacker's address
		logincode.For(state), // a code the victim's terminal does not show
		"<strong>127.0.0.1</strong>, not from the command's address", // this browser is elsewhere
		"Only confirm if you started this login yourself",
		"somebody may have sent you this link",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the confirmation page does not say %q:\n%s", want, body)
		}
	}
	notAnswered(t, waiting, "after the victim signed in")

	// The victim reloads the page: the same page, nothing handed out.
	if r := e.get(page.url.RequestURI()); !isConfirmPage(r) {
		t.Errorf("reload: %s", r)
	}
	notAnswered(t, waiting, "after a reload")

	// The attacker confirms with the page's form, copied somehow, but
	// without the victim's cookie: refused.
	form := formOf(t, page)
	if r := e.postForm(attackerBrowser, page, form, "confirm"); r.status != http.StatusForbidden {
		t.Errorf("the attacker's confirmation: %s, want 403", r)
	}
	// A page elsewhere makes the victim's browser post the form without
	// its secret (the cookie goes along): refused.
	forged := url.Values{"state": {state}, "waiter": {form.Get("waiter")}}
	if r := e.postForm(e.browser, page, forged, "confirm"); r.status != http.StatusForbidden {
		t.Errorf("a confirmation without the form's secret: %s, want 403", r)
	}
	wrong := url.Values{"state": {state}, "waiter": {form.Get("waiter")}, "csrf": {otherFirst(form.Get("csrf"))}}
	if r := e.postForm(e.browser, page, wrong, "confirm"); r.status != http.StatusForbidden {
		t.Errorf("a confirmation with a wrong secret: %s, want 403", r)
	}
	// The attacker opens the link in their own browser, or replays the
	// victim's callback URL there: refused.
	if code := apiErrorOf(t, do(t, attackerBrowser, mustRequest(t, http.MethodGet, link)), http.StatusConflict); code != "oauth_state_used" {
		t.Errorf("the link in a second browser: code %q", code)
	}
	if r := do(t, attackerBrowser, mustRequest(t, http.MethodGet, page.url.String())); r.status != http.StatusForbidden {
		t.Errorf("the callback URL in another browser: %s, want 403", r)
	}
	notAnswered(t, waiting, "after the attacker's tries")
	if n := e.tokenRows(); n != 0 {
		t.Fatalf("%d tokens minted before any confirmation", n)
	}

	// The victim refuses: the attacker is told so, and holds nothing.
	r := e.decide(e.browser, page, "refuse")
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "received nothing") {
		t.Errorf("refusing: %s", r)
	}
	if code := apiErrorOf(t, receive(t, waiting), http.StatusForbidden); code != "oauth_login_refused" {
		t.Errorf("the attacker's answer: code %q, want oauth_login_refused", code)
	}
	// Confirming after refusing changes nothing.
	if r := e.decide(e.browser, page, "confirm"); r.status == http.StatusOK {
		t.Errorf("a confirmation after the refusal: %s", r)
	}
	if n := e.tokenRows(); n != 0 {
		t.Errorf("%d tokens minted, want 0", n)
	}
}

// A victim who signs in and walks away: the attacker's call times out.
func TestLoginTheftIgnored(t *testing.T) {
	const wait = 2 * time.Second
	e := newEnv(t, func(o *auth.Options) { o.OAuth.WaitTimeout = wait })
	e.prov.LoginEmail("victim@example.com")
	state := randomString()
	waiting := e.waitWith(ctx, clientFrom("127.0.0.2"), state)
	if page := e.browse(state); !isConfirmPage(page) {
		noTheft(t, waiting, fmt.Sprintf("the victim's page after signing in: %s, want the confirmation page", page))
	}
	if code := apiErrorOf(t, receive(t, waiting), http.StatusGatewayTimeout); code != "oauth_timeout" {
		t.Errorf("code %q", code)
	}
	if n := e.tokenRows(); n != 0 {
		t.Errorf("%d tokens minted, want 0", n)
	}
}

// The page names one waiting client; if it goes away, a confirmation
// hands out nothing (a new waiter on the state would be a new login).
func TestConfirmAfterClientLeft(t *testing.T) {
	e := newEnv(t)
	e.prov.LoginEmail("jo@example.com")
	state := randomString()
	c, cancel := context.WithCancel(ctx)
	e.waitWith(c, http.DefaultClient, state)
	page := e.browse(state)
	if !isConfirmPage(page) {
		t.Fatalf("page: %s", page)
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for auth.PendingLogins(e.auth) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the abandoned login is still pending")
		}
		time.Sleep(time.Millisecond)
	}
	// Another client now waits on the same state.
	c2, cancel2 := context.WithCancel(ctx)
	defer cancel2()
	other := e.waitWith(c2, clientFrom("127.0.0.2"), state)
	if r := e.decide(e.browser, page, "confirm"); r.status != http.StatusGone && r.status != http.StatusForbidden {
		t.Errorf("confirming for a client that left: %s", r)
	}
	notAnswered(t, other, "after a confirmation meant for another client")
	if n := e.tokenRows(); n != 0 {
		t.Errorf("%d tokens minted, want 0", n)
	}
}

func mustRequest(t *testing.T, method, u string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// The login's cookie: only for the server, never for scripts, sent on the
// provider's redirect back (SameSite=Lax).
func TestLoginCookie(t *testing.T) {
	e := newEnv(t)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r := do(t, noFollow, mustRequest(t, http.MethodGet, e.srv.URL+"/authenticate?state=s-1"))
	if r.status != http.StatusFound {
		t.Fatalf("%s", r)
	}
	resp := http.Response{Header: r.header}
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("cookies %v, want one", cookies)
	}
	c := cookies[0]
	if !strings.HasPrefix(c.Name, "sindri_login_") || len(c.Value) < 20 || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.MaxAge <= 0 {
		t.Errorf("cookie %+v", c)
	}
	if c.Secure {
		t.Error("a Secure cookie over plain HTTP would never come back")
	}
}

// A browser that opens the link on another host name than the redirect
// URL's is first sent there, so that the cookie reaches the callback.
func TestCanonicalHost(t *testing.T) {
	e := newEnv(t)
	u, _ := url.Parse(e.srv.URL)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	other := "http://localhost:" + u.Port() + "/authenticate?state=s-1"
	r := do(t, noFollow, mustRequest(t, http.MethodGet, other))
	want := e.srv.URL + "/authenticate?redirected=1&state=s-1"
	if r.status != http.StatusFound || r.header.Get("Location") != want {
		t.Fatalf("GET %s: %s to %q, want 302 to %q", other, r, r.header.Get("Location"), want)
	}
	if len(r.header.Values("Set-Cookie")) != 0 {
		t.Error("a cookie set on the wrong host")
	}
	// Sent over once, a browser is not sent again (no loop).
	r = do(t, noFollow, mustRequest(t, http.MethodGet, other+"&redirected=1"))
	if r.status != http.StatusFound || !strings.HasPrefix(r.header.Get("Location"), e.prov.AuthURL()) {
		t.Errorf("after the redirect: %s to %q, want the provider", r, r.header.Get("Location"))
	}
	// The whole login through the other host name works.
	e.prov.LoginEmail("kim@example.com")
	state := randomString()
	waiting := e.wait(state)
	page := do(t, e.browser, mustRequest(t, http.MethodGet, "http://localhost:"+u.Port()+"/authenticate?state="+state))
	if !isConfirmPage(page) {
		t.Fatalf("page: %s", page)
	}
	e.decide(e.browser, page, "confirm")
	tokenOf(t, receive(t, waiting))
}

// A flood of logins from one address cannot evict or block a login from
// another: each address has at most MaxPendingPerAddress, and a full table
// refuses newcomers without dropping anyone.
func TestPendingBoundedPerAddress(t *testing.T) {
	const max, perAddr = 7, 3
	e := newEnv(t, func(o *auth.Options) { o.OAuth.MaxPending, o.OAuth.MaxPendingPerAddress = max, perAddr })
	c, cancel := context.WithCancel(ctx)
	defer cancel()

	// 127.0.0.3 waits on as many logins as it may; one more is refused.
	flooder := clientFrom("127.0.0.3")
	var flood []string
	for range perAddr {
		s := randomString()
		flood = append(flood, s)
		e.waitWith(c, flooder, s)
	}
	r := receive(t, e.startWait(c, flooder, randomString()))
	if code := apiErrorOf(t, r, http.StatusTooManyRequests); code != "oauth_too_many_logins" {
		t.Errorf("a wait beyond the bound: code %q", code)
	}
	if !strings.Contains(string(r.body), "127.0.0.3") || r.header.Get("Retry-After") == "" {
		t.Errorf("the refusal names no address or has no Retry-After: %s %v", r, r.header)
	}
	// So is a flood of /authenticate from that address.
	noFollow := clientFrom("127.0.0.3")
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for range 3 * max {
		r := do(t, noFollow, mustRequest(t, http.MethodGet, e.srv.URL+"/authenticate?state="+randomString()))
		if code := apiErrorOf(t, r, http.StatusTooManyRequests); code != "oauth_too_many_logins" {
			t.Fatalf("/authenticate beyond the bound: code %q", code)
		}
	}

	// Meanwhile a login from 127.0.0.1 goes through.
	e.prov.LoginEmail("lee@example.com")
	state := randomString()
	waiting := e.wait(state)
	e.login(state)
	tokenOf(t, receive(t, waiting))

	// Two more addresses fill the table: then a newcomer is refused, and
	// nobody waiting was dropped.
	for _, from := range []string{"127.0.0.4", "127.0.0.5"} {
		for range perAddr {
			s := randomString()
			flood = append(flood, s)
			if len(flood) > max {
				break
			}
			e.waitWith(c, clientFrom(from), s)
		}
	}
	if n := auth.PendingLogins(e.auth); n != max {
		t.Fatalf("%d logins pending, want %d", n, max)
	}
	r = receive(t, e.startWait(c, clientFrom("127.0.0.6"), randomString()))
	if code := apiErrorOf(t, r, http.StatusTooManyRequests); code != "oauth_too_many_logins" || !strings.Contains(string(r.body), "in progress on this server") {
		t.Errorf("a newcomer to a full table: %s", r)
	}
	for _, s := range flood[:max] {
		if !auth.Waiting(e.auth, s) {
			t.Errorf("a waiting login was dropped")
		}
	}
}

// X-Forwarded-For is anybody's to send: ignored unless the connection
// comes from a trusted proxy, whose word then names the client.
func TestClientAddress(t *testing.T) {
	t.Run("not trusted", func(t *testing.T) {
		e := newEnv(t, func(o *auth.Options) { o.OAuth.MaxPending, o.OAuth.MaxPendingPerAddress = 10, 2 })
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		var last response
		for i := range 3 {
			ch := e.startWaitHeader(c, randomString(), "X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i+1))
			select {
			case last = <-ch:
			case <-time.After(500 * time.Millisecond):
			}
		}
		if code := apiErrorOf(t, last, http.StatusTooManyRequests); code != "oauth_too_many_logins" || !strings.Contains(string(last.body), "127.0.0.1") {
			t.Errorf("forged X-Forwarded-For: %s, want a refusal for 127.0.0.1", last)
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		e := newEnv(t, func(o *auth.Options) {
			o.OAuth.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		})
		e.prov.LoginEmail("max@example.com")
		state := randomString()
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		waiting := e.startWaitHeader(c, state, "X-Forwarded-For", "192.0.2.77, 203.0.113.9")
		deadline := time.Now().Add(10 * time.Second)
		for !auth.Waiting(e.auth, state) {
			if time.Now().After(deadline) {
				t.Fatal("not waiting")
			}
			time.Sleep(time.Millisecond)
		}
		page := e.browse(state)
		if !isConfirmPage(page) || !strings.Contains(string(page.body), "203.0.113.9") || strings.Contains(string(page.body), "192.0.2.77") {
			t.Errorf("the page names the wrong client (want the nearest untrusted hop, 203.0.113.9):\n%s", page.body)
		}
		e.decide(e.browser, page, "confirm")
		tokenOf(t, receive(t, waiting))
	})
}

// startWaitHeader is startWait from the default client with one more
// header.
func (e *env) startWaitHeader(c context.Context, state, key, value string) <-chan response {
	ch := make(chan response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(c, http.MethodPost, e.srv.URL+"/access_tokens", strings.NewReader(accessTokensBody(state)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(key, value)
		resp, err := http.DefaultClient.Do(req)
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

// A login link opened in a second browser is refused there; the first
// browser finishes it.
func TestSecondBrowser(t *testing.T) {
	e := newEnv(t)
	e.prov.LoginEmail("oli@example.com")
	state := randomString()
	waiting := e.wait(state)
	noFollow := func(c *http.Client) *http.Client {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		return c
	}
	link := e.srv.URL + "/authenticate?state=" + state
	first := noFollow(newBrowser(t, ""))
	r := do(t, first, mustRequest(t, http.MethodGet, link))
	if r.status != http.StatusFound {
		t.Fatalf("first browser: %s", r)
	}
	consent := r.header.Get("Location")
	if code := apiErrorOf(t, do(t, noFollow(newBrowser(t, "127.0.0.2")), mustRequest(t, http.MethodGet, link)), http.StatusConflict); code != "oauth_login_other_browser" {
		t.Errorf("second browser: code %q", code)
	}
	// The first browser may open the link again (a reload).
	if r := do(t, first, mustRequest(t, http.MethodGet, link)); r.status != http.StatusFound {
		t.Errorf("the first browser again: %s", r)
	}
	first.CheckRedirect = nil
	page := do(t, first, mustRequest(t, http.MethodGet, consent))
	if !isConfirmPage(page) {
		t.Fatalf("page: %s", page)
	}
	e.decide(first, page, "confirm")
	tokenOf(t, receive(t, waiting))
}

// The Draupnir 5.3 client's exact request: "type":"" and its headers.
func TestDraupnirAccessTokenRequest(t *testing.T) {
	e := newEnv(t)
	e.prov.LoginEmail("nia@example.com")
	state := "1298498081"
	ch := make(chan response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/access_tokens",
			strings.NewReader(`{"data":{"type":"","attributes":{"state":"`+state+`"}}}`+"\n"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer ")
		req.Header.Set("Draupnir-Version", "5.3.6")
		ch <- do(e.t, http.DefaultClient, req)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !auth.Waiting(e.auth, state) {
		if time.Now().After(deadline) {
			t.Fatal("the Draupnir request is not waiting")
		}
		time.Sleep(time.Millisecond)
	}
	e.login(state)
	tok := tokenOf(t, receive(t, ch))
	if p := e.mustAuthenticate(tok.RefreshToken); p.Email != "nia@example.com" {
		t.Errorf("principal %+v", p)
	}
}

// otherFirst returns s with its first character changed, so that it is
// never s itself.
func otherFirst(s string) string {
	if strings.HasPrefix(s, "A") {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}
