package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/engine"
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
	CodeNotAPeer                = "not_a_peer"
	CodeHostUnavailable         = "host_unavailable"
	CodeNoHostAvailable         = "no_host_available"
	CodeInternalServerError     = "internal_server_error"
)

// ErrUnauthorized is the sentinel an Options.Authenticate function returns
// (or wraps) when the request carries no valid credential; it is rendered as
// 401 unauthorized. Any other error from Authenticate goes through WriteError
// like a handler's error (an *Error as is, an engine class, else a 500),
// so that a broken token store is not reported as a bad token.
var ErrUnauthorized = errors.New("unauthorized")

const unauthorizedDetail = "missing or invalid bearer token in the Authorization header"

// Error is an error that knows its rendering. Handlers return an *Error
// when they know the status and code (a malformed body, a bad parameter); Detail is shown
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

// NotAPeer is 403 not_a_peer: a request to a route of the fleet's hosts
// (/fleet/), or one that carries a fleet proof, without a valid proof.
// Why the proof was refused is logged, not told.
func NotAPeer() *Error {
	return NewError(http.StatusForbidden, CodeNotAPeer, "Not a peer",
		"this request carries no valid proof that a host of this fleet sent it; the /fleet/ routes are for sindri's hosts only")
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

// errorClass is a row of the error table.
type errorClass struct {
	class  error
	status int
	code   string
	title  string
	// public: the error's message is written for the client and holds no
	// internals, so a 5xx shows it as the detail too.
	public bool
	// detail, if set, is a 5xx's detail instead of its title: written for
	// the client, it says what to do.
	detail string
	// retryAfter, if set, is sent as the Retry-After header: the request
	// may be sent again as it is after that long.
	retryAfter time.Duration
}

// errorClasses is the one table of the API's errors: each of the engine's
// classes (pkg/engine/errors.go; the engine gives the store's, the
// storage's and Postgres's errors these classes before they reach a
// handler) with its status, code and title. AsError takes the first row
// whose class the error is (errors.Is), so an error of two classes is the
// earlier row's. A 4xx shows the error's message as the detail (the
// engine writes it for the client: "there is no image 3"); a 5xx shows
// its title and the request id and the error is logged, unless the row is
// public.
var errorClasses = []errorClass{
	{class: engine.ErrBackupNotDone, status: http.StatusConflict, code: "backup_not_done", title: "Backup not done"},
	{class: engine.ErrBackupRunning, status: http.StatusConflict, code: "backup_running", title: "A backup is being written"},
	{class: engine.ErrNotBackupReady, status: http.StatusConflict, code: "instance_busy", title: "Instance cannot be backed up now"},
	{class: engine.ErrNotFound, status: http.StatusNotFound, code: CodeNotFound, title: "Resource not found"},
	// A peer route asked by anyone but a host of the fleet.
	{class: engine.ErrNotPeer, status: http.StatusForbidden, code: CodeNotAPeer, title: "Not a host of this fleet"},
	{class: engine.ErrForbidden, status: http.StatusForbidden, code: CodeForbidden, title: "Forbidden"},
	{class: engine.ErrImageNotReady, status: http.StatusUnprocessableEntity, code: CodeImageNotReady, title: "Image not ready"},
	{class: engine.ErrImageHasInstances, status: http.StatusUnprocessableEntity, code: CodeImageHasInstances, title: "Image has instances"},
	{class: engine.ErrFinaliseFailed, status: http.StatusUnprocessableEntity, code: CodeImageFinaliseFailed, title: "Image finalise failed"},
	{class: engine.ErrImageNotPending, status: http.StatusConflict, code: "image_not_pending", title: "Image does not accept uploads"},
	{class: engine.ErrUploadInterrupted, status: http.StatusBadRequest, code: CodeBadRequest, title: "Upload interrupted"},
	{class: engine.ErrNoPort, status: http.StatusServiceUnavailable, code: CodeNoFreePort, title: "No free port"},
	{class: engine.ErrDiskFull, status: http.StatusServiceUnavailable, code: CodeNoDiskSpace, title: "No disk space"},
	// The [limits]: their messages name the limit and the figure.
	{class: engine.ErrQuotaExceeded, status: http.StatusTooManyRequests, code: CodeQuotaExceeded, title: "Quota exceeded"},
	{class: engine.ErrNoDiskSpace, status: http.StatusServiceUnavailable, code: CodeNoDiskSpace, title: "No disk space", public: true},
	{class: engine.ErrTTLTooLong, status: http.StatusBadRequest, code: CodeBadRequest, title: "Bad request"},
	{class: engine.ErrInvalid, status: http.StatusBadRequest, code: CodeBadRequest, title: "Bad request"},
	{class: engine.ErrPGVersionMissing, status: http.StatusUnprocessableEntity, code: "pg_version_not_installed", title: "PostgreSQL version not installed"},
	{class: engine.ErrNotItsVolume, status: http.StatusConflict, code: "volume_mismatch", title: "The volume on disk is not this resource's"},
	{class: engine.ErrStoreMismatch, status: http.StatusServiceUnavailable, code: "store_mismatch", title: "The metadata store does not match the volumes on disk"},
	{class: engine.ErrConflict, status: http.StatusConflict, code: CodeConflict, title: "Conflict with an existing resource"},
	// A fleet: the messages name the host, never its address.
	{class: engine.ErrHostUnavailable, status: http.StatusServiceUnavailable, code: CodeHostUnavailable,
		title: "Host unavailable", public: true, retryAfter: HostRetryAfter},
	{class: engine.ErrNoHost, status: http.StatusServiceUnavailable, code: CodeNoHostAvailable,
		title: "No host available", public: true, retryAfter: HostRetryAfter},
	// Two sindrids on one store: the message names the other's process.
	{class: engine.ErrOperationRunning, status: http.StatusServiceUnavailable, code: "operation_running", title: "Another sindrid is running this operation"},
	// The metadata database out of reach, as while its leader changes: the
	// driver's message (hosts, user) is logged, not shown.
	{class: engine.ErrMetadataUnavailable, status: http.StatusServiceUnavailable, code: CodeMetadataUnavailable,
		title: "Metadata store unavailable", retryAfter: 2 * time.Second,
		detail: "sindri's metadata database cannot be reached or is changing leader, so the request did not complete; " +
			"whatever it began is finished or undone by sindri: send it again in a few seconds"},
}

// AsError classifies err the way WriteError renders it: an *Error (also
// wrapped) as is; ErrUnauthorized (also wrapped) as 401 unauthorized with a
// fixed detail (the reason a credential was refused is not told); a
// *http.MaxBytesError as 413; an error of an engine class by the error
// table (errorClasses); anything else as 500 internal_server_error carrying
// requestID. An error given Draupnir's own object with WithDraupnirError
// carries it. internal reports whether err should be logged (5xx other
// than an *Error or a public class).
func AsError(err error, requestID string) (e *Error, internal bool) {
	e, internal = classifyError(err, requestID)
	var d *draupnirOverride
	if errors.As(err, &d) {
		e = e.WithDraupnir(d.object)
	}
	return e, internal
}

func classifyError(err error, requestID string) (e *Error, internal bool) {
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
	for _, c := range errorClasses {
		if !errors.Is(err, c.class) {
			continue
		}
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
	return InternalServerError(requestID), true
}

// WithDraupnirError returns err, which a Draupnir client sees as d: for an
// error Draupnir had under a code sindri shares with others (POST
// /instances naming an unknown image is Draupnir's "Image Not Found").
func WithDraupnirError(err error, d wire.DraupnirError) error {
	return &draupnirOverride{err: err, object: d}
}

type draupnirOverride struct {
	err    error
	object wire.DraupnirError
}

func (d *draupnirOverride) Error() string { return d.err.Error() }
func (d *draupnirOverride) Unwrap() error { return d.err }

// WriteError renders err in the request's wire format (wire.FormatOf: a
// JSON:API error document for API 5.4 and requests without the version
// header, Draupnir's bare error object for Draupnir's clients; see
// AsError for how err is classified, after Options.ExplainError); errors
// that would leak internals are logged with the request id instead. A nil
// err renders as a 500. If the response has already started, WriteError
// only logs.
//
// It is the one way to answer with an error: an error written otherwise
// would reach a Draupnir client in the wrong format.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	if err == nil {
		err = errors.New("api: WriteError called with a nil error")
	}
	ctx := r.Context()
	if explain, ok := ctx.Value(keyExplainError).(func(context.Context, error) error); ok {
		err = explain(ctx, err)
	}
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
