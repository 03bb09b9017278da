package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Models shaped like the contract's instance with included credentials.
type testCredentials struct {
	ID       int64  `jsonapi:"primary,credentials"`
	CACert   string `jsonapi:"attr,ca_certificate"`
	ClientPE string `jsonapi:"attr,client_key"`
}

type testInstance struct {
	ID          int64            `jsonapi:"primary,instances"`
	ImageID     int64            `jsonapi:"attr,image_id"`
	Port        int              `jsonapi:"attr,port"`
	Hostname    string           `jsonapi:"attr,hostname"`
	Protected   bool             `jsonapi:"attr,protected"`
	CreatedAt   time.Time        `jsonapi:"attr,created_at,iso8601"`
	ExpiresAt   *time.Time       `jsonapi:"attr,expires_at,iso8601"`
	BackedUpAt  time.Time        `jsonapi:"attr,backed_up_at,iso8601"` // zero: left out
	Credentials *testCredentials `jsonapi:"relation,credentials,omitempty"`
}

func TestWriteResourceJSONAPIRendering(t *testing.T) {
	cet := time.FixedZone("CEST", 2*3600)
	inst := &testInstance{
		ID: 3, ImageID: 7, Port: 6432, Hostname: "db.example.com", Protected: true,
		CreatedAt:   time.Date(2017, 5, 1, 14, 0, 0, 123456789, cet), // 12:00:00.123456789 UTC
		Credentials: &testCredentials{ID: 3, CACert: "-----BEGIN CERTIFICATE-----", ClientPE: "KEY"},
	}
	w := httptest.NewRecorder()
	if err := WriteResource(w, http.StatusCreated, inst); err != nil {
		t.Fatal(err)
	}
	if w.Code != 201 || w.Header().Get("Content-Type") != "application/vnd.api+json" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
	var doc struct {
		Data struct {
			Type          string                     `json:"type"`
			ID            json.RawMessage            `json:"id"`
			Attributes    map[string]json.RawMessage `json:"attributes"`
			Relationships map[string]struct {
				Data struct {
					Type string          `json:"type"`
					ID   json.RawMessage `json:"id"`
				} `json:"data"`
			} `json:"relationships"`
		} `json:"data"`
		Included []struct {
			Type       string                     `json:"type"`
			ID         json.RawMessage            `json:"id"`
			Attributes map[string]json.RawMessage `json:"attributes"`
		} `json:"included"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("%v: %s", err, w.Body)
	}
	d := doc.Data
	check := func(what, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %s, want %s\n%s", what, got, want, w.Body)
		}
	}
	check("type", d.Type, "instances")
	check("id", string(d.ID), `"3"`) // a JSON string
	check("created_at", string(d.Attributes["created_at"]), `"2017-05-01T12:00:00Z"`)
	check("expires_at (nil *time.Time)", string(d.Attributes["expires_at"]), `null`)
	check("image_id", string(d.Attributes["image_id"]), `7`) // numbers stay numbers
	check("port", string(d.Attributes["port"]), `6432`)
	check("protected", string(d.Attributes["protected"]), `true`)
	if _, ok := d.Attributes["backed_up_at"]; ok {
		t.Errorf("a zero time.Time is rendered: %s", w.Body)
	}
	rel := d.Relationships["credentials"].Data
	check("relationship type", rel.Type, "credentials")
	check("relationship id", string(rel.ID), `"3"`)
	if len(doc.Included) != 1 {
		t.Fatalf("included: %s", w.Body)
	}
	inc := doc.Included[0]
	check("included type", inc.Type, "credentials")
	check("included id", string(inc.ID), `"3"`)
	check("included ca_certificate", string(inc.Attributes["ca_certificate"]), `"-----BEGIN CERTIFICATE-----"`)

	// A set *time.Time renders like a time.Time.
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	inst.ExpiresAt, inst.Credentials = &exp, nil
	w = httptest.NewRecorder()
	WriteResource(w, 200, inst)
	if !strings.Contains(w.Body.String(), `"expires_at":"2030-01-02T03:04:05Z"`) {
		t.Errorf("%s", w.Body)
	}
	if strings.Contains(w.Body.String(), "included") || strings.Contains(w.Body.String(), "relationships") {
		t.Errorf("nil omitempty relationship rendered: %s", w.Body)
	}
}

func TestWriteResources(t *testing.T) {
	list := []*testInstance{
		{ID: 2, CreatedAt: time.Unix(0, 0), Credentials: &testCredentials{ID: 2}},
		{ID: 1, CreatedAt: time.Unix(0, 0), Credentials: &testCredentials{ID: 1}},
	}
	w := httptest.NewRecorder()
	if err := WriteResources(w, 200, list); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
		Included []json.RawMessage `json:"included"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Data) != 2 || doc.Data[0].ID != "2" || doc.Data[1].ID != "1" || len(doc.Included) != 2 {
		t.Errorf("order or included wrong: %s", w.Body)
	}
	for _, empty := range []any{nil, []*testInstance(nil), []*testInstance{}} {
		w := httptest.NewRecorder()
		if err := WriteResources(w, 200, empty); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(w.Body.String()); got != `{"data":[]}` {
			t.Errorf("%#v: %s", empty, got)
		}
	}
}

