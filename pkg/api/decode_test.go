package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/sindri-db/sindri/pkg/api/wire"
)

func jsonRequest(ct, body string) (*httptest.ResponseRecorder, *http.Request) {
	r := httptest.NewRequest("POST", "/x", strings.NewReader(body))
	if ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	return httptest.NewRecorder(), r
}

// apiErr asserts err is an *Error with status and code, and returns it.
func apiErr(t *testing.T, err error, status int, code string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want an *api.Error %d %s", err, err, status, code)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("got %d %s (%s), want %d %s", e.Status, e.Code, e.Detail, status, code)
	}
	return e
}

func TestDecodeJSONContentType(t *testing.T) {
	for _, tc := range []struct {
		ct string
		ok bool
	}{
		{"application/json", true},
		{"application/json; charset=utf-8", true},
		{"Application/JSON; charset=UTF-8", true},
		{"application/vnd.api+json", true},
		{"application/vnd.api+json; charset=utf-8", false}, // JSON:API 1.0: 415
		{`application/vnd.api+json; ext="https://jsonapi.org/ext/atomic"`, false},
		{"", false},
		{"text/plain", false},
		{"application/x-www-form-urlencoded", false},
		{"application/jsonx", false},
		{"application/json;;", false},
	} {
		w, r := jsonRequest(tc.ct, `{"a":1}`)
		var v map[string]int
		err := DecodeJSON(w, r, &v)
		if tc.ok {
			if err != nil || v["a"] != 1 {
				t.Errorf("%q: %v %v", tc.ct, err, v)
			}
			continue
		}
		apiErr(t, err, 415, CodeUnsupportedMediaType)
	}
}

func TestDecodeJSONErrors(t *testing.T) {
	type target struct {
		Name  string `json:"name"`
		Count int    `json:"count"`
		Inner struct {
			Flag bool `json:"flag"`
		} `json:"inner"`
	}
	for _, tc := range []struct {
		body    string
		mention []string
	}{
		{"", []string{"empty"}},
		{"   \n", []string{"empty"}},
		{`{"name": "a",}`, []string{"line 1, column 14", "invalid character"}},
		{"{\n  \"name\": \"a\"\n  \"count\": 1\n}", []string{"line 3, column 3"}},
		{`{"name": "a"`, []string{"unexpected end"}},
		{`{"name": "a"} {"x":1}`, []string{"line 1, column 15", "after top-level value"}},
		{`{"count": "three"}`, []string{`field "count"`, "an integer", "string"}},
		{`{"inner": {"flag": 1}}`, []string{`field "inner.flag"`, "a boolean", "number"}},
		{`[1,2]`, []string{"the document", "an object", "array"}},
	} {
		w, r := jsonRequest("application/json", tc.body)
		var v target
		err := DecodeJSON(w, r, &v)
		e := apiErr(t, err, 400, CodeBadRequest)
		for _, m := range tc.mention {
			if !strings.Contains(e.Detail, m) {
				t.Errorf("%q: detail %q does not mention %q", tc.body, e.Detail, m)
			}
		}
	}
	// Unknown fields are fine for DecodeJSON (strictness is DecodeResource's).
	w, r := jsonRequest("application/json", `{"name":"a","other":1}`)
	var v target
	if err := DecodeJSON(w, r, &v); err != nil || v.Name != "a" {
		t.Errorf("%v %+v", err, v)
	}
	// A programming error stays internal.
	w, r = jsonRequest("application/json", `{}`)
	if err := DecodeJSON(w, r, v); err == nil || errors.As(err, new(*Error)) {
		t.Errorf("non-pointer target: %v", err)
	}
}

func TestDecodeJSONLimitOutsideServer(t *testing.T) {
	w, r := jsonRequest("application/json", `"`+strings.Repeat("x", DefaultMaxBodyBytes)+`"`)
	var s string
	apiErr(t, DecodeJSON(w, r, &s), 413, CodeRequestTooLarge)
}

type imageAttrs struct {
	BackedUpAt   time.Time `json:"backed_up_at"`
	Name         string    `json:"name"`
	Anonymise    *string   `json:"anonymisation_script"`
	ImageID      ID        `json:"image_id"`
	Protected    bool      `json:"protected"`
	Labels       []string  `json:"labels"`
	NotAttribute string    `json:"-"`
}

