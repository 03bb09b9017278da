package api

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/version"
)

// Header names.
const (
	VersionHeader   = wire.VersionHeader
	RequestIDHeader = "X-Request-Id"
)

// MediaType is the JSON:API media type of API 5.4's response documents (a
// Draupnir client gets application/json instead: see package wire).
const MediaType = wire.JSONAPIMediaType

// The API version this server accepts requests for: major apiMajor, minor at
// most apiMinor (from version.API, "5.4.0").
var apiMajor, apiMinor = func() (int, int) {
	maj, min, ok := parseAPIVersion(version.API)
	if !ok {
		panic("api: bad version.API " + version.API)
	}
	return maj, min
}()

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyLogger
	keyPrincipal
	keyBodyLimit
	keyBodyTimeout
	keyExplainError
)

// RequestID returns the request id the server gave the request ("" outside
// a request).
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(keyRequestID).(string)
	return s
}

// LoggerFrom returns the request's logger, which carries request_id
// (slog.Default() outside a request).
func LoggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(keyLogger).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// PrincipalFrom returns what Options.Authenticate returned for the request,
// or nil on a route exempt from authentication.
func PrincipalFrom(ctx context.Context) any {
	return ctx.Value(keyPrincipal)
}

// WithPrincipal returns ctx carrying principal p, as the auth middleware
// stores it; handler tests use it to skip authentication.
func WithPrincipal(ctx context.Context, p any) context.Context {
	return context.WithValue(ctx, keyPrincipal, p)
}

// tracker wraps the ResponseWriter to record status and size for the access
// log and to tell the recovery and WriteError whether the response has
// started. It implements Flusher and ReaderFrom and Unwrap (so that
// http.ResponseController reaches the connection).
type tracker struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
	route       string       // path template of the matched route, set by the router
	logger      *slog.Logger // the request's logger, for helpers without the request
	format      wire.Format  // the request's wire format, for helpers without the request
}

func (t *tracker) WriteHeader(code int) {
	if !t.wroteHeader && code >= 200 { // 1xx are informational; the real header follows
		t.status, t.wroteHeader = code, true
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *tracker) Write(p []byte) (int, error) {
	if !t.wroteHeader {
		t.status, t.wroteHeader = http.StatusOK, true
	}
	n, err := t.ResponseWriter.Write(p)
	t.bytes += int64(n)
	return n, err
}

func (t *tracker) ReadFrom(r io.Reader) (int64, error) {
	if !t.wroteHeader {
		t.status, t.wroteHeader = http.StatusOK, true
	}
	var n int64
	var err error
	if rf, ok := t.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{t.ResponseWriter}, r)
	}
	t.bytes += n
	return n, err
}

// FlushError is what http.ResponseController.Flush calls.
func (t *tracker) FlushError() error {
	if !t.wroteHeader {
		t.status, t.wroteHeader = http.StatusOK, true
	}
	return http.NewResponseController(t.ResponseWriter).Flush()
}

func (t *tracker) Flush() { t.FlushError() }

func (t *tracker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(t.ResponseWriter).Hijack()
}

