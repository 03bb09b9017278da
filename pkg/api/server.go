package api

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/gorilla/mux"
)

// Defaults of Options.
const (
	DefaultMaxBodyBytes      = 1 << 20 // 1 MiB: JSON:API request documents are tiny
	DefaultBodyReadTimeout   = 30 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
)

// Route keys are "METHOD /path/template", the method of the request and the
// path template exactly as registered with the router (e.g.
// "PUT /images/{id}/upload"; a route registered as "/images/{id:[0-9]+}"
// has that template as its key).
var (
	// Routes without the Draupnir-Version requirement (and so without
	// authentication), from the contract, and the browser's form that
	// confirms a login (POST /oauth_callback).
	defaultVersionExempt = []string{
		"GET /health_check", "GET /metrics", "GET /authenticate", "GET /oauth_callback", "POST /oauth_callback",
	}
	// Versioned routes without authentication, from the contract.
	defaultAuthExempt = []string{"POST /access_tokens"}
	// Routes whose body is streamed, without Options.MaxBodyBytes.
	defaultUnlimitedBody = []string{"PUT /images/{id}/upload"}
)

// Options configures a Server and its http.Server.
type Options struct {
	// Logger receives the access log and the errors; nil means
	// slog.Default().
	Logger *slog.Logger

	// Authenticate identifies the caller of every route that is not exempt;
	// its result is available to handlers through PrincipalFrom. Return
	// (or wrap) ErrUnauthorized for a missing or bad credential: 401
	// unauthorized. An *Error is rendered as is (e.g. a 403); other errors
	// are internal (500). A nil Authenticate rejects every non-exempt route
	// with 401 (fail closed).
	Authenticate func(*http.Request) (principal any, err error)

	// Route keys ("METHOD /template", see above) added to the built-in
	// lists; the built-in entries cannot be removed.
	//
	// VersionExempt: no Draupnir-Version needed, and no authentication
	// either (built in: GET /health_check, GET /metrics, GET /authenticate,
	// GET and POST /oauth_callback).
	VersionExempt []string
	// AuthExempt: versioned but unauthenticated (built in:
	// POST /access_tokens).
	AuthExempt []string
	// UnlimitedBody: streaming uploads, without MaxBodyBytes (built in:
	// PUT /images/{id}/upload).
	UnlimitedBody []string

	// MaxBodyBytes caps request bodies on every other route (0 means
	// DefaultMaxBodyBytes, negative means no limit).
	MaxBodyBytes int64
	// BodyReadTimeout bounds how long DecodeJSON waits for the body
	// (0 means DefaultBodyReadTimeout, negative means none). It replaces a
	// server-wide ReadTimeout, which would cut uploads; DecodeJSON clears the
	// connection's read deadline once the body is read, so with a non-zero
	// ReadTimeout set BodyReadTimeout negative.
	BodyReadTimeout time.Duration

	// Metrics, if set, is served at GET /metrics (e.g. promhttp.Handler()),
	// without version header or authentication.
	Metrics http.Handler
	// Observe, if set, is called after every request (for metrics).
	Observe func(RequestInfo)
	// ExplainError, if set, may give the error of a request (a handler's,
	// or Authenticate's) a truer class before WriteError renders it:
	// sindrid answers a metadata store that is out of reach because the
	// disk it keeps its data on is full with the disk reserve's 503
	// no_disk_space, not a metadata_unavailable that says to retry.
	ExplainError func(ctx context.Context, err error) error

	// The http.Server made by NewHTTPServer: see there.
	Addr              string
	ReadHeaderTimeout time.Duration // 0 means DefaultReadHeaderTimeout
	ReadTimeout       time.Duration // 0 means none (uploads)
	WriteTimeout      time.Duration // 0 means none (long calls, downloads)
	IdleTimeout       time.Duration // 0 means DefaultIdleTimeout
	MaxHeaderBytes    int           // 0 means DefaultMaxHeaderBytes
}

