package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/version"
)

func TestVersionHeader(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	h := s.Handler()
	for _, tc := range []struct {
		name     string
		values   []string // nil: no header
		status   int
		code     string
		mention  string // the detail names this
		draupnir bool   // answered in Draupnir's format
	}{
		{name: "missing", values: nil, status: 400, code: CodeMissingAPIVersionHeader, mention: version.API},
		{name: "newer minor", values: []string{"5.9.0"}, status: 400, code: CodeInvalidAPIVersion, mention: "5.9.0"},
		{name: "two headers", values: []string{"5.4.0", "5.3.0"}, status: 400, code: CodeInvalidAPIVersion},
		// Any other value is answered in Draupnir's format: only Draupnir's
		// clients send one.
		{name: "old major", values: []string{"4.9.0"}, status: 400, code: CodeInvalidAPIVersion, mention: "4.9.0", draupnir: true},
		{name: "draupnir's spec", values: []string{"0.0.0"}, status: 400, code: CodeInvalidAPIVersion, mention: "0.0.0", draupnir: true},
		{name: "major 6", values: []string{"6.0.0"}, status: 400, code: CodeInvalidAPIVersion, mention: "6.0.0", draupnir: true},
		{name: "garbage", values: []string{"garbage"}, status: 400, code: CodeInvalidAPIVersion, mention: "garbage", draupnir: true},
		{name: "major only", values: []string{"5"}, status: 400, code: CodeInvalidAPIVersion, mention: "(5)", draupnir: true},
		{name: "two parts", values: []string{"5.4"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "x minor", values: []string{"5.x.0"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "v prefix", values: []string{"v5.4.0"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "empty", values: []string{""}, status: 400, code: CodeInvalidAPIVersion, mention: "()", draupnir: true},
		{name: "prerelease", values: []string{"5.4.0-rc1"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "leading zero", values: []string{"5.04.0"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "negative", values: []string{"5.-1.0"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "four parts", values: []string{"5.4.0.1"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "huge", values: []string{"5.99999999999999999999.0"}, status: 400, code: CodeInvalidAPIVersion, draupnir: true},
		{name: "draupnir 5.3", values: []string{"5.3.0"}, status: 200},
		{name: "5.4.9 patch ignored", values: []string{"5.4.9"}, status: 200},
		{name: "exact", values: []string{"5.4.0"}, status: 200},
		{name: "5.0.0", values: []string{"5.0.0"}, status: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/images", nil)
			r.Header.Set("Authorization", "Bearer "+testToken)
			for _, v := range tc.values {
				r.Header.Add(VersionHeader, v)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if got := w.Header().Get(VersionHeader); got != "5.4.0" {
				t.Errorf("response %s = %q, want 5.4.0", VersionHeader, got)
			}
			if tc.status == 200 {
				if w.Code != 200 {
					t.Fatalf("status %d: %s", w.Code, w.Body)
				}
				return
			}
			var detail string
			if tc.draupnir {
				e := wantDraupnirError(t, w, tc.status)
				if e.ID != tc.code || e.Code != tc.code || e.Title != "Invalid API Version" {
					t.Errorf("Draupnir error %+v, want Draupnir's invalid_api_version", e)
				}
				detail = e.Detail
			} else {
				detail = wantError(t, w, tc.status, tc.code)
			}
			if !strings.Contains(detail, version.API) {
				t.Errorf("detail %q does not name the server's version", detail)
			}
			if tc.mention != "" && !strings.Contains(detail, tc.mention) {
				t.Errorf("detail %q does not mention %q", detail, tc.mention)
			}
		})
	}
}

func TestVersionExemptRoutes(t *testing.T) {
	calls := 0
	s, _ := newTestServer(t, Options{
		VersionExempt: []string{"GET /extra"},
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "# metrics\n")
		}),
		Authenticate: func(r *http.Request) (any, error) { calls++; return testAuth(r) },
	})
	s.Router().HandleFunc("/extra", func(w http.ResponseWriter, r *http.Request) {}).Methods("GET")
	h := s.Handler()

	w := do(h, req{method: "GET", path: "/health_check", noVersion: true, noAuth: true})
	if w.Code != 200 || strings.TrimSpace(w.Body.String()) != `{"status":"ok"}` {
		t.Fatalf("health_check: %d %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("health_check Content-Type %q", ct)
	}
	if v := w.Header().Get(VersionHeader); v != version.API {
		t.Errorf("health_check %s %q", VersionHeader, v)
	}
	for _, p := range []string{"/metrics", "/authenticate", "/extra"} {
		if w := do(h, req{method: "GET", path: p, noVersion: true, noAuth: true}); w.Code != 200 {
			t.Errorf("GET %s without version and auth: %d %s", p, w.Code, w.Body)
		}
	}
	if calls != 0 {
		t.Errorf("Authenticate called %d times on unversioned routes", calls)
	}
	// A versioned unauthenticated route still needs the version header.
	w = do(h, req{method: "POST", path: "/access_tokens", noVersion: true, noAuth: true,
		header: map[string]string{"Content-Type": "application/json"},
		body:   strings.NewReader(`{"data":{"type":"access_tokens","attributes":{"state":"S"}}}`)})
	wantError(t, w, 400, CodeMissingAPIVersionHeader)
	// And wrong methods on exempt paths are not exempt from 405.
	w = do(h, req{method: "POST", path: "/health_check", noVersion: true, noAuth: true})
	wantError(t, w, 405, CodeMethodNotAllowed)
}

func TestVersionHeaderOnEveryResponse(t *testing.T) {
	s, _ := newTestServer(t, Options{MaxBodyBytes: 10})
	h := s.Handler()
	for _, q := range []req{
		{method: "GET", path: "/images"},
		{method: "GET", path: "/health_check", noVersion: true, noAuth: true},
		{method: "GET", path: "/images", noVersion: true},
		{method: "GET", path: "/images", noAuth: true},
		{method: "GET", path: "/nope"},
		{method: "DELETE", path: "/images"},
		{method: "GET", path: "/panic"},
		{method: "GET", path: "/images/abc"},
		{method: "POST", path: "/images", body: strings.NewReader(strings.Repeat("x", 100))},
		{method: "POST", path: "/images", header: map[string]string{"Content-Type": "text/plain"}, body: strings.NewReader("{}")},
	} {
		w := do(h, q)
		if v := w.Header().Get(VersionHeader); v != "5.4.0" {
			t.Errorf("%s %s (%d): %s = %q", q.method, q.path, w.Code, VersionHeader, v)
		}
		if id := w.Header().Get(RequestIDHeader); id == "" {
			t.Errorf("%s %s (%d): no %s", q.method, q.path, w.Code, RequestIDHeader)
		}
	}
}

func TestNotFoundAndMethodNotAllowed(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	h := s.Handler()

	w := do(h, req{method: "GET", path: "/no/such/route"})
	if d := wantError(t, w, 404, CodeNotFound); !strings.Contains(d, "/no/such/route") {
		t.Errorf("404 detail %q", d)
	}
	// 404 regardless of version and auth headers.
	wantError(t, do(h, req{method: "GET", path: "/nope", noVersion: true, noAuth: true}), 404, CodeNotFound)
	// Unclean paths are not redirected.
	wantError(t, do(h, req{method: "GET", path: "/images/../images"}), 404, CodeNotFound)

	w = do(h, req{method: "DELETE", path: "/images"})
	wantError(t, w, 405, CodeMethodNotAllowed)
	if allow := w.Header().Get("Allow"); allow != "GET, POST" {
		t.Errorf("Allow %q, want %q", allow, "GET, POST")
	}
	w = do(h, req{method: "POST", path: "/images/7/upload"})
	wantError(t, w, 405, CodeMethodNotAllowed)
	if allow := w.Header().Get("Allow"); allow != "PUT" {
		t.Errorf("Allow %q, want PUT", allow)
	}
}

func TestPanicRecovery(t *testing.T) {
	s, logs := newTestServer(t, Options{})
	w := do(s.Handler(), req{method: "GET", path: "/panic", header: map[string]string{RequestIDHeader: "req-123"}})
	detail := wantError(t, w, 500, CodeInternalServerError)
	if strings.Contains(w.Body.String(), "hunter2") || strings.Contains(w.Body.String(), "goroutine") {
		t.Errorf("500 body leaks internals: %s", w.Body)
	}
	if !strings.Contains(detail, "req-123") {
		t.Errorf("500 detail %q lacks the request id", detail)
	}
	if got := w.Header().Get(RequestIDHeader); got != "req-123" {
		t.Errorf("X-Request-Id %q", got)
	}
	if cl := w.Header().Get("Content-Length"); cl == "5" {
		t.Errorf("the handler's Content-Length survived")
	}
	log := logs.String()
	if !strings.Contains(log, "hunter2") || !strings.Contains(log, `"request_id":"req-123"`) || !strings.Contains(log, "goroutine") {
		t.Errorf("the panic is not logged with its request id and stack:\n%s", log)
	}
}

// recovered runs h and returns what it panicked with.
func recovered(h http.Handler, w http.ResponseWriter, r *http.Request) (v any) {
	defer func() { v = recover() }()
	h.ServeHTTP(w, r)
	return nil
}

func TestPanicAbortHandler(t *testing.T) {
	h := recoverPanics(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	if v := recovered(h, httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil)); v != http.ErrAbortHandler {
		t.Errorf("ErrAbortHandler not re-panicked: %v", v)
	}

	// A panic once the response has started cannot become a clean 500: the
	// connection is aborted instead.
	h = recoverPanics(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		panic("boom")
	}))
	w := httptest.NewRecorder()
	if v := recovered(h, w, httptest.NewRequest("GET", "/", nil)); v != http.ErrAbortHandler {
		t.Errorf("panic after write: recovered %v, want http.ErrAbortHandler", v)
	}
	if w.Code != 200 || w.Body.String() != "partial" {
		t.Errorf("got %d %q", w.Code, w.Body)
	}
}

func TestPanicOverRealConnection(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	r, _ := http.NewRequest("GET", srv.URL+"/panic", nil)
	r.Header.Set(VersionHeader, "5.4.0")
	r.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 500 || !strings.Contains(string(body), CodeInternalServerError) || strings.Contains(string(body), "hunter2") {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
}

func TestRequestID(t *testing.T) {
	var seen string
	s, _ := newTestServer(t, Options{})
	s.Router().HandleFunc("/rid", func(w http.ResponseWriter, r *http.Request) {
		seen = RequestID(r.Context())
	}).Methods("GET")
	h := s.Handler()
	generated := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, tc := range []struct{ in, want string }{
		{"abc-DEF_1.2", "abc-DEF_1.2"},
		{strings.Repeat("a", 64), strings.Repeat("a", 64)},
		{strings.Repeat("a", 65), ""},
		{"has space", ""},
		{"semi;colon", ""},
		{"new\x7fline", ""},
		{"ünïcode", ""},
		{"", ""},
	} {
		hdr := map[string]string{}
		if tc.in != "" {
			hdr[RequestIDHeader] = tc.in
		}
		w := do(h, req{method: "GET", path: "/rid", header: hdr})
		got := w.Header().Get(RequestIDHeader)
		if got != seen {
			t.Errorf("%q: header %q but context %q", tc.in, got, seen)
		}
		if tc.want != "" && got != tc.want {
			t.Errorf("%q: got %q", tc.in, got)
		}
		if tc.want == "" && !generated.MatchString(got) {
			t.Errorf("%q: got %q, want a generated id", tc.in, got)
		}
	}
	a := do(h, req{method: "GET", path: "/rid"}).Header().Get(RequestIDHeader)
	b := do(h, req{method: "GET", path: "/rid"}).Header().Get(RequestIDHeader)
	if a == b {
		t.Errorf("generated ids repeat: %q", a)
	}
	if RequestID(t.Context()) != "" {
		t.Errorf("RequestID outside a request")
	}
}

func TestAccessLog(t *testing.T) {
	var infos []RequestInfo
	s, logs := newTestServer(t, Options{Observe: func(i RequestInfo) { infos = append(infos, i) }})
	h := s.Handler()
	r := httptest.NewRequest("GET", "/images/42?code=oauth-secret-code", nil)
	r.Header.Set(VersionHeader, "5.4.0")
	r.Header.Set("Authorization", "Bearer "+testToken)
	r.Header.Set(RequestIDHeader, "log-test-1")
	r.RemoteAddr = "192.0.2.7:5555"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var entry map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if e["msg"] == "http request" {
			entry = e
		}
	}
	if entry == nil {
		t.Fatalf("no access log line in %s", logs)
	}
	want := map[string]any{
		"method": "GET", "path": "/images/42", "route": "/images/{id}", "status": float64(200),
		"bytes": float64(len(w.Body.String())), "request_id": "log-test-1", "remote": "192.0.2.7:5555",
	}
	for k, v := range want {
		if entry[k] != v {
			t.Errorf("log %s = %v, want %v", k, entry[k], v)
		}
	}
	if _, ok := entry["duration_ms"].(float64); !ok {
		t.Errorf("log has no duration_ms: %v", entry)
	}
	if all := logs.String(); strings.Contains(all, testToken) || strings.Contains(all, "oauth-secret-code") {
		t.Errorf("the log holds the token or the query: %s", all)
	}
	if len(infos) != 1 || infos[0].Route != "/images/{id}" || infos[0].Status != 200 || infos[0].Method != "GET" {
		t.Errorf("Observe got %+v", infos)
	}

	// 404s are logged too, with the status the client saw.
	do(h, req{method: "GET", path: "/nope"})
	if !strings.Contains(logs.String(), `"status":404`) {
		t.Errorf("404 not logged: %s", logs)
	}
}

func TestAuthentication(t *testing.T) {
	s, logs := newTestServer(t, Options{AuthExempt: []string{"GET /public"}})
	s.Router().HandleFunc("/public", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, PrincipalFrom(r.Context()) == nil)
	}).Methods("GET")
	h := s.Handler()

	w := do(h, req{method: "GET", path: "/whoami"})
	if w.Code != 200 || w.Body.String() != "upload" {
		t.Fatalf("authenticated: %d %s", w.Code, w.Body)
	}
	for _, authz := range []string{"", "Bearer wrong", "Basic dXNlcjpwYXNz"} {
		w := do(h, req{method: "GET", path: "/whoami", noAuth: true, header: map[string]string{"Authorization": authz}})
		wantError(t, w, 401, CodeUnauthorized)
		if !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without WWW-Authenticate: Bearer")
		}
	}
	// The version check comes first.
	wantError(t, do(h, req{method: "GET", path: "/whoami", noAuth: true, noVersion: true}), 400, CodeMissingAPIVersionHeader)

	// Exempt: POST /access_tokens (built in) and the added GET /public.
	w = do(h, req{method: "POST", path: "/access_tokens", noAuth: true,
		header: map[string]string{"Content-Type": "application/json"},
		body:   strings.NewReader(`{"data":{"type":"access_tokens","attributes":{"state":"S1"}}}`)})
	if w.Code != 200 || w.Body.String() != "S1" {
		t.Errorf("POST /access_tokens without a token: %d %s", w.Code, w.Body)
	}
	if w := do(h, req{method: "GET", path: "/public", noAuth: true}); w.Code != 200 || w.Body.String() != "true" {
		t.Errorf("GET /public: %d %s", w.Code, w.Body)
	}
	if !strings.Contains(logs.String(), `"status":401`) {
		t.Errorf("401s not logged")
	}
}

func TestAuthenticationErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		authn  func(*http.Request) (any, error)
		status int
		code   string
	}{
		{"wrapped ErrUnauthorized", func(*http.Request) (any, error) {
			return nil, fmt.Errorf("token 1234 revoked: %w", ErrUnauthorized)
		}, 401, CodeUnauthorized},
		{"api error as is", func(*http.Request) (any, error) {
			return nil, Forbidden("not your instance")
		}, 403, CodeForbidden},
		{"store down is a 500, not a 401", func(*http.Request) (any, error) {
			return nil, errors.New("metadb: SELECT hash FROM tokens: connection refused")
		}, 500, CodeInternalServerError},
		{"nil principal fails closed", func(*http.Request) (any, error) { return nil, nil }, 401, CodeUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestServer(t, Options{Authenticate: tc.authn})
			w := do(s.Handler(), req{method: "GET", path: "/whoami"})
			detail := wantError(t, w, tc.status, tc.code)
			if strings.Contains(detail, "1234") || strings.Contains(detail, "SELECT") {
				t.Errorf("detail leaks: %q", detail)
			}
		})
	}
	// No Authenticate at all: fail closed.
	s := NewServer(Options{Logger: discardLogger()})
	s.Router().HandleFunc("/x", func(w http.ResponseWriter, r *http.Request) {}).Methods("GET")
	wantError(t, do(s.Handler(), req{method: "GET", path: "/x"}), 401, CodeUnauthorized)
	if w := do(s.Handler(), req{method: "GET", path: "/health_check", noAuth: true, noVersion: true}); w.Code != 200 {
		t.Errorf("health_check without Authenticate: %d", w.Code)
	}
}

