package api

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/version"
)

// Error codes of the contract (/work/shared/api.md) and of this package.
const (
	CodeBadRequest              = "bad_request"
	CodeUnauthorized            = "unauthorized"
	CodeForbidden               = "forbidden"
	CodeNotFound                = "resource_not_found"
	CodeMethodNotAllowed        = "method_not_allowed"
	CodeConflict                = "conflict"
	CodeMissingAPIVersionHeader = "missing_api_version_header"
	CodeInvalidAPIVersion       = "invalid_api_version"
	CodeUnsupportedMediaType    = "unsupported_media_type"
	CodeRequestTooLarge         = "request_too_large"
	CodeImageNotReady           = "image_not_ready"
	CodeImageHasInstances       = "image_has_instances"
	CodeImageFinaliseFailed     = "image_finalise_failed"
	CodeNoFreePort              = "no_free_port"
	CodeNoDiskSpace             = "no_disk_space"
	CodeQuotaExceeded           = "quota_exceeded"
	CodeMetadataUnavailable     = "metadata_unavailable"
	CodeInternalServerError     = "internal_server_error"
)

// ErrUnauthorized is the sentinel an Options.Authenticate function returns
// (or wraps) when the request carries no valid credential; it is rendered as
// 401 unauthorized. Any other error from Authenticate goes through WriteError
// like a handler's error (an *Error as is, a registered class, else a 500),
// so that a broken token store is not reported as a bad token.
var ErrUnauthorized = errors.New("unauthorized")

const unauthorizedDetail = "missing or invalid bearer token in the Authorization header"

// Error is an error that knows its rendering. Handlers return (or pass to
// WriteError) an *Error when they know the status and code; Detail is shown
// to the client verbatim, so it must not hold internals. WriteError renders
// it in the request's wire format (package wire): a JSON:API error document
// for API 5.4, Draupnir's bare error object for a Draupnir client, which
// gets Draupnir's own wording for the codes Draupnir had one error for
// (see wire.Error.ForDraupnir), else these fields with Code as id.
type Error struct {
	Status int    // HTTP status
	Code   string // machine-readable code, e.g. "resource_not_found"
	Title  string // short summary, the same for every occurrence of Code
	Detail string // this occurrence, for humans
	// Source optionally names the part of the request at fault, e.g.
	// {Pointer: "/data/attributes/ttl"}.
	Source ErrorSource
	// Draupnir optionally is the object a Draupnir client gets instead:
	// Draupnir's own error for this case, where Code alone does not tell
	// (see WithDraupnir).
	Draupnir *wire.DraupnirError
	// RetryAfter, when set, is sent as the Retry-After header (in whole
	// seconds): the request may be sent again as it is after that long.
	RetryAfter time.Duration
}

// ErrorSource is JSON:API's source member of an error.
type ErrorSource = wire.Source

// WithDraupnir returns a copy of e that a Draupnir client sees as d, for
// an error Draupnir had under a code sindri shares with others (for
// example POST /instances naming an unknown image: Draupnir's "Image Not
// Found").
func (e *Error) WithDraupnir(d wire.DraupnirError) *Error {
	c := *e
	c.Draupnir = &d
	return &c
}

func (e *Error) wire() wire.Error {
	return wire.Error{Status: e.Status, Code: e.Code, Title: e.Title, Detail: e.Detail, Source: e.Source, Draupnir: e.Draupnir}
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Title)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Detail)
}

// NewError returns an *Error; an empty title defaults to the status text.
func NewError(status int, code, title, detail string) *Error {
	if title == "" {
		title = http.StatusText(status)
	}
	return &Error{Status: status, Code: code, Title: title, Detail: detail}
}

// BadRequest is 400 bad_request.
func BadRequest(detail string) *Error {
	return NewError(http.StatusBadRequest, CodeBadRequest, "Bad request", detail)
}

// Unauthorized is 401 unauthorized.
func Unauthorized(detail string) *Error {
	return NewError(http.StatusUnauthorized, CodeUnauthorized, "Unauthorized", detail)
}

// Forbidden is 403 forbidden.
func Forbidden(detail string) *Error {
	return NewError(http.StatusForbidden, CodeForbidden, "Forbidden", detail)
}

// NotFound is 404 resource_not_found.
func NotFound(detail string) *Error {
	return NewError(http.StatusNotFound, CodeNotFound, "Resource not found", detail)
}

