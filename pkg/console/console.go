// Package console is sindri's web console: server-rendered HTML pages
// under /ui/, from templates and files embedded in the binary, over the
// same services the API calls (api.ImageService, ...), with the same
// rules (a user sees and changes only their own instances and backups;
// only the upload user changes images) and the same errors, shown in
// words (api.AsError: the status, title and detail the API would send).
//
// Sign-in is the OAuth login in the browser (auth.StartBrowserLogin) or,
// without OAuth or instead of it, a token pasted once (the shared secret,
// an OAuth login's token, a named API token). Either makes a session: a
// cookie (HttpOnly, Secure over HTTPS, SameSite=Lax) naming a session the
// server keeps in memory, with its CSRF token, which every form that
// changes something must carry; a POST without it, or from another
// origin, is refused with 403 and changes nothing.
//
// The pages work without JavaScript. With it (static/console.js, no
// library), copy buttons copy, and a page on which something is creating,
// finalising or being written refreshes its content every second until
// nothing is, without reloading.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
)

//go:embed templates static
var files embed.FS

// Prefix is where the console is served.
const Prefix = "/ui/"

// Authenticator is what the console needs of package auth.
type Authenticator interface {
	AuthenticateToken(ctx context.Context, token string) (auth.Principal, error)
	OAuthEnabled() bool
	StartBrowserLogin(w http.ResponseWriter, r *http.Request, loginPath string)
	SetBrowserLoginDone(done auth.BrowserLoginDone)
	RevokeToken(ctx context.Context, id int64) error
}

// Options configure New.
type Options struct {
	Images    api.ImageService
	Instances api.InstanceService
	Backups   api.BackupService
	Status    api.StatusService
	Auth      Authenticator
	// Written, if set, measures the disk each instance has written, for
	// the instances page.
	Written WrittenFunc
	// PublicHostname is the host clients reach instances on.
	PublicHostname string
	Version        string
	Logger         *slog.Logger
	// SessionTTL is how long a sign-in lasts (0: DefaultSessionTTL).
	SessionTTL time.Duration
	Now        func() time.Time
}

// Console serves the pages.
type Console struct {
	opts     Options
	log      *slog.Logger
	sessions *sessions
	pages    map[string]*pageTemplate
	mux      *http.ServeMux
	written  *writtenCache
}

// New returns the console; it registers its OAuth sign-in's end with
// opts.Auth.
func New(opts Options) (*Console, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = DefaultSessionTTL
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	c := &Console{opts: opts, log: opts.Logger, sessions: newSessions(opts.SessionTTL, opts.Now), pages: pages, mux: http.NewServeMux(),
		written: &writtenCache{measure: opts.Written, now: opts.Now, byActor: map[engine.Actor]*writtenMeasure{}}}
	opts.Auth.SetBrowserLoginDone(c.oauthSignedIn)
	c.routes()
	return c, nil
}

// Register serves the console under /ui/ of the API's server, outside the
// versioned API (no Draupnir-Version, and its own sign-in).
func Register(s *api.Server, c *Console) {
	s.Router().PathPrefix(Prefix).Handler(c).Methods(http.MethodGet, http.MethodHead, http.MethodPost)
	s.Router().Handle("/ui", http.RedirectHandler(Prefix, http.StatusMovedPermanently))
}

// RouteKeys are the api.Options route keys the console's routes need
// exempt from the API's version header and bearer token.
var RouteKeys = []string{"GET " + Prefix, "HEAD " + Prefix, "POST " + Prefix, "GET /ui", "HEAD /ui"}

func (c *Console) routes() {
	m := c.mux
	static, _ := fs.Sub(files, "static")
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", staticFiles(static)))
	m.HandleFunc("GET /ui/login", c.signInPage)
	m.HandleFunc("POST /ui/login", c.signInWithToken)
	m.HandleFunc("GET /ui/login/oauth", c.signInWithOAuth)
	m.Handle("POST /ui/logout", c.change(c.signOut))

	m.Handle("GET /ui/{$}", c.view(c.overview))
	m.Handle("GET /ui/images", c.view(c.images))
	m.Handle("GET /ui/instances", c.view(c.instances))
	m.Handle("POST /ui/instances", c.change(c.createInstance))
	m.Handle("GET /ui/instances/{id}", c.view(c.instance))
	m.Handle("GET /ui/instances/{id}/{action}", c.view(c.confirmInstance))
	m.Handle("POST /ui/instances/{id}/reset", c.change(c.resetInstance))
	m.Handle("POST /ui/instances/{id}/protection", c.change(c.protectInstance))
	m.Handle("POST /ui/instances/{id}/expiry", c.change(c.extendInstance))
	m.Handle("POST /ui/instances/{id}/destroy", c.change(c.destroyInstance))
	m.Handle("GET /ui/backups", c.view(c.backups))
	m.Handle("POST /ui/backups", c.change(c.createBackup))
	m.Handle("GET /ui/backups/{id}/download", c.view(c.downloadBackup))
	m.Handle("GET /ui/backups/{id}/delete", c.view(c.confirmBackupDelete))
	m.Handle("POST /ui/backups/{id}/delete", c.change(c.deleteBackup))
	m.Handle("/ui/", c.view(func(w http.ResponseWriter, r *http.Request, q *request) error {
		return &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Title: "Page not found",
			Detail: fmt.Sprintf("the console has no page %s", r.URL.Path)}
	}))
}

