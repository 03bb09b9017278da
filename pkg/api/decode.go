package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/sindri-db/sindri/pkg/api/wire"
)

// CodeRequestTimeout is 408: the body did not arrive within
// Options.BodyReadTimeout.
const CodeRequestTimeout = "request_timeout"

// checkContentType accepts application/json (with any parameters, e.g.
// charset) and application/vnd.api+json without parameters: JSON:API 1.0
// says a server MUST answer 415 to the JSON:API media type with parameters.
func checkContentType(ct string) *Error {
	const want = "Content-Type must be application/json or application/vnd.api+json"
	if ct == "" {
		return UnsupportedMediaType(want + "; the request has none")
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return UnsupportedMediaType(fmt.Sprintf("%s; got %q", want, ct))
	}
	switch {
	case mt == "application/json":
		return nil
	case mt == MediaType && len(params) == 0:
		return nil
	case mt == MediaType:
		return UnsupportedMediaType(fmt.Sprintf("%s without media type parameters (JSON:API 1.0); got %q", MediaType, ct))
	}
	return UnsupportedMediaType(fmt.Sprintf("%s; got %q", want, ct))
}

// readJSONBody checks the Content-Type and reads the whole body, at most the
// server's MaxBodyBytes (DefaultMaxBodyBytes outside a Server), within its
// BodyReadTimeout.
func readJSONBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if e := checkContentType(r.Header.Get("Content-Type")); e != nil {
		return nil, e
	}
	ctx := r.Context()
	limit, ok := ctx.Value(keyBodyLimit).(int64)
	if !ok {
		limit = DefaultMaxBodyBytes
	}
	body := r.Body
	if body == nil {
		body = http.NoBody
	}
	if limit > 0 {
		body = http.MaxBytesReader(w, body, limit)
	}
	if d, _ := ctx.Value(keyBodyTimeout).(time.Duration); d > 0 {
		rc := http.NewResponseController(w)
		if rc.SetReadDeadline(time.Now().Add(d)) == nil {
			// The deadline must not outlive the body: a long handler's
			// context would be cancelled if it expired in net/http's
			// background read. net/http (1.26) clears it itself when the
			// body hits EOF; clearing it here too covers the error paths
			// and does not depend on that.
			defer rc.SetReadDeadline(time.Time{})
		}
	}
	data, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return nil, RequestTooLarge(mbe.Limit)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, NewError(http.StatusRequestTimeout, CodeRequestTimeout, "Request timeout",
				"the request body did not arrive in time")
		}
		return nil, BadRequest("reading the request body: " + err.Error())
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, BadRequest("the request body is empty; expected a JSON document")
	}
	return data, nil
}

// DecodeJSON reads r's body as one JSON value into v (encoding/json rules:
// unknown object members are ignored). Errors are *Error, ready for
// WriteError: 415 unsupported_media_type unless Content-Type is
// application/json (any parameters) or application/vnd.api+json (no
// parameters); 413 request_too_large over the limit; 408 if the body is too
// slow; 400 bad_request for an empty body, malformed JSON (the detail gives
// line and column), trailing data, a value of the wrong type (the detail
// names the field), or a string holding NUL (\u0000, which PostgreSQL text
// cannot store; the detail names the field).
//
// A Draupnir client is told of any of these 400s as Draupnir's "Invalid
// JSON" (wire.DraupnirInvalidJSON).
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return asInvalidJSON(decodeJSON(w, r, v))
}

// asInvalidJSON marks a 400 bad_request from reading a request body as
// Draupnir's "Invalid JSON" for a Draupnir client: what Draupnir answered
// to every body its JSON:API library could not read.
func asInvalidJSON(err error) error {
	var e *Error
	if errors.As(err, &e) && e.Code == CodeBadRequest && e.Draupnir == nil {
		return e.WithDraupnir(wire.DraupnirInvalidJSON)
	}
	return err
}

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	data, err := readJSONBody(w, r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return jsonError(data, err)
	}
	if path, ok := findNUL(data); ok {
		what := "the document"
		if path != "" {
			what = fmt.Sprintf("field %q", path)
		}
		return BadRequest(what + " must not contain a NUL character (\\u0000)")
	}
	return nil
}

// findNUL reports whether the JSON document data holds a string (a value
// or a member name) with a NUL character, and where: a dotted path such as
// "attributes.name" or "list[2]" ("" for the document itself). PostgreSQL
// text cannot hold NUL (SQLSTATE 22021), so such a string is refused up
// front as a 400 naming it rather than failing in the database. JSON cannot
// carry a raw NUL byte, only the escape \u0000, so a document without that
// escape is passed at once.
func findNUL(data []byte) (string, bool) {
	if !bytes.Contains(data, []byte(`\u0000`)) {
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return "", false
	}
	return nulIn(v, "")
}

