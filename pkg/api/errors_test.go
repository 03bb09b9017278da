package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/testenv"
	"github.com/sindri-db/sindri/pkg/version"
)

// writeErr renders err in a request with id "rid-1" and a captured log.
func writeErr(t *testing.T, err error) (*httptest.ResponseRecorder, string) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	h := requestID(logger, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, err)
	}))
	r := httptest.NewRequest("GET", "/images/3", nil)
	r.Header.Set(RequestIDHeader, "rid-1")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w, logs.String()
}

func TestWriteErrorDocument(t *testing.T) {
	w, _ := writeErr(t, NotFound("image 3 does not exist"))
	if w.Code != 404 || w.Header().Get("Content-Type") != "application/vnd.api+json" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
	var raw map[string][]map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"status": "404", "code": "resource_not_found", "title": "Resource not found", "detail": "image 3 does not exist"}
	if len(raw["errors"]) != 1 || fmt.Sprint(raw["errors"][0]) != fmt.Sprint(want) {
		t.Errorf("got %s", w.Body)
	}
	// The status is a JSON string.
	if !strings.Contains(w.Body.String(), `"status":"404"`) {
		t.Errorf("%s", w.Body)
	}
}

func TestWriteErrorClasses(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		code       string
		detail     string // exact, if set
		notInBody  string
		logged     bool
		notInCause string
	}{
		{name: "api error", err: ImageNotReady("image 3 is finalising"), status: 422, code: CodeImageNotReady, detail: "image 3 is finalising"},
		{name: "wrapped api error", err: fmt.Errorf("ctx: %w", ImageHasInstances("image 3 has 2 instances")), status: 422, code: CodeImageHasInstances, detail: "image 3 has 2 instances"},
		{name: "class 4xx shows the message", err: fmt.Errorf("image 3: %w", engine.ErrNotFound), status: 404, code: CodeNotFound, detail: "image 3: not found"},
		{name: "class 5xx hides the message", err: fmt.Errorf("ports 5432-5500 on /var/lib/sindri: %w", engine.ErrNoPort), status: 503, code: CodeNoFreePort, notInBody: "/var/lib/sindri", logged: true},
		{name: "first row wins", err: fmt.Errorf("%w: %w", engine.ErrInvalid, engine.ErrNotFound), status: 404, code: CodeNotFound},
		{name: "ErrUnauthorized hides the reason", err: fmt.Errorf("token abc revoked: %w", ErrUnauthorized), status: 401, code: CodeUnauthorized, notInBody: "abc"},
		{name: "MaxBytesError", err: fmt.Errorf("read: %w", &http.MaxBytesError{Limit: 10}), status: 413, code: CodeRequestTooLarge},
		{name: "unknown is 500 without internals", err: errors.New(`pq: syntax error at "SELECT password FROM users"`), status: 500, code: CodeInternalServerError, notInBody: "SELECT", logged: true},
		{name: "nil", err: nil, status: 500, code: CodeInternalServerError, logged: true},
		{name: "503 constructors", err: NoDiskSpace("only 1 GB free"), status: 503, code: CodeNoDiskSpace, detail: "only 1 GB free"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, log := writeErr(t, tc.err)
			detail := wantError(t, w, tc.status, tc.code)
			if tc.detail != "" && detail != tc.detail {
				t.Errorf("detail %q, want %q", detail, tc.detail)
			}
			if tc.notInBody != "" && strings.Contains(w.Body.String(), tc.notInBody) {
				t.Errorf("body leaks %q: %s", tc.notInBody, w.Body)
			}
			if tc.status >= 500 && tc.detail == "" && !strings.Contains(detail, "rid-1") {
				t.Errorf("5xx detail %q lacks the request id", detail)
			}
			if tc.logged {
				if !strings.Contains(log, `"request_id":"rid-1"`) || (tc.err != nil && !strings.Contains(log, tc.notInBody)) {
					t.Errorf("not logged with the request id and the real error: %s", log)
				}
			} else if log != "" {
				t.Errorf("logged: %s", log)
			}
		})
	}
}

