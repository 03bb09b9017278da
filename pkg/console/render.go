package console

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/auth"
)

type pageTemplate = template.Template

// layoutData is what every page's layout shows around its content.
type layoutData struct {
	Title    string
	Nav      string
	SignedIn bool
	User     string
	Upload   bool
	CSRF     string
	Notices  []notice
	// Live: something on the page is changing; console.js refreshes the
	// content every second until the page says it no longer is.
	Live    bool
	Content any
}

var pageTitles = map[string][2]string{
	"overview.html":  {"Overview", "overview"},
	"images.html":    {"Images", "images"},
	"instances.html": {"Instances", "instances"},
	"instance.html":  {"Instance", "instances"},
	"backups.html":   {"Backups", "backups"},
	"confirm.html":   {"Confirm", ""},
	"signin.html":    {"Sign in", ""},
	"error.html":     {"Error", ""},
}

func parsePages() (map[string]*pageTemplate, error) {
	pages := map[string]*pageTemplate{}
	for name := range pageTitles {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+name)
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// render answers with page around data; q is nil for a browser that is
// not signed in.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, page string, q *request, data any) {
	c.renderPage(w, r, status, page, q, data, false)
}

// renderLive is render of a page that changes while live.
func (c *Console) renderLive(w http.ResponseWriter, r *http.Request, q *request, page string, data any, live bool) {
	c.renderPage(w, r, http.StatusOK, page, q, data, live)
}

func (c *Console) renderPage(w http.ResponseWriter, r *http.Request, status int, page string, q *request, data any, live bool) {
	titles := pageTitles[page]
	l := layoutData{Title: titles[0], Nav: titles[1], Live: live, Content: data}
	if q != nil {
		l.SignedIn, l.User, l.Upload, l.CSRF = true, who(q.principal), q.actor.Upload, q.session.csrf
		l.Notices = c.sessions.takeNotices(q.session)
	}
	if t, ok := data.(interface{ title() string }); ok {
		l.Title = t.title()
	}
	var buf bytes.Buffer
	if err := c.pages[page].Execute(&buf, l); err != nil {
		api.LoggerFrom(r.Context()).Error("console: rendering a page", "page", page, "err", err)
		http.Error(w, "the page could not be rendered; see the server's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func (d instanceData) title() string { return fmt.Sprintf("Instance %d", d.ID) }
func (d confirmData) title() string  { return d.Title }
func (d errorData) title() string    { return d.Title }

type errorData struct {
	Status int
	Title  string
	Detail string
	Back   string
}

// asError is err as the API would answer it (status, title, detail in
// words); an internal error is logged with the request id it shows.
func (c *Console) asError(ctx context.Context, err error) *api.Error {
	e, internal := api.AsError(err, api.RequestID(ctx))
	if internal {
		api.LoggerFrom(ctx).LogAttrs(ctx, slog.LevelError, "console: request failed", slog.String("error", err.Error()))
	}
	return e
}

// renderError answers with the error page: the status and words the API
// would answer err with.
func (c *Console) renderError(w http.ResponseWriter, r *http.Request, q *request, err error) {
	e := c.asError(r.Context(), err)
	back := Prefix
	if ref, err := url.Parse(r.Referer()); err == nil && strings.EqualFold(ref.Host, r.Host) && strings.HasPrefix(ref.Path, Prefix) {
		back = ref.Path // the console's page the browser came from, never another site
	}
	c.render(w, r, e.Status, "error.html", q, errorData{Status: e.Status, Title: e.Title, Detail: e.Detail, Back: back})
}

// who names a principal for the header.
func who(p auth.Principal) string {
	if p.Upload {
		return "the upload user"
	}
	return p.Owner()
}

var funcs = template.FuncMap{
	"bytes":    formatBytes,
	"time":     formatTime,
	"relative": relative,
	"num":      func(f float64) string { return strconv.FormatFloat(f, 'f', 3, 64) },
	"ms":       func(ms int64) string { return fmt.Sprintf("%d ms", ms) },
	"deref":    func(p *int64) int64 { return *p },
	"label": func(s string) string {
		return strings.ReplaceAll(s, "_", " ")
	},
}

// formatBytes is n in binary units, as df -h shows them.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func formatTime(t any) string {
	switch v := t.(type) {
	case time.Time:
		if v.IsZero() {
			return "—"
		}
		return v.UTC().Format("2006-01-02 15:04 UTC")
	case *time.Time:
		if v == nil {
			return "never"
		}
		return formatTime(*v)
	}
	return fmt.Sprint(t)
}

// relative is how far t is from now, in words ("in 23 h", "5 min ago").
func relative(t any) string {
	var at time.Time
	switch v := t.(type) {
	case time.Time:
		at = v
	case *time.Time:
		if v == nil {
			return ""
		}
		at = *v
	}
	if at.IsZero() {
		return ""
	}
	d := time.Until(at)
	future := d > 0
	if !future {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		s = "less than a minute"
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d.Hours()))
	default:
		s = fmt.Sprintf("%d days", int(d.Hours()/24))
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// staticFiles serves the embedded CSS and JavaScript, cacheable for an
// hour (they change only with the binary).
func staticFiles(fsys fs.FS) http.Handler {
	h := http.FileServerFS(fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}