type badTag struct {
	ID float64 `jsonapi:"primary,things"`
}

func TestWriteResourceProgrammingErrors(t *testing.T) {
	for name, f := range map[string]func(w http.ResponseWriter) error{
		"struct not pointer": func(w http.ResponseWriter) error { return WriteResource(w, 200, testInstance{}) },
		"nil":                func(w http.ResponseWriter) error { return WriteResource(w, 200, nil) },
		"bad id type":        func(w http.ResponseWriter) error { return WriteResource(w, 200, &badTag{ID: 1}) },
		"slice of structs":   func(w http.ResponseWriter) error { return WriteResources(w, 200, []testInstance{{}}) },
		"nil element":        func(w http.ResponseWriter) error { return WriteResources(w, 200, []*testInstance{nil}) },
		"not a slice":        func(w http.ResponseWriter) error { return WriteResources(w, 200, &testInstance{}) },
	} {
		w := httptest.NewRecorder()
		w.Header().Set(RequestIDHeader, "rid-9")
		if err := f(w); err == nil {
			t.Errorf("%s: no error", name)
		}
		if d := wantErrorNoVersion(t, w); !strings.Contains(d, "rid-9") {
			t.Errorf("%s: detail %q", name, d)
		}
	}
}

// wantErrorNoVersion checks a bare 500 document (outside the server, so
// without Draupnir-Version).
func wantErrorNoVersion(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var doc errorDoc
	if w.Code != 500 || json.Unmarshal(w.Body.Bytes(), &doc) != nil || len(doc.Errors) != 1 || doc.Errors[0].Code != CodeInternalServerError {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	return doc.Errors[0].Detail
}

// ServeContent's refusals are API errors in the request's format.
func TestServeContentRefusals(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	modtime := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s.Router().HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/zstd")
		w.Header().Set("ETag", `"abc"`)
		ServeContent(w, r, "", modtime, strings.NewReader("0123456789"))
	}).Methods(http.MethodGet)
	h := s.Handler()

	w := do(h, req{method: "GET", path: "/blob", header: map[string]string{"Range": "bytes=2-4"}})
	if w.Code != 206 || w.Body.String() != "234" || w.Header().Get("Content-Type") != "application/zstd" {
		t.Fatalf("a range: %d %q %v", w.Code, w.Body, w.Header())
	}
	w = do(h, req{method: "GET", path: "/blob", header: map[string]string{"Range": "bytes=20-30"}})
	wantError(t, w, 416, CodeRangeNotSatisfiable)
	if cr := w.Header().Get("Content-Range"); cr != "bytes */10" {
		t.Errorf("Content-Range %q", cr)
	}
	wantError(t, do(h, req{method: "GET", path: "/blob", header: map[string]string{"If-Match": `"other"`}}), 412, CodePreconditionFailed)
	e := wantDraupnirError(t, do(h, req{method: "GET", path: "/blob",
		header: map[string]string{"Range": "bytes=20-30", VersionHeader: "5.3.6"}}), 416)
	if e.Code != CodeRangeNotSatisfiable {
		t.Errorf("Draupnir client: %+v", e)
	}
	if w := do(h, req{method: "GET", path: "/blob"}); w.Code != 200 || w.Body.String() != "0123456789" {
		t.Errorf("whole: %d %q", w.Code, w.Body)
	}
}
