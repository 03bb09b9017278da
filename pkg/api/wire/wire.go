// Package wire chooses the wire format of each request's answers and
// writes sindri's error objects in it. It is a leaf package, so that every
// writer of an API error (pkg/api and pkg/auth) renders errors the same
// way.
//
// The request's Draupnir-Version header chooses the format:
//
//   - JSONAPI, sindri's own (API 5.4), for a request whose header names 5.4
//     or a later 5.x (sindri's clients), and for one without the header
//     (curl, a browser: Draupnir's clients always send it). JSON:API
//     documents with Content-Type application/vnd.api+json; an error is
//     {"errors":[{"status","code","title","detail","source"}]}.
//   - Draupnir, what Draupnir's own clients read, for a request whose
//     header holds anything else: 5.0-5.3, an older or other major, or a
//     value that is no version at all (a Draupnir client built without its
//     version sends an empty one). Content-Type application/json on every
//     response (204s too), and an error as one bare object {"id","status",
//     "code","title","detail","source"}, with Draupnir's own id, code,
//     title, detail and source for the errors Draupnir had (unauthorized,
//     not found, image not ready, …) and sindri's code (as id and code),
//     title and detail for the others. So a client refused for its version
//     still reads why.
//
// Success documents are the same JSON:API documents in both formats; only
// their Content-Type differs.
package wire

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// VersionHeader is the request and response header that carries the API
// version.
const VersionHeader = "Draupnir-Version"

// Media types of the two formats.
const (
	JSONAPIMediaType = "application/vnd.api+json"
	JSONMediaType    = "application/json"
)

// Format is a wire format.
type Format int

const (
	// JSONAPI is sindri's format (API 5.4).
	JSONAPI Format = iota
	// Draupnir is Draupnir's format (its 5.3 and older clients).
	Draupnir
)

func (f Format) String() string {
	if f == Draupnir {
		return "draupnir"
	}
	return "jsonapi"
}

// MediaType is the Content-Type of f's JSON responses.
func (f Format) MediaType() string {
	if f == Draupnir {
		return JSONMediaType
	}
	return JSONAPIMediaType
}

// The first API version that gets JSON:API: 5.4.
const (
	jsonAPIMajor = 5
	jsonAPIMinor = 4
)

// FormatOf is the format of r's answers, chosen by the first value of its
// Draupnir-Version header (see the package doc).
func FormatOf(r *http.Request) Format {
	values := r.Header.Values(VersionHeader)
	if len(values) == 0 {
		return JSONAPI
	}
	major, minor, ok := ParseVersion(values[0])
	if ok && major == jsonAPIMajor && minor >= jsonAPIMinor {
		return JSONAPI
	}
	return Draupnir
}

// ParseVersion parses MAJOR.MINOR.PATCH: three non-empty decimal numbers
// without sign or leading zeros.
func ParseVersion(s string) (major, minor int, ok bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return 0, 0, false
	}
	var n [3]int
	for i, p := range parts {
		if p == "" || len(p) > 9 || (len(p) > 1 && p[0] == '0') {
			return 0, 0, false
		}
		for j := 0; j < len(p); j++ {
			if p[j] < '0' || p[j] > '9' {
				return 0, 0, false
			}
		}
		n[i], _ = strconv.Atoi(p)
	}
	return n[0], n[1], true
}

// Source names the part of the request an error is about (JSON:API's
// source member): a JSON pointer into the body, or a query or attribute
// parameter.
type Source struct {
	Pointer   string `json:"pointer,omitempty"`
	Parameter string `json:"parameter,omitempty"`
}

// Error is an API error, with what both formats need.
type Error struct {
	Status int    // HTTP status
	Code   string // sindri's machine-readable code, e.g. "resource_not_found"
	Title  string // short summary, the same for every occurrence of Code
	Detail string // this occurrence, for humans
	Source Source // optional
	// Draupnir, if set, is the object a Draupnir client gets instead of
	// one made from the fields above: Draupnir's own for an error it had
	// under a code sindri shares with other errors (bad_request). Errors
	// whose code Draupnir used for one error only (see draupnirByCode) get
	// Draupnir's object without it.
	Draupnir *DraupnirError
}

