package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/engine"
)

type draupnirTestResource struct {
	ID   int64  `jsonapi:"primary,things"`
	Name string `jsonapi:"attr,name"`
}

// newDraupnirTestServer is newTestServer with routes that answer with a
// resource, a 204, registered error classes, an explicit Draupnir error
// and a rendering failure.
func newDraupnirTestServer(t *testing.T) http.Handler {
	t.Helper()
	s, _ := newTestServer(t, Options{MaxBodyBytes: 64})
	r := s.Router()
	r.HandleFunc("/thing", func(w http.ResponseWriter, r *http.Request) {
		WriteResource(w, http.StatusOK, &draupnirTestResource{ID: 3, Name: "x"})
	}).Methods(http.MethodGet)
	r.HandleFunc("/thing", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}).Methods(http.MethodDelete)
	r.HandleFunc("/class404", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, fmt.Errorf("image 9: %w", engine.ErrNotFound))
	}).Methods(http.MethodGet)
	r.HandleFunc("/class503", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, fmt.Errorf("ports: %w", engine.ErrNoPort))
	}).Methods(http.MethodGet)
	r.HandleFunc("/image-not-found", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, NotFound("there is no image 9").WithDraupnir(wire.DraupnirImageNotFound))
	}).Methods(http.MethodGet)
	r.HandleFunc("/quota", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, NewError(http.StatusTooManyRequests, "quota_exceeded", "Quota exceeded", "you have 5 instances; the limit is 5"))
	}).Methods(http.MethodGet)
	r.HandleFunc("/bad-render", func(w http.ResponseWriter, r *http.Request) {
		WriteResource(w, http.StatusOK, &struct {
			ID int64 `jsonapi:"primary"`
		}{ID: 1})
	}).Methods(http.MethodGet)
	return s.Handler()
}

// Every answer to a Draupnir client (Draupnir-Version 5.3.x) is in
// Draupnir's format: application/json, errors as one bare object with
// Draupnir's words where Draupnir had the error.
func TestDraupnirFormat(t *testing.T) {
	h := newDraupnirTestServer(t)
	v53 := map[string]string{VersionHeader: "5.3.6", "Content-Type": "application/json"}
	draupnir := func(q req) req { q.header = v53; return q }

	// Success: the same document, as application/json; a 204 carries it too.
	w := do(h, draupnir(req{method: "GET", path: "/thing"}))
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /thing: %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
	var doc struct {
		Data struct{ Type, ID string } `json:"data"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || doc.Data.Type != "things" || doc.Data.ID != "3" {
		t.Errorf("document %v %s", err, w.Body)
	}
	w = do(h, draupnir(req{method: "DELETE", path: "/thing"}))
	if w.Code != 204 || w.Header().Get("Content-Type") != "application/json" || w.Body.Len() != 0 {
		t.Errorf("DELETE /thing: %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
	if got := w.Header().Get(VersionHeader); got != "5.4.0" {
		t.Errorf("%s %q", VersionHeader, got)
	}

	for _, tc := range []struct {
		name   string
		q      req
		status int
		want   wire.DraupnirError // ID "" : check code only
		code   string
	}{
		{"unauthorized", req{method: "GET", path: "/images", noAuth: true}, 401, wire.DraupnirUnauthorized, ""},
		{"wrong token", req{method: "GET", path: "/images", header: map[string]string{"Authorization": "Bearer nope"}}, 401, wire.DraupnirUnauthorized, ""},
		{"unknown route", req{method: "GET", path: "/no/such/route"}, 404, wire.DraupnirNotFound, ""},
		{"unknown id", req{method: "GET", path: "/images/abc"}, 404, wire.DraupnirNotFound, ""},
		{"registered 404 class", req{method: "GET", path: "/class404"}, 404, wire.DraupnirNotFound, ""},
		{"explicit Draupnir error", req{method: "GET", path: "/image-not-found"}, 404, wire.DraupnirImageNotFound, ""},
		{"panic", req{method: "GET", path: "/panic"}, 500, wire.DraupnirInternalServerError, ""},
		{"rendering failure", req{method: "GET", path: "/bad-render"}, 500, wire.DraupnirInternalServerError, ""},
		{"malformed body", req{method: "POST", path: "/images", body: strings.NewReader(`{"data":`)}, 400, wire.DraupnirInvalidJSON, ""},
		{"wrong method", req{method: "DELETE", path: "/images"}, 405, wire.DraupnirError{}, CodeMethodNotAllowed},
		{"too large", req{method: "POST", path: "/images", body: strings.NewReader(strings.Repeat(" ", 100))}, 413, wire.DraupnirError{}, CodeRequestTooLarge},
		{"media type", req{method: "POST", path: "/images", header: map[string]string{"Content-Type": "text/plain"}, body: strings.NewReader(`{}`)}, 415, wire.DraupnirError{}, CodeUnsupportedMediaType},
		{"wrong type", req{method: "POST", path: "/images", body: strings.NewReader(`{"data":{"type":"instances"}}`)}, 409, wire.DraupnirError{}, CodeConflict},
		{"registered 503 class", req{method: "GET", path: "/class503"}, 503, wire.DraupnirError{}, CodeNoFreePort},
		{"a code added later", req{method: "GET", path: "/quota"}, 429, wire.DraupnirError{}, "quota_exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			for k, v := range v53 {
				hdr[k] = v
			}
			for k, v := range tc.q.header {
				hdr[k] = v
			}
			tc.q.header = hdr
			w := do(h, tc.q)
			e := wantDraupnirError(t, w, tc.status)
			if tc.want.ID != "" {
				got := wire.DraupnirError{ID: e.ID, Status: e.Status, Code: e.Code, Title: e.Title, Detail: e.Detail,
					Source: wire.Source{Pointer: e.Source.Pointer, Parameter: e.Source.Parameter}}
				if got != tc.want {
					t.Errorf("got %+v, want Draupnir's %+v", got, tc.want)
				}
				return
			}
			if e.ID != tc.code || e.Code != tc.code {
				t.Errorf("got %+v, want id and code %q", e, tc.code)
			}
		})
	}

	// A request without a version header, and a 5.4 one, get JSON:API.
	wantError(t, do(h, req{method: "GET", path: "/no/such/route", noVersion: true}), 404, CodeNotFound)
	wantError(t, do(h, req{method: "GET", path: "/class404"}), 404, CodeNotFound)
	w = do(h, req{method: "GET", path: "/thing"})
	if ct := w.Header().Get("Content-Type"); ct != MediaType {
		t.Errorf("5.4 GET /thing: Content-Type %q", ct)
	}
	if w = do(h, req{method: "DELETE", path: "/thing"}); w.Header().Get("Content-Type") != "" {
		t.Errorf("5.4 204 with Content-Type %q", w.Header().Get("Content-Type"))
	}
}

// A JSON:API error document carries the source when the error has one.
func TestJSONAPIErrorSource(t *testing.T) {
	h := newDraupnirTestServer(t)
	w := do(h, req{method: "POST", path: "/images", header: map[string]string{"Content-Type": "application/json"},
		body: strings.NewReader(`{"data":{"type":"images","attributes":{"nmae":"x"}}}`)})
	wantError(t, w, 400, CodeBadRequest)
	var doc struct {
		Errors []struct {
			Source map[string]string `json:"source"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || len(doc.Errors) != 1 || doc.Errors[0].Source["pointer"] != "/data/attributes/nmae" {
		t.Errorf("%v %s", err, w.Body)
	}
}