// MethodNotAllowed is 405 method_not_allowed.
func MethodNotAllowed(detail string) *Error {
	return NewError(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "Method not allowed", detail)
}

// Conflict is 409 conflict (JSON:API: a resource object whose type does not
// match the endpoint, or whose id does not match the URL).
func Conflict(detail string) *Error {
	return NewError(http.StatusConflict, CodeConflict, "Conflict", detail)
}

// MissingAPIVersionHeader is 400 missing_api_version_header.
func MissingAPIVersionHeader() *Error {
	return NewError(http.StatusBadRequest, CodeMissingAPIVersionHeader, "Missing API version header",
		fmt.Sprintf("the %s header is required; this server speaks API version %s", VersionHeader, version.API))
}

// InvalidAPIVersion is 400 invalid_api_version; the detail names the
// request's version and the server's.
func InvalidAPIVersion(got string) *Error {
	e := NewError(http.StatusBadRequest, CodeInvalidAPIVersion, "Invalid API version",
		fmt.Sprintf("%s %q is not compatible with the server's API version %s (need MAJOR.MINOR.PATCH with major %d and minor at most %d)",
			VersionHeader, got, version.API, apiMajor, apiMinor))
	e.Draupnir = wire.DraupnirInvalidAPIVersion(got, version.API)
	return e
}

// UnsupportedMediaType is 415 unsupported_media_type.
func UnsupportedMediaType(detail string) *Error {
	return NewError(http.StatusUnsupportedMediaType, CodeUnsupportedMediaType, "Unsupported media type", detail)
}

// RequestTooLarge is 413 request_too_large.
func RequestTooLarge(limit int64) *Error {
	return NewError(http.StatusRequestEntityTooLarge, CodeRequestTooLarge, "Request too large",
		fmt.Sprintf("the request body exceeds the limit of %d bytes", limit))
}

// ImageNotReady is 422 image_not_ready.
func ImageNotReady(detail string) *Error {
	return NewError(http.StatusUnprocessableEntity, CodeImageNotReady, "Image not ready", detail)
}

// ImageHasInstances is 422 image_has_instances.
func ImageHasInstances(detail string) *Error {
	return NewError(http.StatusUnprocessableEntity, CodeImageHasInstances, "Image has instances", detail)
}

// ImageFinaliseFailed is 422 image_finalise_failed; detail is the reason
// (also stored in the image's error attribute).
func ImageFinaliseFailed(detail string) *Error {
	return NewError(http.StatusUnprocessableEntity, CodeImageFinaliseFailed, "Image finalise failed", detail)
}

// NoFreePort is 503 no_free_port.
func NoFreePort(detail string) *Error {
	return NewError(http.StatusServiceUnavailable, CodeNoFreePort, "No free port", detail)
}

// NoDiskSpace is 503 no_disk_space.
func NoDiskSpace(detail string) *Error {
	return NewError(http.StatusServiceUnavailable, CodeNoDiskSpace, "No disk space", detail)
}

// QuotaExceeded is 429 quota_exceeded: a per-user or global limit; the
// detail names the limit and the current figure.
func QuotaExceeded(detail string) *Error {
	return NewError(http.StatusTooManyRequests, CodeQuotaExceeded, "Quota exceeded", detail)
}

// InternalServerError is 500 internal_server_error. Its detail carries only
// the request id, under which the real error is logged.
func InternalServerError(requestID string) *Error {
	detail := "the server failed to handle the request"
	if requestID != "" {
		detail += "; request id " + requestID
	}
	return NewError(http.StatusInternalServerError, CodeInternalServerError, "Internal server error", detail)
}

type errorClass struct {
	target     error
	status     int
	code       string
	title      string
	public     bool          // the error's message is the detail, even for a 5xx
	detail     string        // a fixed detail instead of the message, if set
	retryAfter time.Duration // the Retry-After header, if set
}

var classes struct {
	sync.RWMutex
	list []errorClass
}

// RegisterClass makes WriteError render every error e with
// errors.Is(e, target) as status/code/title, for example
//
//	api.RegisterClass(engine.ErrNotFound, 404, api.CodeNotFound, "Resource not found")
//
// For a 4xx class the detail is e.Error() (the wrapped message, e.g.
// "image 3: not found"); for a 5xx class the detail is the title only and
// e is logged, since a 5xx must not leak internals. Classes are tried in
// registration order; registering the same target again replaces its
// class. It panics on a nil target or a status outside 400-599.
func RegisterClass(target error, status int, code, title string) {
	registerClass(target, status, code, title, false)
}