func TestBodyLimit(t *testing.T) {
	s, _ := newTestServer(t, Options{}) // default 1 MiB
	h := s.Handler()
	big := strings.Repeat("x", 10<<20)
	doc := `{"data":{"type":"images","attributes":{"name":"` + big + `"}}}`

	// With a Content-Length: refused before reading.
	w := do(h, req{method: "POST", path: "/images", header: map[string]string{"Content-Type": "application/json"},
		body: strings.NewReader(doc)})
	if d := wantError(t, w, 413, CodeRequestTooLarge); !strings.Contains(d, "1048576") {
		t.Errorf("413 detail %q", d)
	}
	// Without one (chunked): refused by DecodeJSON when reading past the limit.
	w = do(h, req{method: "POST", path: "/images", header: map[string]string{"Content-Type": "application/json"},
		body: io.MultiReader(strings.NewReader(doc))})
	wantError(t, w, 413, CodeRequestTooLarge)

	// The upload route streams 10 MB.
	r := httptest.NewRequest("PUT", "/images/3/upload", io.MultiReader(strings.NewReader(big)))
	r.Header.Set(VersionHeader, "5.4.0")
	r.Header.Set("Authorization", "Bearer "+testToken)
	r.ContentLength = int64(len(big))
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 || w.Body.String() != itoa(int64(len(big))) {
		t.Errorf("upload: %d %s", w.Code, w.Body)
	}
}