func TestUnauthorizedHasWWWAuthenticate(t *testing.T) {
	w, _ := writeErr(t, Unauthorized("no token"))
	if w.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("no WWW-Authenticate")
	}
}

// Every class the engine declares (an exported Err variable of
// pkg/engine/errors.go) has exactly one row in the error table, with a
// status of 400-599, a code and a title: a new class cannot reach a client
// as a 500 for want of a row.
func TestErrorTableCoversEveryEngineClass(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "../engine/errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var declared []string
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.VAR {
			continue
		}
		for _, spec := range g.Specs {
			for _, name := range spec.(*ast.ValueSpec).Names {
				if strings.HasPrefix(name.Name, "Err") {
					declared = append(declared, name.Name)
				}
			}
		}
	}
	if len(declared) < 10 {
		t.Fatalf("found only %v in pkg/engine/errors.go", declared)
	}
	byMessage := map[string]errorClass{}
	for _, c := range errorClasses {
		if c.status < 400 || c.status > 599 || c.code == "" || c.title == "" {
			t.Errorf("row %v: status %d, code %q, title %q", c.class, c.status, c.code, c.title)
		}
		if _, dup := byMessage[c.class.Error()]; dup {
			t.Errorf("two rows for %v", c.class)
		}
		byMessage[c.class.Error()] = c
	}
	if len(errorClasses) != len(declared) {
		t.Errorf("%d rows for the %d classes %v", len(errorClasses), len(declared), declared)
	}
}

func TestErrorConstructors(t *testing.T) {
	for _, tc := range []struct {
		e      *Error
		status int
		code   string
	}{
		{BadRequest("d"), 400, "bad_request"},
		{Unauthorized("d"), 401, "unauthorized"},
		{Forbidden("d"), 403, "forbidden"},
		{NotFound("d"), 404, "resource_not_found"},
		{MethodNotAllowed("d"), 405, "method_not_allowed"},
		{Conflict("d"), 409, "conflict"},
		{MissingAPIVersionHeader(), 400, "missing_api_version_header"},
		{InvalidAPIVersion("4.0.0"), 400, "invalid_api_version"},
		{UnsupportedMediaType("d"), 415, "unsupported_media_type"},
		{RequestTooLarge(5), 413, "request_too_large"},
		{ImageNotReady("d"), 422, "image_not_ready"},
		{ImageHasInstances("d"), 422, "image_has_instances"},
		{ImageFinaliseFailed("d"), 422, "image_finalise_failed"},
		{NoFreePort("d"), 503, "no_free_port"},
		{NoDiskSpace("d"), 503, "no_disk_space"},
		{InternalServerError("id"), 500, "internal_server_error"},
		{NewError(418, "teapot", "", "d"), 418, "teapot"},
	} {
		if tc.e.Status != tc.status || tc.e.Code != tc.code || tc.e.Title == "" || tc.e.Detail == "" {
			t.Errorf("%+v, want %d %s with title and detail", tc.e, tc.status, tc.code)
		}
		if !strings.Contains(tc.e.Error(), tc.code) {
			t.Errorf("Error() = %q", tc.e.Error())
		}
	}
}

func TestWriteErrorAfterResponseStarted(t *testing.T) {
	logs := &testenv.SyncBuffer{}
	h := requestID(slog.New(slog.NewJSONHandler(logs, nil)), nil)(accessLog(discardLogger(), nil)(http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			w.Write([]byte("partial"))
			WriteError(w, r, errors.New("late failure"))
		})))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	if w.Code != 200 || w.Body.String() != "partial" {
		t.Errorf("%d %q", w.Code, w.Body)
	}
	if !strings.Contains(logs.String(), "late failure") {
		t.Errorf("not logged: %s", logs)
	}
}