func (t *tracker) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// findTracker finds the tracker in w's Unwrap chain.
func findTracker(w http.ResponseWriter) *tracker {
	for w != nil {
		if t, ok := w.(*tracker); ok {
			return t
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}

// formatOf is the wire format recorded for w's request by the server's
// middleware; JSON:API outside a Server.
func formatOf(w http.ResponseWriter) wire.Format {
	if t := findTracker(w); t != nil {
		return t.format
	}
	return wire.JSONAPI
}

// track returns w's tracker, wrapping w in a new one if it has none.
func track(w http.ResponseWriter) (*tracker, http.ResponseWriter) {
	if t := findTracker(w); t != nil {
		return t, w
	}
	t := &tracker{ResponseWriter: w}
	return t, t
}

// validRequestID accepts 1-64 characters of [A-Za-z0-9._-].
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// requestID takes a sane incoming X-Request-Id or makes one, echoes it and
// Draupnir-Version on the response, and puts the id and a logger carrying it
// (and explain, Options.ExplainError, for WriteError) in the context. It
// runs first, so that every response, errors included, carries both
// headers.
func requestID(logger *slog.Logger, explain func(context.Context, error) error) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get(RequestIDHeader)
			if !validRequestID(id) {
				id = newRequestID()
			}
			w.Header().Set(RequestIDHeader, id)
			w.Header().Set(VersionHeader, version.API)
			ctx := context.WithValue(r.Context(), keyRequestID, id)
			ctx = context.WithValue(ctx, keyLogger, logger.With(slog.String("request_id", id)))
			if explain != nil {
				ctx = context.WithValue(ctx, keyExplainError, explain)
			}
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// RequestInfo describes a finished request, for Options.Observe (metrics).
type RequestInfo struct {
	Method   string
	Route    string // path template of the matched route; "" for 404s
	Status   int
	Bytes    int64
	Duration time.Duration
}

// accessLog logs one line per request: method, path (never the query, which
// may hold an OAuth code, nor any header), route, status, bytes, duration_ms,
// request_id, remote. A handler aborted with http.ErrAbortHandler is logged
// too (aborted=true). 5xx are logged at level ERROR.
//
// It also records the request's wire format on the tracker (for
// WriteResource and the other helpers without the request) and, for a
// Draupnir client, sets Content-Type: application/json up front, as
// Draupnir did: every answer that sets no type of its own carries it, 204s
// included.
func accessLog(logger *slog.Logger, observe func(RequestInfo)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			t, tw := track(w)
			t.logger = LoggerFrom(r.Context())
			t.format = wire.FormatOf(r)
			if t.format == wire.Draupnir {
				tw.Header().Set("Content-Type", t.format.MediaType())
			}
			completed := false
			defer func() {
				d := time.Since(start)
				status := t.status
				if !t.wroteHeader {
					status = http.StatusOK // net/http's default for a handler that writes nothing
				}
				level := slog.LevelInfo
				if status >= 500 || !completed {
					level = slog.LevelError
				}
				attrs := []slog.Attr{
					slog.String("method", r.Method),
					slog.String("path", r.URL.Path),
					slog.String("route", t.route),
					slog.Int("status", status),
					slog.Int64("bytes", t.bytes),
					slog.Float64("duration_ms", float64(d.Microseconds())/1000),
					slog.String("request_id", RequestID(r.Context())),
					slog.String("remote", r.RemoteAddr),
				}
				if !completed {
					attrs = append(attrs, slog.Bool("aborted", true))
				}
				logger.LogAttrs(r.Context(), level, "http request", attrs...)
				if observe != nil {
					observe(RequestInfo{Method: r.Method, Route: t.route, Status: status, Bytes: t.bytes, Duration: d})
				}
			}()
			next.ServeHTTP(tw, r)
			completed = true
		})
	}
}

// recoverPanics turns a handler's panic into a 500 internal_server_error
// whose body carries only the request id; the panic value and stack are
// logged. http.ErrAbortHandler is re-panicked for net/http to abort the
// response silently; a panic after the response has started is turned into
// http.ErrAbortHandler, since a clean error can no longer be sent (the client
// sees a truncated response rather than a wrong one).
func recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, tw := track(w)
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			ctx := r.Context()
			LoggerFrom(ctx).LogAttrs(ctx, slog.LevelError, "panic in handler",
				slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.String("panic", fmt.Sprint(v)), slog.String("stack", string(debug.Stack())))
			if t.wroteHeader {
				panic(http.ErrAbortHandler)
			}
			// Drop what the handler set (Content-Length, Content-Type, ...)
			// and keep the server's own headers.
			h := tw.Header()
			keep := map[string]string{}
			for _, k := range []string{VersionHeader, RequestIDHeader} {
				if v := h.Get(k); v != "" {
					keep[k] = v
				}
			}
			clear(h)
			for k, v := range keep {
				h.Set(k, v)
			}
			wire.WriteError(tw, wire.FormatOf(r), InternalServerError(RequestID(ctx)).wire())
		}()
		next.ServeHTTP(tw, r)
	})
}

// parseAPIVersion parses MAJOR.MINOR.PATCH: three non-empty decimal
// numbers without sign or leading zeros.
func parseAPIVersion(s string) (major, minor int, ok bool) { return wire.ParseVersion(s) }