func nulIn(v any, path string) (string, bool) {
	switch v := v.(type) {
	case string:
		return path, strings.IndexByte(v, 0) >= 0
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys) // the same answer every time
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if strings.IndexByte(k, 0) >= 0 {
				return p, true
			}
			if where, ok := nulIn(v[k], p); ok {
				return where, true
			}
		}
	case []any:
		for i, e := range v {
			if where, ok := nulIn(e, fmt.Sprintf("%s[%d]", path, i)); ok {
				return where, true
			}
		}
	}
	return "", false
}

// position is the 1-based line and column of the byte at offset off in
// data. (encoding/json's offsets are "after reading Offset bytes", so the
// offending byte is at Offset-1.)
func position(data []byte, off int64) (line, col int) {
	if off < 0 {
		off = 0
	}
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// jsonError turns an encoding/json error over data into a 400 that says
// where; an *json.InvalidUnmarshalError (a programming error) stays
// internal.
func jsonError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var inv *json.InvalidUnmarshalError
	switch {
	case errors.As(err, &inv):
		return err
	case errors.As(err, &syn):
		if syn.Offset >= int64(len(data)) && strings.Contains(syn.Error(), "unexpected end") {
			return BadRequest("malformed JSON: unexpected end of the document")
		}
		line, col := position(data, syn.Offset-1)
		return BadRequest(fmt.Sprintf("malformed JSON at line %d, column %d: %s", line, col, syn.Error()))
	case errors.As(err, &typ):
		line, col := position(data, typ.Offset-1)
		what := "the document"
		if typ.Field != "" {
			what = fmt.Sprintf("field %q", typ.Field)
		}
		return BadRequest(fmt.Sprintf("at line %d, column %d: %s must be %s, got JSON %s", line, col, what, jsonKind(typ.Type), typ.Value))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return BadRequest("unknown field " + name)
	}
	return BadRequest("invalid JSON document: " + strings.TrimPrefix(err.Error(), "json: "))
}

var (
	idType   = reflect.TypeFor[ID]()
	timeType = reflect.TypeFor[time.Time]()
)

// jsonKind describes, for a client, the JSON a Go type takes.
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "a different type"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case idType:
		return `a positive integer id (a JSON string such as "3", or a number)`
	case timeType:
		return `an RFC 3339 timestamp (a JSON string such as "2017-05-01T12:00:00Z")`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a " + t.String()
}

// DecodeResource reads a JSON:API document {"data":{"type":T,"id":…,
// "attributes":{…}}} (as DecodeJSON: same media types, limit and 400s) and
// decodes its attributes strictly into attrs, a pointer to a struct with
// encoding/json tags (time.Time takes RFC 3339; use ID for ids sent as
// strings or numbers). It returns data.id ("" when absent; a JSON number is
// returned as its digits), for the handler to compare with the URL.
//
//   - data missing, null or not an object: 400 bad_request.
//   - type missing, null or "": taken as typ. Draupnir's clients send
//     "type":"" (their request structs have no JSON:API type).
//   - type ≠ typ: 409 conflict. JSON:API 1.0 requires 409 Conflict when a
//     resource object's type does not match the endpoint's collection; a
//     400 would also do, but 409 is what a JSON:API client expects.
//   - id "" or null: returned as "" (Draupnir's clients send "id":"" on
//     create).
//   - an attribute attrs does not have: 400 bad_request naming it; an
//     attribute of the wrong type: 400 naming it and the expected type. A
//     nil attrs accepts no attributes at all. Both carry the attribute's
//     JSON pointer as source ("/data/attributes/image_id").
//   - a string attribute (or a string inside one) holding NUL (\u0000):
//     400 bad_request naming the attribute; PostgreSQL text cannot store it.
//   - a time attribute outside the years 0000-9999 in UTC (RFC 3339 allows
//     9999-12-31T23:00:00-02:00): 400 bad_request naming it.
//   - attributes absent or null: attrs is left as is (the handler checks
//     required attributes). relationships, links and meta are ignored.
//
// A Draupnir client is told of any of these 400s as Draupnir's "Invalid
// JSON" (wire.DraupnirInvalidJSON).
func DecodeResource(w http.ResponseWriter, r *http.Request, typ string, attrs any) (id string, err error) {
	id, err = decodeResourceDocument(w, r, typ, attrs)
	return id, asInvalidJSON(err)
}