func decodeResource(t *testing.T, ct, body, typ string, attrs any) (string, error) {
	t.Helper()
	w, r := jsonRequest(ct, body)
	return DecodeResource(w, r, typ, attrs)
}

func TestDecodeResource(t *testing.T) {
	var a imageAttrs
	id, err := decodeResource(t, "application/vnd.api+json",
		`{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T14:00:00+02:00","name":"prod","anonymisation_script":"UPDATE x","image_id":"3","protected":true}},"meta":{"x":1}}`,
		"images", &a)
	if err != nil {
		t.Fatal(err)
	}
	if id != "" || a.Name != "prod" || a.Anonymise == nil || *a.Anonymise != "UPDATE x" || a.ImageID != 3 || !a.Protected ||
		!a.BackedUpAt.Equal(time.Date(2017, 5, 1, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("%q %+v", id, a)
	}

	// Draupnir's client sends image_id as a string; others send a number.
	a = imageAttrs{}
	id, err = decodeResource(t, "application/json", `{"data":{"type":"instances","id":"17","attributes":{"image_id":42}}}`, "instances", &a)
	if err != nil || a.ImageID != 42 || id != "17" {
		t.Errorf("%v %q %+v", err, id, a)
	}
	id, err = decodeResource(t, "application/json", `{"data":{"type":"instances","id":17}}`, "instances", &a)
	if err != nil || id != "17" {
		t.Errorf("numeric id: %v %q", err, id)
	}
	// No attributes at all, or null.
	for _, body := range []string{`{"data":{"type":"instances"}}`, `{"data":{"type":"instances","attributes":null,"id":null}}`} {
		a = imageAttrs{Name: "kept"}
		if id, err := decodeResource(t, "application/json", body, "instances", &a); err != nil || id != "" || a.Name != "kept" {
			t.Errorf("%s: %v %q %+v", body, err, id, a)
		}
	}
	// nil attrs accepts none.
	if _, err := decodeResource(t, "application/json", `{"data":{"type":"t","attributes":{}}}`, "t", nil); err != nil {
		t.Errorf("nil attrs, empty attributes: %v", err)
	}
	_, err = decodeResource(t, "application/json", `{"data":{"type":"t","attributes":{"x":1}}}`, "t", nil)
	if e := apiErr(t, err, 400, CodeBadRequest); !strings.Contains(e.Detail, `"x"`) {
		t.Errorf("%q", e.Detail)
	}
}

// Draupnir's clients marshal their requests with a JSON:API library and
// structs that have no primary tag: "type" and "id" come empty. These are
// their exact bodies (POST /instances, /images, /access_tokens).
func TestDecodeResourceDraupnirBodies(t *testing.T) {
	var a imageAttrs
	id, err := decodeResource(t, "application/json", `{"data":{"type":"","id":"","attributes":{"image_id":"1"}}}`+"\n", "instances", &a)
	if err != nil || id != "" || a.ImageID != 1 {
		t.Errorf("POST /instances: %v %q %+v", err, id, a)
	}
	a = imageAttrs{}
	id, err = decodeResource(t, "application/json",
		`{"data":{"type":"","id":"","attributes":{"anonymisation_script":"","backed_up_at":"2016-01-02T03:04:05Z"}}}`+"\n", "images", &a)
	if err != nil || id != "" || !a.BackedUpAt.Equal(time.Date(2016, 1, 2, 3, 4, 5, 0, time.UTC)) || a.Anonymise == nil {
		t.Errorf("POST /images: %v %q %+v", err, id, a)
	}
	// A missing or null type is the route's own too.
	for _, body := range []string{`{"data":{"attributes":{"name":"x"}}}`, `{"data":{"type":null,"attributes":{"name":"x"}}}`} {
		a = imageAttrs{}
		if _, err := decodeResource(t, "application/json", body, "images", &a); err != nil || a.Name != "x" {
			t.Errorf("%s: %v %+v", body, err, a)
		}
	}
	// A wrong type that is not empty stays a conflict, pointing at the type.
	_, err = decodeResource(t, "application/json", `{"data":{"type":"instance","attributes":{}}}`, "instances", nil)
	if e := apiErr(t, err, 409, CodeConflict); e.Source.Pointer != "/data/type" {
		t.Errorf("source %+v", e.Source)
	}
}

// A 400 from a body is Draupnir's "Invalid JSON" to a Draupnir client, and
// names the attribute at fault as a JSON pointer.
func TestDecodeErrorsForDraupnir(t *testing.T) {
	var a imageAttrs
	_, err := decodeResource(t, "application/json", `{"data":{"attributes":{"image_id":"abc"}}}`, "instances", &a)
	e := apiErr(t, err, 400, CodeBadRequest)
	if e.Source.Pointer != "/data/attributes/image_id" {
		t.Errorf("source %+v", e.Source)
	}
	if e.Draupnir == nil || *e.Draupnir != wire.DraupnirInvalidJSON {
		t.Errorf("Draupnir's error %+v, want Invalid JSON", e.Draupnir)
	}
	var v struct{}
	w, r := jsonRequest("application/json", `{`)
	if e := apiErr(t, DecodeJSON(w, r, &v), 400, CodeBadRequest); e.Draupnir == nil || e.Draupnir.Title != "Invalid JSON" {
		t.Errorf("DecodeJSON: Draupnir's error %+v", e.Draupnir)
	}
	// Not the 415, 413 or 409: those are sindri's own.
	_, err = decodeResource(t, "text/plain", `{}`, "instances", &a)
	if e := apiErr(t, err, 415, CodeUnsupportedMediaType); e.Draupnir != nil {
		t.Errorf("415 with Draupnir's %+v", e.Draupnir)
	}
	if got := AttributePointer("a/b~c"); got != "/data/attributes/a~1b~0c" {
		t.Errorf("AttributePointer: %q", got)
	}
}

func TestDecodeResourceErrors(t *testing.T) {
	for _, tc := range []struct {
		name, ct, body string
		status         int
		code           string
		mention        []string
	}{
		{"wrong type is 409", "application/json", `{"data":{"type":"instances","attributes":{"name":"x"}}}`,
			409, CodeConflict, []string{`"instances"`, `"images"`}},
		{"unknown attribute", "application/json", `{"data":{"type":"images","attributes":{"name":"x","colour":"red"}}}`,
			400, CodeBadRequest, []string{`unknown attribute "colour"`}},
		{"json:- field is unknown", "application/json", `{"data":{"type":"images","attributes":{"NotAttribute":"x"}}}`,
			400, CodeBadRequest, []string{`unknown attribute "NotAttribute"`}},
		{"wrong attribute type", "application/json", `{"data":{"type":"images","attributes":{"protected":"yes"}}}`,
			400, CodeBadRequest, []string{`attribute "protected"`, "a boolean", "string"}},
		{"array attribute type", "application/json", `{"data":{"type":"images","attributes":{"labels":"a"}}}`,
			400, CodeBadRequest, []string{`attribute "labels"`, "an array"}},
		{"bad time", "application/json", `{"data":{"type":"images","attributes":{"backed_up_at":"yesterday"}}}`,
			400, CodeBadRequest, []string{`attribute "backed_up_at"`, "RFC 3339"}},
		{"time as number", "application/json", `{"data":{"type":"images","attributes":{"backed_up_at":12}}}`,
			400, CodeBadRequest, []string{`attribute "backed_up_at"`, "RFC 3339"}},
		{"bad image_id string", "application/json", `{"data":{"type":"images","attributes":{"image_id":"abc"}}}`,
			400, CodeBadRequest, []string{`attribute "image_id"`, "positive integer", `"abc"`}},
		{"negative image_id", "application/json", `{"data":{"type":"images","attributes":{"image_id":-1}}}`,
			400, CodeBadRequest, []string{`attribute "image_id"`, "positive integer", "-1"}},
		{"fractional image_id", "application/json", `{"data":{"type":"images","attributes":{"image_id":1.5}}}`,
			400, CodeBadRequest, []string{`attribute "image_id"`}},
		{"image_id object", "application/json", `{"data":{"type":"images","attributes":{"image_id":{}}}}`,
			400, CodeBadRequest, []string{`attribute "image_id"`, "object"}},
		{"image_id bool", "application/json", `{"data":{"type":"images","attributes":{"image_id":true}}}`,
			400, CodeBadRequest, []string{`attribute "image_id"`, "boolean"}},
		{"no data", "application/json", `{"meta":{}}`, 400, CodeBadRequest, []string{"no primary data"}},
		{"null data", "application/json", `{"data":null}`, 400, CodeBadRequest, []string{"no primary data"}},
		{"data array", "application/json", `{"data":[{"type":"images"}]}`, 400, CodeBadRequest, []string{"single resource object"}},
		{"type not a string", "application/json", `{"data":{"type":3}}`, 400, CodeBadRequest, []string{"data.type", "a string"}},
		{"id object", "application/json", `{"data":{"type":"images","id":{}}}`, 400, CodeBadRequest, []string{"data.id"}},
		{"attributes array", "application/json", `{"data":{"type":"images","attributes":[]}}`, 400, CodeBadRequest, []string{"must be an object"}},
		{"document array", "application/json", `[]`, 400, CodeBadRequest, []string{"JSON object"}},
		{"malformed", "application/json", `{"data":{"type":"images",}}`, 400, CodeBadRequest, []string{"line 1, column 26"}},
		{"media type parameter", "application/vnd.api+json; charset=utf-8", `{"data":{"type":"images"}}`, 415, CodeUnsupportedMediaType, nil},
		{"form", "application/x-www-form-urlencoded", `data=1`, 415, CodeUnsupportedMediaType, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a imageAttrs
			_, err := decodeResource(t, tc.ct, tc.body, "images", &a)
			e := apiErr(t, err, tc.status, tc.code)
			for _, m := range tc.mention {
				if !strings.Contains(e.Detail, m) {
					t.Errorf("detail %q does not mention %q", e.Detail, m)
				}
			}
		})
	}
}