// The metadata store out of reach (its leader changing) is 503
// metadata_unavailable with a Retry-After, in both wire formats: a detail
// that tells the client to send the request again, and nothing of the
// driver's message (hosts, user), which is logged.
func TestMetadataUnavailableIs503WithRetryAfter(t *testing.T) {
	cause := fmt.Errorf("store: get instance 4: %w: failed to connect to `user=sindri database=sindri`: 10.0.0.7:5432: connection refused", engine.ErrMetadataUnavailable)
	w, log := writeErr(t, fmt.Errorf("engine: %w", cause))
	detail := wantError(t, w, 503, CodeMetadataUnavailable)
	if w.Header().Get("Retry-After") != "2" {
		t.Errorf("Retry-After %q, want 2", w.Header().Get("Retry-After"))
	}
	if !strings.Contains(detail, "send it again") || !strings.Contains(detail, "rid-1") || strings.Contains(w.Body.String(), "10.0.0.7") {
		t.Errorf("detail %q", detail)
	}
	if !strings.Contains(log, "10.0.0.7") || !strings.Contains(log, `"request_id":"rid-1"`) {
		t.Errorf("the cause is not logged: %s", log)
	}

	logger := slog.New(slog.DiscardHandler)
	h := requestID(logger, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteError(w, r, cause) }))
	r := httptest.NewRequest("GET", "/instances/4", nil)
	r.Header.Set(VersionHeader, "5.3.0") // a Draupnir client
	dw := httptest.NewRecorder()
	h.ServeHTTP(dw, r)
	if e := wantDraupnirError(t, dw, 503); e.Code != CodeMetadataUnavailable || dw.Header().Get("Retry-After") != "2" {
		t.Errorf("Draupnir client: %+v, Retry-After %q", e, dw.Header().Get("Retry-After"))
	}
}

// TestExplainErrorGivesTheTrueClass: Options.ExplainError sees a
// handler's error and Authenticate's before they are rendered, and what
// it returns is what the client gets (sindrid's: a metadata database out
// of reach on a full disk is no_disk_space, not a retry).
func TestExplainErrorGivesTheTrueClass(t *testing.T) {
	unavailable := fmt.Errorf("store: get image 3: %w: dial unix /var/lib/sindri/meta/socket/.s.PGSQL.5432: no such file", engine.ErrMetadataUnavailable)
	full := &engine.LimitError{Key: "limits.disk_reserve", Disk: true, Used: 0, Limit: 100,
		Msg: "the request is refused: 0 B of 2.0 GiB is free, under the disk reserve (limits.disk_reserve = 5%)"}
	var seen []error
	s := NewServer(Options{
		Logger: slog.New(slog.DiscardHandler),
		Authenticate: func(r *http.Request) (any, error) {
			if r.Header.Get("Authorization") == "" {
				return nil, unavailable
			}
			return "upload", nil
		},
		ExplainError: func(ctx context.Context, err error) error {
			seen = append(seen, err)
			if errors.Is(err, engine.ErrMetadataUnavailable) {
				return full
			}
			return err
		},
	})
	s.Router().Handle("/images/{id}", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if strings.HasSuffix(r.URL.Path, "/4") {
			return NotFound("there is no image 4")
		}
		return unavailable
	})).Methods(http.MethodGet)
	for _, c := range []struct {
		path, auth string
		status     int
		code       string
	}{
		{"/images/3", "Bearer x", 503, CodeNoDiskSpace}, // the handler's error
		{"/images/3", "", 503, CodeNoDiskSpace},         // Authenticate's
		{"/images/4", "Bearer x", 404, CodeNotFound},    // left as it is
	} {
		seen = nil
		r := httptest.NewRequest("GET", c.path, nil)
		r.Header.Set(VersionHeader, version.API)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		detail := wantError(t, w, c.status, c.code)
		if len(seen) != 1 {
			t.Errorf("%s (auth %q): ExplainError saw %v, want the one error", c.path, c.auth, seen)
		}
		if c.code == CodeNoDiskSpace && (detail != full.Msg || w.Header().Get("Retry-After") != "" || strings.Contains(w.Body.String(), "socket")) {
			t.Errorf("%s (auth %q): detail %q, Retry-After %q; want the reserve's message alone", c.path, c.auth, detail, w.Header().Get("Retry-After"))
		}
	}
}