// DraupnirError is Draupnir's error object (gocardless/draupnir,
// pkg/server/api/errors.go). Source is always written, {} when empty, as
// Draupnir's encoder does.
type DraupnirError struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Code   string `json:"code"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Source Source `json:"source"`
}

// Draupnir's errors that sindri produces, with Draupnir's wording.
var (
	DraupnirUnauthorized = DraupnirError{ID: "unauthorized", Code: "unauthorized", Status: "401",
		Title: "Unauthorized", Detail: "You do not have permission to view this resource"}
	DraupnirNotFound = DraupnirError{ID: "resource_not_found", Code: "resource_not_found", Status: "404",
		Title: "Resource Not Found", Detail: "The resource you requested could not be found"}
	// DraupnirImageNotFound is POST /instances naming an unknown image.
	DraupnirImageNotFound = DraupnirError{ID: "resource_not_found", Code: "resource_not_found", Status: "404",
		Title: "Image Not Found", Detail: "The image you specified could not be found"}
	// DraupnirBadImageID is POST /instances with an image_id that is
	// missing or not an id.
	DraupnirBadImageID = DraupnirError{ID: "bad_request", Code: "bad_request", Status: "400",
		Title: "Bad Request", Detail: "The image ID provided is not valid", Source: Source{Parameter: "image_id"}}
	// DraupnirImageNotReady is POST /instances naming an image that is not
	// ready.
	DraupnirImageNotReady = DraupnirError{ID: "unprocessable_entity", Code: "unprocessable_entity", Status: "422",
		Title: "Image Not Ready", Detail: "The specified image is not ready to be used", Source: Source{Parameter: "image_id"}}
	DraupnirImageHasInstances = DraupnirError{ID: "unprocessable_entity", Code: "unprocessable_entity", Status: "422",
		Title: "Image Has Instances", Detail: "Cannot delete an image that has instances"}
	// DraupnirInvalidJSON is a request body that cannot be read as the
	// route's resource.
	DraupnirInvalidJSON = DraupnirError{ID: "bad_request", Code: "bad_request", Status: "400",
		Title: "Invalid JSON", Detail: "Your JSON is malformed"}
	DraupnirInternalServerError = DraupnirError{ID: "internal_server_error", Code: "internal_server_error", Status: "500",
		Title: "Internal Server Error", Detail: "Something went wrong :("}
	DraupnirMissingAPIVersion = DraupnirError{ID: "missing_api_version_header", Code: "missing_api_version_header", Status: "400",
		Title: "Missing API Version Header", Detail: "No API version specified in Draupnir-Version header"}
)

// DraupnirInvalidAPIVersion is Draupnir's answer to a request with version
// got, which a server of API version server does not serve.
func DraupnirInvalidAPIVersion(got, server string) *DraupnirError {
	return &DraupnirError{ID: "invalid_api_version", Code: "invalid_api_version", Status: "400",
		Title: "Invalid API Version", Detail: "Specified API version (" + got + ") does not match server version (" + server + ")"}
}

// draupnirByCode is Draupnir's object for each of sindri's codes that
// Draupnir had exactly one error for, so that every writer of such an
// error (a handler's NotFound, a registered error class, the router's 404)
// speaks Draupnir's words to a Draupnir client without saying so.
var draupnirByCode = map[string]*DraupnirError{
	"unauthorized":               &DraupnirUnauthorized,
	"resource_not_found":         &DraupnirNotFound,
	"image_not_ready":            &DraupnirImageNotReady,
	"image_has_instances":        &DraupnirImageHasInstances,
	"internal_server_error":      &DraupnirInternalServerError,
	"missing_api_version_header": &DraupnirMissingAPIVersion,
}

// ForDraupnir is the object a Draupnir client gets for e: e.Draupnir if
// set, else Draupnir's own for e's code, else e's own fields with its code
// as id. Its status is always e's, the response's.
func (e Error) ForDraupnir() DraupnirError {
	d := DraupnirError{ID: e.Code, Code: e.Code, Title: e.Title, Detail: e.Detail, Source: e.Source}
	if e.Draupnir != nil {
		d = *e.Draupnir
	} else if own, ok := draupnirByCode[e.Code]; ok {
		d = *own
	}
	d.Status = strconv.Itoa(e.Status)
	return d
}

// ErrorObject is one error of a JSON:API error document
// {"errors":[…]}, as sindri writes it and its client reads it.
type ErrorObject struct {
	Status string  `json:"status"`
	Code   string  `json:"code"`
	Title  string  `json:"title"`
	Detail string  `json:"detail,omitempty"`
	Source *Source `json:"source,omitempty"`
}

// ReadError is the first error of the JSON:API error document body, if
// body is one.
func ReadError(body []byte) (ErrorObject, bool) {
	var doc struct {
		Errors []ErrorObject `json:"errors"`
	}
	if json.Unmarshal(body, &doc) != nil || len(doc.Errors) == 0 {
		return ErrorObject{}, false
	}
	return doc.Errors[0], true
}

// Body is e as a response body in format f, with a final newline.
func (e Error) Body(f Format) []byte {
	var v any
	if f == Draupnir {
		v = e.ForDraupnir()
	} else {
		obj := ErrorObject{Status: strconv.Itoa(e.Status), Code: e.Code, Title: e.Title, Detail: e.Detail}
		if e.Source != (Source{}) {
			src := e.Source
			obj.Source = &src
		}
		v = struct {
			Errors []ErrorObject `json:"errors"`
		}{[]ErrorObject{obj}}
	}
	body, err := json.Marshal(v)
	if err != nil { // cannot happen: only strings
		body = []byte(`{"errors":[{"status":"500","code":"internal_server_error","title":"Internal server error"}]}`)
	}
	return append(body, '\n')
}

// WriteError answers with e in format f: its status, Content-Type,
// Content-Length and X-Content-Type-Options: nosniff (other headers, such
// as Cache-Control or WWW-Authenticate, are the caller's). The HTTP status
// is e.Status in both formats.
func WriteError(w http.ResponseWriter, f Format, e Error) {
	body := e.Body(f)
	h := w.Header()
	h.Set("Content-Type", f.MediaType())
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	w.Write(body)
}