func TestDecodeResourceHTTP(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	h := s.Handler()
	ct := map[string]string{"Content-Type": "application/json"}
	w := do(h, req{method: "POST", path: "/images", header: ct, body: strings.NewReader(`{"data":{"type":"instances"}}`)})
	wantError(t, w, 409, CodeConflict)
	w = do(h, req{method: "POST", path: "/images", header: ct, body: strings.NewReader(`{"data":{"type":"images","attributes":{"nmae":"x"}}}`)})
	if d := wantError(t, w, 400, CodeBadRequest); !strings.Contains(d, `"nmae"`) {
		t.Errorf("%q", d)
	}
	w = do(h, req{method: "POST", path: "/images", header: map[string]string{"Content-Type": "text/plain"}, body: strings.NewReader(`{}`)})
	wantError(t, w, 415, CodeUnsupportedMediaType)
	w = do(h, req{method: "POST", path: "/images", header: ct, body: strings.NewReader(`{"data":{"type":"images","attributes":{"name":"x"}}}`)})
	if w.Code != 201 {
		t.Errorf("%d %s", w.Code, w.Body)
	}
}

func TestParseID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // 0: rejected
	}{
		{"1", 1},
		{"3", 3},
		{"42", 42},
		{"9223372036854775807", 9223372036854775807},
		{"9223372036854775808", 0},
		{"99999999999999999999", 0},
		{"0", 0},
		{"00", 0},
		{"01", 0},
		{"-1", 0},
		{"+1", 0},
		{" 1", 0},
		{"1 ", 0},
		{"1e3", 0},
		{"1.0", 0},
		{"0x10", 0},
		{"../1", 0},
		{"1/2", 0},
		{"abc", 0},
		{"", 0},
		{"١", 0}, // Arabic-Indic digit one
	} {
		got, err := ParseID(tc.in)
		if tc.want != 0 {
			if err != nil || got != tc.want {
				t.Errorf("ParseID(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
			continue
		}
		e := apiErr(t, err, 404, CodeNotFound)
		if !strings.Contains(e.Detail, "positive integer") {
			t.Errorf("ParseID(%q): detail %q", tc.in, e.Detail)
		}
		if got != 0 {
			t.Errorf("ParseID(%q) = %d with an error", tc.in, got)
		}
	}
}

func TestPathID(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	h := s.Handler()
	if w := do(h, req{method: "GET", path: "/images/12"}); w.Code != 200 || w.Body.String() != `{"id":"12"}` {
		t.Errorf("%d %s", w.Code, w.Body)
	}
	for _, p := range []string{"/images/0", "/images/-1", "/images/01", "/images/1e3", "/images/abc", "/images/99999999999999999999"} {
		wantError(t, do(h, req{method: "GET", path: p}), 404, CodeNotFound)
	}
	// A route without the variable is a programming error: 500.
	r := mux.SetURLVars(httptest.NewRequest("GET", "/", nil), map[string]string{})
	if _, err := PathID(r, "id"); err == nil || errors.As(err, new(*Error)) {
		t.Errorf("missing var: %v", err)
	}
}
