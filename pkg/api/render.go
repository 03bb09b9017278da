package api

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"time"

	"github.com/google/jsonapi"
	"github.com/sindri-db/sindri/pkg/api/wire"
)

// WriteResource writes v, a pointer to a struct with google/jsonapi tags, as
// a JSON:API document {"data":{…},"included":[…]} with status, and
// Content-Type application/vnd.api+json, or application/json for a
// Draupnir client (the request's wire format, recorded by the server's
// middleware). With
// jsonapi v1.0.0:
//
//   - `jsonapi:"primary,images"` on an int64 id renders "id":"3" (a JSON
//     string), as the contract wants.
//   - `jsonapi:"attr,created_at,iso8601"` renders a time.Time in UTC,
//     truncated to seconds: "2017-05-01T12:00:00Z". Without iso8601 (or
//     rfc3339) a time renders as Unix seconds, so always tag times. A zero
//     time.Time is left out (even without omitempty); a nil *time.Time
//     renders null unless omitempty: use *time.Time for a nullable time such
//     as expires_at.
//   - `jsonapi:"relation,credentials"` on a *Credentials renders
//     "relationships":{"credentials":{"data":{"type":"credentials","id":"3"}}}
//     and the full credentials resource in "included" (a nil pointer renders
//     {"data":null}; with omitempty it is left out). The order of "included"
//     is not deterministic.
//   - other attributes are encoded with encoding/json (numbers stay numbers).
//
// The document is built before anything is written, so a marshalling error
// (a bad tag: a programming error) still gets a clean 500, and is returned.
func WriteResource(w http.ResponseWriter, status int, v any) error {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return writeMarshalError(w, fmt.Errorf("api.WriteResource: want a pointer to a struct, got %T", v))
	}
	return writePayload(w, status, v)
}

// WriteResources writes list, a slice of pointers to structs with
// google/jsonapi tags, as {"data":[…],"included":[…]} with status (see
// WriteResource). A nil or empty list renders "data":[].
func WriteResources(w http.ResponseWriter, status int, list any) error {
	rv := reflect.ValueOf(list)
	if !rv.IsValid() {
		return writePayload(w, status, []any{})
	}
	if rv.Kind() != reflect.Slice || rv.Type().Elem().Kind() != reflect.Pointer ||
		rv.Type().Elem().Elem().Kind() != reflect.Struct {
		return writeMarshalError(w, fmt.Errorf("api.WriteResources: want a slice of pointers to structs, got %T", list))
	}
	for i := 0; i < rv.Len(); i++ {
		if rv.Index(i).IsNil() {
			return writeMarshalError(w, fmt.Errorf("api.WriteResources: element %d of the %T is nil", i, list))
		}
	}
	return writePayload(w, status, list)
}

func writePayload(w http.ResponseWriter, status int, v any) error {
	var buf bytes.Buffer
	if err := jsonapi.MarshalPayload(&buf, v); err != nil {
		return writeMarshalError(w, fmt.Errorf("api: marshalling %T: %w", v, err))
	}
	h := w.Header()
	h.Set("Content-Type", formatOf(w).MediaType())
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, err := w.Write(buf.Bytes())
	return err
}

// writeMarshalError logs err and writes a 500 (these helpers have no
// *http.Request; the request id comes from the response header that the
// server set).
func writeMarshalError(w http.ResponseWriter, err error) error {
	id := w.Header().Get(RequestIDHeader)
	log := slog.Default().With("request_id", id)
	if t := findTracker(w); t != nil && t.logger != nil {
		log = t.logger
	}
	log.Error("rendering a response failed", "error", err.Error())
	wire.WriteError(w, formatOf(w), InternalServerError(id).wire())
	return err
}

// Error codes of ServeContent's refusals.
const (
	CodeRangeNotSatisfiable = "range_not_satisfiable"
	CodePreconditionFailed  = "precondition_failed"
)

// ServeContent is http.ServeContent (Range, If-Range, If-Match, ETag and
// Last-Modified handling, sendfile) whose refusals, which net/http writes
// as plain text or an empty body, are written with WriteError instead: a
// 416 range_not_satisfiable (keeping the Content-Range header that gives
// the size), a 412 precondition_failed, in the request's wire format.
func ServeContent(w http.ResponseWriter, r *http.Request, name string, modtime time.Time, content io.ReadSeeker) {
	c := &contentRefusals{ResponseWriter: w}
	http.ServeContent(c, r, name, modtime, content)
	switch c.status {
	case 0:
	case http.StatusRequestedRangeNotSatisfiable:
		WriteError(w, r, NewError(c.status, CodeRangeNotSatisfiable, "Range not satisfiable",
			"the Range header asks for bytes past the end; Content-Range gives the size"))
	case http.StatusPreconditionFailed:
		WriteError(w, r, NewError(c.status, CodePreconditionFailed, "Precondition failed",
			"the If-Match or If-Unmodified-Since header does not match the current content"))
	default: // a 500: the content could not be read or sized
		WriteError(w, r, fmt.Errorf("api.ServeContent: net/http answered %d", c.status))
	}
}

// contentRefusals holds back a status of 400 or more and the body that
// goes with it, for ServeContent to write its own error instead.
type contentRefusals struct {
	http.ResponseWriter
	status int
}

func (c *contentRefusals) WriteHeader(code int) {
	if code >= 400 {
		c.status = code
		return
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *contentRefusals) Write(p []byte) (int, error) {
	if c.status != 0 {
		return len(p), nil
	}
	return c.ResponseWriter.Write(p)
}

// ReadFrom keeps sendfile for the content (the tracker's ReadFrom).
func (c *contentRefusals) ReadFrom(src io.Reader) (int64, error) {
	if c.status != 0 {
		return io.Copy(io.Discard, src)
	}
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(struct{ io.Writer }{c.ResponseWriter}, src)
}

func (c *contentRefusals) Unwrap() http.ResponseWriter { return c.ResponseWriter }