// checkVersion validates a request's Draupnir-Version header values: nil if
// compatible (major 5, minor ≤ 4, patch ignored).
func checkVersion(values []string) *Error {
	switch len(values) {
	case 0:
		return MissingAPIVersionHeader()
	case 1:
	default:
		return InvalidAPIVersion(strings.Join(values, ", "))
	}
	major, minor, ok := parseAPIVersion(values[0])
	if !ok || major != apiMajor || minor > apiMinor {
		return InvalidAPIVersion(values[0])
	}
	return nil
}

// routeKey is "METHOD /path/template" of the matched route, e.g.
// "GET /images/{id}" ("" outside the router).
func routeKey(r *http.Request) string {
	route := mux.CurrentRoute(r)
	if route == nil {
		return ""
	}
	tpl, err := route.GetPathTemplate()
	if err != nil {
		return ""
	}
	return r.Method + " " + tpl
}

// routeInfo records the matched route's template on the tracker (for the
// access log and metrics). It runs inside the router, first.
func routeInfo(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t := findTracker(w); t != nil {
			if route := mux.CurrentRoute(r); route != nil {
				t.route, _ = route.GetPathTemplate()
			}
		}
		next.ServeHTTP(w, r)
	})
}

// requireVersion rejects a request to a matched route that is not exempt
// and whose Draupnir-Version is missing or incompatible.
func requireVersion(exempt map[string]bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if key := routeKey(r); !exempt[key] && !isPeerRoute(key) {
				if e := checkVersion(r.Header.Values(VersionHeader)); e != nil {
					WriteError(w, r, e)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// authenticate calls authn on every matched route that is not exempt and
// stores the principal in the context. An error wrapping ErrUnauthorized is a
// 401 unauthorized with a fixed detail (the reason is not told to the
// client); an *Error is rendered as is; anything else goes through
// WriteError (a classified error, or a logged 500). A nil principal with a
// nil error, or a nil authn, is a 401: the middleware fails closed.
func authenticate(authn func(*http.Request) (any, error), exempt map[string]bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if key := routeKey(r); exempt[key] || isPeerRoute(key) {
				// A peer route is the peers' alone: requirePeer guards it.
				next.ServeHTTP(w, r)
				return
			}
			var p any
			var err error
			if authn != nil {
				p, err = authn(r)
			}
			if err == nil && p == nil {
				err = ErrUnauthorized
			}
			if err != nil {
				WriteError(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
		})
	}
}

// limitBody caps the request body at limit bytes (413 up front when the
// Content-Length says so, else when the handler reads past it) on every
// matched route not in unlimited, and records the limit for DecodeJSON
// (which applies it even on unlimited routes: JSON is never large).
func limitBody(limit int64, unlimited map[string]bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r = r.WithContext(context.WithValue(r.Context(), keyBodyLimit, limit))
			if limit <= 0 || unlimited[routeKey(r)] {
				next.ServeHTTP(w, r)
				return
			}
			if r.ContentLength > limit {
				WriteError(w, r, RequestTooLarge(limit))
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, limit)
			next.ServeHTTP(w, r)
		})
	}
}

// readTimeout records how long DecodeJSON may wait for a body.
func readTimeout(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyBodyTimeout, d)))
		})
	}
}

// notFound is the router's 404 for unknown routes.
func notFound(w http.ResponseWriter, r *http.Request) {
	WriteError(w, r, NotFound(fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)))
}

// methodNotAllowed is the router's 405 for a known path with a
// wrong method, with the Allow header listing the methods that would match.
func methodNotAllowed(router *mux.Router) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		allowed := allowedMethods(router, r)
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
		}
		WriteError(w, r, MethodNotAllowed(fmt.Sprintf("%s is not allowed on %s; allowed: %s",
			r.Method, r.URL.Path, strings.Join(allowed, ", "))))
	})
}

// allowedMethods lists the methods for which some route of router matches
// r's URL.
func allowedMethods(router *mux.Router, r *http.Request) []string {
	var allowed []string
	router.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		methods, err := route.GetMethods()
		if err != nil {
			return nil
		}
		for _, m := range methods {
			if slices.Contains(allowed, m) {
				continue
			}
			probe := r.Clone(r.Context())
			probe.Method = m
			var match mux.RouteMatch
			if route.Match(probe, &match) && match.MatchErr == nil {
				allowed = append(allowed, m)
			}
		}
		return nil
	})
	slices.Sort(allowed)
	return allowed
}