// ServeHTTP serves the console's pages.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Pages hold passwords: not cached, not framed, no other origin's code.
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	c.mux.ServeHTTP(w, r)
}

// request is a signed-in request.
type request struct {
	session   *session
	principal auth.Principal
	actor     engine.Actor
}

type handler func(w http.ResponseWriter, r *http.Request, q *request) error

// view serves a page to a signed-in browser; one without a session is
// sent to the sign-in page.
func (c *Console) view(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, ok := c.signedIn(w, r)
		if !ok {
			return
		}
		if err := h(w, r, q); err != nil {
			c.renderError(w, r, q, err)
		}
	})
}

// change serves a form that changes something: signed in, from this
// origin, with the session's CSRF token; anything else changes nothing.
func (c *Console) change(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !sameOrigin(r) {
			c.refuseForgery(w, r, "it comes from another site")
			return
		}
		sess := c.sessions.get(r)
		if sess == nil {
			c.refuseForgery(w, r, "this browser is not signed in")
			return
		}
		if err := r.ParseForm(); err != nil {
			c.refuseForgery(w, r, "the form could not be read")
			return
		}
		if !validCSRF(sess.csrf, r.PostForm.Get(csrfField)) {
			c.refuseForgery(w, r, "it does not carry this session's CSRF token")
			return
		}
		q, ok := c.signedIn(w, r)
		if !ok {
			return
		}
		if err := h(w, r, q); err != nil {
			c.renderError(w, r, q, err)
		}
	})
}

// sameOrigin reports whether a POST comes from the console's own origin
// (browsers send Origin with every POST; a request without it is not a
// browser's cross-site form).
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

func (c *Console) refuseForgery(w http.ResponseWriter, r *http.Request, why string) {
	api.LoggerFrom(r.Context()).Warn("console: refused a change", "path", r.URL.Path, "reason", why)
	c.renderError(w, r, nil, &api.Error{Status: http.StatusForbidden, Code: "csrf_refused", Title: "Refused",
		Detail: "This request was not sent by a form of this console (" + why + "), so nothing was changed. Reload the page and try again."})
}

// signedIn returns the request's session and principal, or answers with
// a redirect to the sign-in page.
func (c *Console) signedIn(w http.ResponseWriter, r *http.Request) (*request, bool) {
	sess := c.sessions.get(r)
	if sess != nil {
		p, err := c.opts.Auth.AuthenticateToken(r.Context(), sess.token)
		if err == nil {
			return &request{session: sess, principal: p, actor: engine.Actor{Owner: p.Owner(), Upload: p.Upload}}, true
		}
		if !errors.Is(err, auth.ErrUnauthorized) {
			c.renderError(w, r, nil, err)
			return nil, false
		}
		c.sessions.remove(sess) // revoked or expired
	}
	target := "/ui/login"
	if r.Method == http.MethodGet && r.URL.Path != Prefix {
		target += "?next=" + url.QueryEscape(r.URL.RequestURI())
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
	return nil, false
}

// redirect answers a change with 303 to path, with a notice for the next
// page.
func (c *Console) redirect(w http.ResponseWriter, r *http.Request, q *request, path, notice string) error {
	if notice != "" {
		c.sessions.notify(q.session, notice, false)
	}
	http.Redirect(w, r, path, http.StatusSeeOther)
	return nil
}

// pathID is the {id} of the path.
func pathID(r *http.Request) (int64, error) {
	v := r.PathValue("id")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Title: "Resource not found",
			Detail: fmt.Sprintf("%q is not an id (a positive number such as 3)", v)}
	}
	return id, nil
}

// formID is an id field of a form.
func formID(r *http.Request, name string) (int64, error) {
	v := r.PostForm.Get(name)
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, api.BadRequest(fmt.Sprintf("%s %q is not an id (a positive number such as 3)", name, v))
	}
	return id, nil
}
