package api

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/sindri-db/sindri/pkg/testenv"
	"github.com/sindri-db/sindri/pkg/version"
)

const testToken = "s3cret-token"

type testPrincipal struct{ Name string }

// testAuth accepts "Bearer s3cret-token".
func testAuth(r *http.Request) (any, error) {
	if r.Header.Get("Authorization") == "Bearer "+testToken {
		return &testPrincipal{Name: "upload"}, nil
	}
	return nil, ErrUnauthorized
}

// newTestServer returns a Server with a few routes like the real ones, and
// its log.
func newTestServer(t *testing.T, opts Options) (*Server, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.Authenticate == nil {
		opts.Authenticate = testAuth
	}
	s := NewServer(opts)
	r := s.Router()
	ok := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", MediaType)
		io.WriteString(w, `{"data":[]}`)
	}
	r.HandleFunc("/images", ok).Methods(http.MethodGet)
	r.HandleFunc("/images", func(w http.ResponseWriter, r *http.Request) {
		var attrs struct {
			Name string `json:"name"`
		}
		if _, err := DecodeResource(w, r, "images", &attrs); err != nil {
			WriteError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}).Methods(http.MethodPost)
	r.HandleFunc("/images/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := PathID(r, "id")
		if err != nil {
			WriteError(w, r, err)
			return
		}
		io.WriteString(w, `{"id":"`+itoa(id)+`"}`)
	}).Methods(http.MethodGet)
	r.HandleFunc("/images/{id}/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			WriteError(w, r, err)
			return
		}
		io.WriteString(w, itoa(n))
	}).Methods(http.MethodPut)
	r.HandleFunc("/access_tokens", func(w http.ResponseWriter, r *http.Request) {
		var attrs struct {
			State string `json:"state"`
		}
		if _, err := DecodeResource(w, r, "access_tokens", &attrs); err != nil {
			WriteError(w, r, err)
			return
		}
		io.WriteString(w, attrs.State)
	}).Methods(http.MethodPost)
	r.HandleFunc("/authenticate", ok).Methods(http.MethodGet)
	r.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		p, _ := PrincipalFrom(r.Context()).(*testPrincipal)
		if p == nil {
			io.WriteString(w, "<nil>")
			return
		}
		io.WriteString(w, p.Name)
	}).Methods(http.MethodGet)
	r.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		panic("secret internal state: password=hunter2")
	}).Methods(http.MethodGet)
	return s, logs
}

func itoa[T ~int64 | ~int](n T) string { return strconv.FormatInt(int64(n), 10) }

type req struct {
	method, path string
	header       map[string]string
	body         io.Reader
	noVersion    bool
	noAuth       bool
}

// do runs a request through h with the version header and token unless told
// otherwise.
func do(h http.Handler, q req) *httptest.ResponseRecorder {
	r := httptest.NewRequest(q.method, q.path, q.body)
	if !q.noVersion {
		r.Header.Set(VersionHeader, version.API)
	}
	if !q.noAuth {
		r.Header.Set("Authorization", "Bearer "+testToken)
	}
	for k, v := range q.header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

type errorDoc struct {
	Errors []struct {
		Status string `json:"status"`
		Code   string `json:"code"`
		Title  string `json:"title"`
		Detail string `json:"detail"`
	} `json:"errors"`
}

// wantError checks that w is a JSON:API error document with status and
// code, and returns its detail.
func wantError(t *testing.T, w *httptest.ResponseRecorder, status int, code string) string {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d; body %s", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != MediaType {
		t.Errorf("Content-Type %q, want %q", ct, MediaType)
	}
	if v := w.Header().Get(VersionHeader); v != version.API {
		t.Errorf("%s %q, want %q", VersionHeader, v, version.API)
	}
	var doc errorDoc
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, w.Body)
	}
	if len(doc.Errors) != 1 {
		t.Fatalf("want one error, got %s", w.Body)
	}
	e := doc.Errors[0]
	if e.Status != itoa(int64(status)) || e.Code != code || e.Title == "" {
		t.Fatalf("error %+v, want status %q code %q and a title", e, itoa(int64(status)), code)
	}
	return e.Detail
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// draupnirError is Draupnir's bare error object, decoded strictly.
type draupnirError struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Code   string `json:"code"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Source struct {
		Pointer   string `json:"pointer,omitempty"`
		Parameter string `json:"parameter,omitempty"`
	} `json:"source"`
}

// wantDraupnirError checks that w is Draupnir's error: status, Content-Type
// application/json, and a body of exactly one object with Draupnir's six
// members (source always present); it returns the object.
func wantDraupnirError(t *testing.T, w *httptest.ResponseRecorder, status int) draupnirError {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d; body %s", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &members); err != nil {
		t.Fatalf("body is not one JSON object: %v: %s", err, w.Body)
	}
	for _, k := range []string{"id", "status", "code", "title", "detail", "source"} {
		if _, ok := members[k]; !ok {
			t.Errorf("member %q missing: %s", k, w.Body)
		}
	}
	if len(members) != 6 {
		t.Errorf("want exactly Draupnir's six members: %s", w.Body)
	}
	dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
	dec.DisallowUnknownFields()
	var e draupnirError
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("not Draupnir's error object: %v: %s", err, w.Body)
	}
	if e.Status != itoa(int64(status)) || e.Title == "" || e.Detail == "" {
		t.Errorf("error %+v: want status %d, a title and a detail", e, status)
	}
	return e
}