func TestBodyLimitOverRealConnection(t *testing.T) {
	s, _ := newTestServer(t, Options{MaxBodyBytes: 1000, BodyReadTimeout: 5 * time.Second})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	post := func(path, ct string, body io.Reader) (*http.Response, string) {
		r, _ := http.NewRequest("POST", srv.URL+path, body)
		r.Header.Set(VersionHeader, "5.3.0")
		r.Header.Set("Authorization", "Bearer "+testToken)
		r.Header.Set("Content-Type", ct)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := post("/images", "application/json", strings.NewReader(`{"data":{"type":"images","attributes":{"name":"n"}}}`))
	if resp.StatusCode != 201 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	// A streamed body (no Content-Length) over the limit.
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriter(pw)
		bw.WriteString(`{"data":{"type":"images","attributes":{"name":"`)
		bw.WriteString(strings.Repeat("x", 5000))
		bw.WriteString(`"}}}`)
		bw.Flush()
		pw.Close()
	}()
	resp, body = post("/images", "application/json", pr)
	if resp.StatusCode != 413 || !strings.Contains(body, CodeRequestTooLarge) {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
	if resp.Header.Get(VersionHeader) != "5.4.0" {
		t.Errorf("no %s on the 413", VersionHeader)
	}
}

func TestBodyReadTimeout(t *testing.T) {
	s, _ := newTestServer(t, Options{BodyReadTimeout: 200 * time.Millisecond})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	pr, pw := io.Pipe()
	defer pw.Close()
	go io.WriteString(pw, `{"data":`) // then stall
	r, _ := http.NewRequest("POST", srv.URL+"/images", pr)
	r.Header.Set(VersionHeader, "5.4.0")
	r.Header.Set("Authorization", "Bearer "+testToken)
	r.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), CodeRequestTimeout) {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// After DecodeJSON, a long handler must not be cancelled by the body's read
// deadline (if it expired in net/http's background read, the request's
// context would be cancelled).
func TestBodyReadDeadlineCleared(t *testing.T) {
	s, _ := newTestServer(t, Options{BodyReadTimeout: 100 * time.Millisecond})
	s.Router().HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		var v map[string]any
		if err := DecodeJSON(w, r, &v); err != nil {
			WriteError(w, r, err)
			return
		}
		select {
		case <-time.After(400 * time.Millisecond):
			io.WriteString(w, "done")
		case <-r.Context().Done():
			io.WriteString(w, "cancelled")
		}
	}).Methods("POST")
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	r, _ := http.NewRequest("POST", srv.URL+"/slow", strings.NewReader(`{"a":1}`))
	r.Header.Set(VersionHeader, "5.4.0")
	r.Header.Set("Authorization", "Bearer "+testToken)
	r.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "done" {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
}