// Server is the HTTP foundation: a gorilla/mux router with the API's
// middleware, to which route owners add their handlers.
//
//	s := api.NewServer(api.Options{Authenticate: auth, Logger: log})
//	r := s.Router()
//	r.Handle("/images/{id}", api.HandlerFunc(getImage)).Methods(http.MethodGet)
//	srv := api.NewHTTPServer(s.Handler(), opts)
//
// Every route added to Router() requires Draupnir-Version and
// authentication, and has its body capped, unless its key is exempt in
// Options. Handlers return their failures (HandlerFunc) or write them with
// WriteError, read bodies with DecodeJSON or DecodeResource, path ids with
// PathID, and answer with WriteResource/WriteResources.
//
// Middleware, outermost first: request id and the Draupnir-Version response
// header (on every response, including 404/405 and panics), access log,
// panic recovery, then the router; on a matched route: version check,
// authentication, body limit, the handler. Unknown paths get a JSON:API 404
// and a known path with a wrong method a 405 with Allow, whatever their
// headers (neither version nor auth is checked for them).
type Server struct {
	opts    Options
	router  *mux.Router
	handler http.Handler
	// authExempt is the authentication middleware's set: Register adds
	// the fleet's peer routes, which a peer's proof authenticates.
	authExempt map[string]bool
}

// NewServer returns a Server with GET /health_check (and GET /metrics if
// opts.Metrics is set) registered.
func NewServer(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.BodyReadTimeout == 0 {
		opts.BodyReadTimeout = DefaultBodyReadTimeout
	}
	set := func(lists ...[]string) map[string]bool {
		m := map[string]bool{}
		for _, l := range lists {
			for _, k := range l {
				m[k] = true
			}
		}
		return m
	}
	versionExempt := set(defaultVersionExempt, opts.VersionExempt)
	authExempt := set(defaultVersionExempt, opts.VersionExempt, defaultAuthExempt, opts.AuthExempt)
	unlimited := set(defaultUnlimitedBody, opts.UnlimitedBody)

	router := mux.NewRouter()
	// Unclean paths ("/images/../1", "//images") are not redirected (a 301
	// on a POST helps nobody); they match no route and get a 404.
	router.SkipClean(true)
	router.NotFoundHandler = http.HandlerFunc(notFound)
	router.MethodNotAllowedHandler = methodNotAllowed(router)
	router.Use(routeInfo, requireVersion(versionExempt), authenticate(opts.Authenticate, authExempt),
		limitBody(opts.MaxBodyBytes, unlimited), readTimeout(opts.BodyReadTimeout))

	router.Handle("/health_check", http.HandlerFunc(healthCheck)).Methods(http.MethodGet)
	if opts.Metrics != nil {
		router.Handle("/metrics", opts.Metrics).Methods(http.MethodGet)
	}

	var h http.Handler = router
	h = recoverPanics(h)
	h = accessLog(opts.Logger, opts.Observe)(h)
	h = requestID(opts.Logger, opts.ExplainError)(h)
	return &Server{opts: opts, router: router, handler: h, authExempt: authExempt}
}

// Router is where route owners register their routes.
func (s *Server) Router() *mux.Router { return s.router }

// Handler is the whole API, to serve.
func (s *Server) Handler() http.Handler { return s.handler }

// healthCheck answers GET /health_check with {"status":"ok"} (Draupnir's
// body; plain JSON, not a JSON:API document).
func healthCheck(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte(`{"status":"ok"}` + "\n"))
}

// NewHTTPServer returns an http.Server for handler with opts' address and
// limits:
//
//   - ReadHeaderTimeout 10 s: the slowloris guard; a client must send its
//     headers promptly.
//   - ReadTimeout none by default: it covers the whole body, and
//     PUT /images/{id}/upload streams a data directory of many gigabytes.
//     JSON bodies are bounded instead by MaxBodyBytes and by DecodeJSON's
//     per-request BodyReadTimeout.
//   - WriteTimeout none by default: POST /instances answers once Postgres
//     accepts connections, POST /images/{id}/done waits for the finalise
//     (anonymisation may take long), POST /access_tokens waits up to 60 s
//     for the browser, and GET /backups/{id}/download streams an archive. A
//     handler that wants a bound sets it with
//     http.ResponseController(w).SetWriteDeadline.
//   - IdleTimeout 120 s, MaxHeaderBytes 64 KiB.
//
// Server errors (TLS handshakes, ...) go to opts.Logger at level WARN.
func NewHTTPServer(handler http.Handler, opts Options) *http.Server {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &http.Server{
		Addr:              opts.Addr,
		Handler:           handler,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if s.ReadHeaderTimeout == 0 {
		s.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = DefaultIdleTimeout
	}
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return s
}