// RegisterPublicClass is RegisterClass for errors whose messages are
// written for the client and hold no internals, so that a 5xx of the class
// shows e.Error() as its detail too: for example a refusal for want of
// disk space that names the reserve and the free bytes.
func RegisterPublicClass(target error, status int, code, title string) {
	registerClass(target, status, code, title, true)
}

// RegisterRetryClass makes WriteError render every error e with
// errors.Is(e, target) as 503 code/title with a fixed detail written for
// the client (e, which may name internals, is logged) and a Retry-After
// header of retryAfter: something sindrid depends on is out of reach for
// a while, and the request may be sent again as it is. For example, the
// metadata database while its leader changes:
//
//	api.RegisterRetryClass(store.ErrUnavailable, api.CodeMetadataUnavailable, "Metadata store unavailable", "…", 2*time.Second)
func RegisterRetryClass(target error, code, title, detail string, retryAfter time.Duration) {
	if detail == "" || retryAfter <= 0 {
		panic(fmt.Sprintf("api.RegisterRetryClass(%v, %q): a detail and a positive Retry-After are required", target, code))
	}
	c := newClass(target, http.StatusServiceUnavailable, code, title, false)
	c.detail, c.retryAfter = detail, retryAfter
	add(c)
}

func registerClass(target error, status int, code, title string, public bool) {
	add(newClass(target, status, code, title, public))
}

func newClass(target error, status int, code, title string, public bool) errorClass {
	if target == nil || status < 400 || status > 599 || code == "" {
		panic(fmt.Sprintf("api.RegisterClass(%v, %d, %q): bad class", target, status, code))
	}
	if title == "" {
		title = http.StatusText(status)
	}
	return errorClass{target: target, status: status, code: code, title: title, public: public}
}

// add registers c, replacing the class of the same target.
func add(c errorClass) {
	classes.Lock()
	defer classes.Unlock()
	for i := range classes.list {
		if classes.list[i].target == c.target {
			classes.list[i] = c
			return
		}
	}
	classes.list = append(classes.list, c)
}

// AsError classifies err the way WriteError renders it: an *Error (also
// wrapped) as is; ErrUnauthorized (also wrapped) as 401 unauthorized with a
// fixed detail (the reason a credential was refused is not told); a
// *http.MaxBytesError as 413; a registered class; anything else as 500
// internal_server_error carrying requestID. internal reports whether err
// should be logged (5xx other than an *Error).
func AsError(err error, requestID string) (e *Error, internal bool) {
	if errors.As(err, &e) {
		return e, false
	}
	if errors.Is(err, ErrUnauthorized) {
		return Unauthorized(unauthorizedDetail), false
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return RequestTooLarge(mbe.Limit), false
	}
	classes.RLock()
	defer classes.RUnlock()
	for _, c := range classes.list {
		if errors.Is(err, c.target) {
			e := &Error{Status: c.status, Code: c.code, Title: c.title, Detail: err.Error(), RetryAfter: c.retryAfter}
			if c.status >= 500 && !c.public {
				e.Detail = c.title
				if c.detail != "" {
					e.Detail = c.detail
				}
				if requestID != "" {
					e.Detail += "; request id " + requestID
				}
				return e, true
			}
			return e, false
		}
	}
	return InternalServerError(requestID), true
}

// WriteError renders err in the request's wire format (wire.FormatOf: a
// JSON:API error document for API 5.4 and requests without the version
// header, Draupnir's bare error object for Draupnir's clients; see
// AsError for how err is classified); errors that would leak internals are
// logged with the request id instead. A nil err renders as a 500. If the
// response has already started, WriteError only logs.
//
// It is the one way to answer with an error: an error written otherwise
// would reach a Draupnir client in the wrong format.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	if err == nil {
		err = errors.New("api: WriteError called with a nil error")
	}
	ctx := r.Context()
	id := RequestID(ctx)
	e, internal := AsError(err, id)
	log := LoggerFrom(ctx)
	if internal {
		log.LogAttrs(ctx, slog.LevelError, "request failed",
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Int("status", e.Status), slog.String("error", err.Error()))
	}
	if t := findTracker(w); t != nil && t.wroteHeader {
		log.LogAttrs(ctx, slog.LevelError, "error after the response started",
			slog.String("error", err.Error()))
		return
	}
	if e.Status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sindri"`)
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
	}
	wire.WriteError(w, wire.FormatOf(r), e.wire())
}