func TestNewHTTPServer(t *testing.T) {
	srv := NewHTTPServer(http.NotFoundHandler(), Options{Addr: ":0"})
	if srv.ReadHeaderTimeout != 10*time.Second || srv.ReadTimeout != 0 || srv.WriteTimeout != 0 ||
		srv.IdleTimeout != 120*time.Second || srv.MaxHeaderBytes != 64<<10 || srv.Addr != ":0" || srv.ErrorLog == nil {
		t.Errorf("%+v", srv)
	}
	srv = NewHTTPServer(http.NotFoundHandler(), Options{ReadHeaderTimeout: time.Second, WriteTimeout: time.Minute, MaxHeaderBytes: 1})
	if srv.ReadHeaderTimeout != time.Second || srv.WriteTimeout != time.Minute || srv.MaxHeaderBytes != 1 {
		t.Errorf("%+v", srv)
	}
}

// Streaming handlers (downloads) reach the connection through the
// middleware's ResponseWriter: Flush and ResponseController work.
func TestResponseControllerThroughMiddleware(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	errs := make(chan error, 3)
	s.Router().HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		errs <- rc.SetWriteDeadline(time.Now().Add(time.Minute))
		io.WriteString(w, "chunk1\n")
		errs <- rc.Flush()
		w.(http.Flusher).Flush()
		_, err := io.Copy(w, struct{ io.Reader }{strings.NewReader("chunk2\n")}) // ReaderFrom
		errs <- err
	}).Methods("GET")
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	r, _ := http.NewRequest("GET", srv.URL+"/stream", nil)
	r.Header.Set(VersionHeader, "5.4.0")
	r.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "chunk1\nchunk2\n" || resp.Header.Get(VersionHeader) != "5.4.0" {
		t.Errorf("%q %v", body, resp.Header)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("ResponseController through the middleware: %v", err)
		}
	}
}
