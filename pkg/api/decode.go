package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"time"

	"github.com/gorilla/mux"
	"github.com/sindri-db/sindri/pkg/api/resource"
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
	data, err := readJSONBody(w, r)
	if err == nil {
		err = requestError(resource.DecodeJSON(data, v))
	}
	return asInvalidJSON(err)
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

// requestError is the *Error of a body the resource decoder refused: 409
// conflict for a resource of another type, else 400 bad_request, with the
// member at fault as the source. Other errors (programming errors) stay
// as they are.
func requestError(err error) error {
	var de *resource.DecodeError
	if !errors.As(err, &de) {
		return err
	}
	e := BadRequest(de.Detail)
	if de.Conflict {
		e = Conflict(de.Detail)
	}
	e.Source.Pointer = de.Pointer
	return e
}

// DecodeResource reads a JSON:API document {"data":{"type":T,"id":…,
// "attributes":{…}}} (as DecodeJSON: same media types, limit and 400s) and
// decodes its attributes strictly into attrs, a pointer to a struct with
// encoding/json tags (time.Time takes RFC 3339; use ID for ids sent as
// strings or numbers), with resource.DecodeRequest, the decoder the
// client's responses go through too. It returns data.id ("" when absent;
// a JSON number is returned as its digits), for the handler to compare
// with the URL.
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
	data, err := readJSONBody(w, r)
	if err == nil {
		id, err = resource.DecodeRequest(data, typ, attrs)
		err = requestError(err)
	}
	if err != nil {
		return "", asInvalidJSON(err)
	}
	return id, nil
}

// AttributePointer is the JSON pointer to attribute name of a request's
// resource object, e.g. "/data/attributes/image_id": the source of an
// error about that attribute.
func AttributePointer(name string) string { return resource.Pointer(name) }

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
	n, ok := resource.ParsePositive(s)
	if !ok {
		return 0, NotFound(fmt.Sprintf("no resource has the id %q; ids are positive integers", s))
	}
	return n, nil
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

// ID is a resource id in a request's attributes (resource.ID): a JSON
// string ("3", as Draupnir's clients send it) or a number, with ParseID's
// rules; anything else makes DecodeResource fail with 400 bad_request
// naming the attribute.
type ID = resource.ID