func decodeResourceDocument(w http.ResponseWriter, r *http.Request, typ string, attrs any) (id string, err error) {
	data, err := readJSONBody(w, r)
	if err != nil {
		return "", err
	}
	var doc struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		var typErr *json.UnmarshalTypeError
		if errors.As(err, &typErr) && typErr.Field == "" {
			return "", BadRequest(fmt.Sprintf("the document must be a JSON object with a data member, got JSON %s", typErr.Value))
		}
		return "", jsonError(data, err)
	}
	raw := bytes.TrimSpace(doc.Data)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", BadRequest(fmt.Sprintf(`the document has no primary data; expected {"data":{"type":%q,"attributes":{...}}}`, typ))
	}
	if raw[0] != '{' {
		return "", BadRequest("data must be a single resource object")
	}
	var res struct {
		Type       *string         `json:"type"`
		ID         json.RawMessage `json:"id"`
		Attributes json.RawMessage `json:"attributes"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		var typErr *json.UnmarshalTypeError
		if errors.As(err, &typErr) {
			return "", BadRequest(fmt.Sprintf("data.%s must be %s, got JSON %s", typErr.Field, jsonKind(typErr.Type), typErr.Value))
		}
		return "", jsonError(raw, err)
	}
	if res.Type != nil && *res.Type != "" && *res.Type != typ {
		e := Conflict(fmt.Sprintf("data.type is %q, but this endpoint takes %q", *res.Type, typ))
		e.Source.Pointer = "/data/type"
		return "", e
	}
	if rawID := bytes.TrimSpace(res.ID); len(rawID) > 0 && !bytes.Equal(rawID, []byte("null")) {
		switch rawID[0] {
		case '"':
			if err := json.Unmarshal(rawID, &id); err != nil {
				return "", BadRequest("data.id: " + err.Error())
			}
		case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			id = string(rawID)
		default:
			return "", BadRequest("data.id must be a string")
		}
	}
	rawAttrs := bytes.TrimSpace(res.Attributes)
	if len(rawAttrs) == 0 || bytes.Equal(rawAttrs, []byte("null")) {
		return id, nil
	}
	if rawAttrs[0] != '{' {
		return "", BadRequest("data.attributes must be an object")
	}
	if attrs == nil {
		attrs = &struct{}{}
	}
	if err := decodeStrict(rawAttrs, attrs); err != nil {
		var inv *json.InvalidUnmarshalError
		if errors.As(err, &inv) {
			return "", err
		}
		return "", attributeError(rawAttrs, reflect.TypeOf(attrs), err)
	}
	if path, ok := findNUL(rawAttrs); ok {
		return "", BadRequest(fmt.Sprintf("attribute %q must not contain a NUL character (\\u0000)", path))
	}
	if err := checkTimes(attrs); err != nil {
		return "", err
	}
	return id, nil
}

// checkTimes refuses a time attribute (a time.Time or *time.Time field of
// the struct attrs points to) that lies outside the years 0000-9999 in UTC:
// RFC 3339 allows an offset of up to a day, so 9999-12-31T23:00:00-02:00
// parses, but in UTC it is in year 10000, which the API could not write back
// as RFC 3339 (and a client listing it would fail to parse the list).
func checkTimes(attrs any) error {
	v := reflect.ValueOf(attrs)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	v = v.Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		fv := v.Field(i)
		if !f.IsExported() {
			continue
		}
		if fv.Kind() == reflect.Pointer {
			if fv.IsNil() {
				continue
			}
			fv = fv.Elem()
		}
		if fv.Type() != timeType {
			continue
		}
		t := fv.Interface().(time.Time)
		if y := t.UTC().Year(); y < 0 || y > 9999 {
			name := f.Name
			if k, _, _ := strings.Cut(f.Tag.Get("json"), ","); k != "" && k != "-" {
				name = k
			}
			return attributeBadRequest(name, fmt.Sprintf("attribute %q must lie between 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z, got %s in UTC",
				name, t.UTC().Format(time.RFC3339)))
		}
	}
	return nil
}

// AttributePointer is the JSON pointer to attribute name of a request's
// resource object, e.g. "/data/attributes/image_id": the source of an
// error about that attribute.
func AttributePointer(name string) string {
	return "/data/attributes/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(name)
}

// attributeBadRequest is a 400 bad_request about attribute name, with its
// pointer as source.
func attributeBadRequest(name, detail string) *Error {
	e := BadRequest(detail)
	e.Source.Pointer = AttributePointer(name)
	return e
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// attributeError finds which attribute of the object rawAttrs made decoding
// into ptrType fail (decoding them one at a time) and names it.
func attributeError(rawAttrs []byte, ptrType reflect.Type, err error) error {
	var members map[string]json.RawMessage
	if json.Unmarshal(rawAttrs, &members) == nil && ptrType.Kind() == reflect.Pointer {
		for name, value := range members {
			one, _ := json.Marshal(map[string]json.RawMessage{name: value})
			fresh := reflect.New(ptrType.Elem()).Interface()
			e := decodeStrict(one, fresh)
			if e == nil {
				continue
			}
			if _, ok := strings.CutPrefix(e.Error(), "json: unknown field "); ok {
				return attributeBadRequest(name, fmt.Sprintf("unknown attribute %q", name))
			}
			want := jsonKind(fieldType(ptrType.Elem(), name))
			var typ *json.UnmarshalTypeError
			if errors.As(e, &typ) {
				return attributeBadRequest(name, fmt.Sprintf("attribute %q must be %s, got JSON %s", name, want, typ.Value))
			}
			if fieldType(ptrType.Elem(), name) != nil {
				return attributeBadRequest(name, fmt.Sprintf("attribute %q must be %s: %s", name, want, strings.TrimPrefix(e.Error(), "json: ")))
			}
			return attributeBadRequest(name, fmt.Sprintf("attribute %q: %s", name, strings.TrimPrefix(e.Error(), "json: ")))
		}
	}
	return BadRequest("data.attributes: " + strings.TrimPrefix(err.Error(), "json: "))
}

// fieldType is the type of the field of struct type t that encoding/json
// fills from the member name (nil if none, or t is not a struct).
func fieldType(t reflect.Type, name string) reflect.Type {
	if t.Kind() != reflect.Struct {
		return nil
	}
	var fold reflect.Type
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		key := f.Name
		if tag, ok := f.Tag.Lookup("json"); ok {
			k, _, _ := strings.Cut(tag, ",")
			if k == "-" {
				continue
			}
			if k != "" {
				key = k
			}
		}
		if key == name {
			return f.Type
		}
		if fold == nil && strings.EqualFold(key, name) {
			fold = f.Type
		}
	}
	return fold
}

// ParseID parses a resource id from a URL path: a positive decimal int64
// in canonical form, digits only ("1", "42"; not "0", "-1", "+1", "01",
// " 1", "1e3", "../1", nor anything past 9223372036854775807). Leading
// zeros are refused so that each resource has exactly one URL.
//
// The error is a 404 resource_not_found, not a 400: to a client an id in a
// path is an opaque name (JSON:API ids are strings), and /images/abc, like
// /images/0 or /images/999, simply names no image. (A malformed id in a
// request body is a 400 bad_request instead; see ID.)
func ParseID(s string) (int64, error) {
	n, ok := parsePositive(s)
	if !ok {
		return 0, NotFound(fmt.Sprintf("no resource has the id %q; ids are positive integers", s))
	}
	return n, nil
}

func parsePositive(s string) (int64, bool) {
	if s == "" || len(s) > 19 || s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

// PathID parses the mux path variable name ("{id}") with ParseID. A route
// without that variable is a programming error (500).
func PathID(r *http.Request, name string) (int64, error) {
	s, ok := mux.Vars(r)[name]
	if !ok {
		return 0, fmt.Errorf("api: route %s has no path variable %q", routeKey(r), name)
	}
	return ParseID(s)
}

// ID is a resource id in a request's attributes, e.g. POST /instances'
// image_id: Draupnir clients send it as a JSON string ("3"), others as a
// number (3); both decode, with ParseID's rules. Anything else makes
// DecodeResource fail with 400 bad_request naming the attribute. JSON null
// leaves it unchanged (0 = absent). It marshals as a number.
type ID int64

// UnmarshalJSON implements json.Unmarshaler.
func (id *ID) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	s := string(b)
	value := "number " + s
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		value = "string " + strconv.Quote(s)
	} else if len(b) > 0 && (b[0] == '{' || b[0] == '[' || b[0] == 't' || b[0] == 'f') {
		value = map[byte]string{'{': "object", '[': "array", 't': "boolean", 'f': "boolean"}[b[0]]
	}
	n, ok := parsePositive(s)
	if !ok {
		// An UnmarshalTypeError, so that encoding/json adds the field name.
		return &json.UnmarshalTypeError{Value: value, Type: idType}
	}
	*id = ID(n)
	return nil
}
