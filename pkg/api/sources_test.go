package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

func (f fakeImages) ListOfSource(ctx context.Context, a engine.Actor, name string) ([]store.Image, error) {
	if err := f.call(a, "list images of source %q", name); err != nil {
		return nil, err
	}
	if name != "prod" {
		return nil, fmt.Errorf("there is no source named %q: %w", name, engine.ErrNotFound)
	}
	img := f.images[1]
	img.SourceID = 7
	return []store.Image{img}, nil
}

// fakeSources holds source 7, and lets the upload user only near it, as
// the engine does.
type fakeSources struct {
	*fake
	last *engine.SourcePatch
	req  *engine.SourceRequest
}

var fakeSource = store.Source{ID: 7, Name: "prod", URLRedacted: "postgres://rep@db.example.com/postgres",
	Mode: store.SourceBasebackup, Schedule: "6h", AnonymisationScript: "update users set email = 'x'", Keep: 2,
	Status: store.SourceFailed, Error: "pg_basebackup failed", LastImageID: 1,
	CreatedAt: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), UpdatedAt: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}

func (f fakeSources) check(a engine.Actor, format string, args ...any) error {
	if err := f.call(a, format, args...); err != nil {
		return err
	}
	if !a.Upload {
		return fmt.Errorf("only the upload user may see or change sources: %w", engine.ErrForbidden)
	}
	return nil
}

func (f fakeSources) one(id int64) (store.Source, error) {
	if id != 7 {
		return store.Source{}, fmt.Errorf("there is no source %d: %w", id, engine.ErrNotFound)
	}
	return fakeSource, nil
}

func (f fakeSources) List(ctx context.Context, a engine.Actor) ([]store.Source, error) {
	if err := f.check(a, "list sources"); err != nil {
		return nil, err
	}
	return []store.Source{fakeSource}, nil
}

func (f fakeSources) Get(ctx context.Context, a engine.Actor, id int64) (store.Source, error) {
	if err := f.check(a, "get source %d", id); err != nil {
		return store.Source{}, err
	}
	return f.one(id)
}

func (f fakeSources) Create(ctx context.Context, a engine.Actor, req engine.SourceRequest) (store.Source, error) {
	if err := f.check(a, "create source %q", req.Name); err != nil {
		return store.Source{}, err
	}
	*f.req = req
	return fakeSource, nil
}

func (f fakeSources) Update(ctx context.Context, a engine.Actor, id int64, p engine.SourcePatch) (store.Source, error) {
	if err := f.check(a, "update source %d", id); err != nil {
		return store.Source{}, err
	}
	*f.last = p
	return f.one(id)
}

func (f fakeSources) Delete(ctx context.Context, a engine.Actor, id int64) error {
	if err := f.check(a, "delete source %d", id); err != nil {
		return err
	}
	_, err := f.one(id)
	return err
}

func (f fakeSources) Refresh(ctx context.Context, a engine.Actor, id int64) (store.Source, error) {
	if err := f.check(a, "refresh source %d", id); err != nil {
		return store.Source{}, err
	}
	src, err := f.one(id)
	src.Status = store.SourceRefreshing
	return src, err
}

func newSourcesServer(f *fake) (http.Handler, fakeSources) {
	s := NewServer(Options{Logger: discardLogger(), Authenticate: func(r *http.Request) (any, error) {
		p, ok := testPrincipals[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		if !ok {
			return nil, ErrUnauthorized
		}
		return p, nil
	}})
	fs := fakeSources{fake: f, last: &engine.SourcePatch{}, req: &engine.SourceRequest{}}
	(&Handlers{Images: fakeImages{f}, Instances: fakeInstances{f}, Backups: fakeBackups{f}, Status: fakeStatus{f},
		Sources: fs, PublicHostname: "db.example.com"}).Register(s)
	return s.Handler(), fs
}

// A source is rendered without its url's password and without its
// script, both write-only; what a client sends reaches the service.
func TestSourcesRenderAndDecode(t *testing.T) {
	f := newFake()
	h, fs := newSourcesServer(f)

	w := do(h, as("secret", "GET", "/sources/7", ""))
	var src resource.Source
	if err := resource.Unmarshal(w.Body.Bytes(), &src); err != nil || w.Code != 200 {
		t.Fatalf("GET /sources/7: %d %v %s", w.Code, err, w.Body)
	}
	if src.URL != "postgres://rep@db.example.com/postgres" || src.Status != "failed" || src.Error == "" || src.Keep != 2 ||
		src.Schedule != "6h" || src.LastImageID != 1 || src.LastRefreshAt != nil {
		t.Errorf("source %+v", src)
	}
	if strings.Contains(w.Body.String(), "anonymisation_script") || strings.Contains(w.Body.String(), "update users") {
		t.Errorf("the script is shown: %s", w.Body)
	}

	w = do(h, as("secret", "POST", "/sources", `{"data":{"type":"sources","attributes":{"name":"prod","url":"postgres://rep:pw@db/postgres","schedule":"0 3 * * *","keep":4,"anonymisation_script":"select 1"}}}`))
	if w.Code != 201 {
		t.Fatalf("POST /sources: %d %s", w.Code, w.Body)
	}
	if r := *fs.req; r.Name != "prod" || r.URL != "postgres://rep:pw@db/postgres" || r.Schedule != "0 3 * * *" || r.Keep != 4 || r.AnonymisationScript != "select 1" || r.Mode != "" {
		t.Errorf("create request %+v", r)
	}
	if strings.Contains(w.Body.String(), "pw@") {
		t.Errorf("the created source shows the password: %s", w.Body)
	}

	w = do(h, as("secret", "PATCH", "/sources/7", `{"data":{"type":"sources","id":"7","attributes":{"keep":1,"mode":"basebackup"}}}`))
	if w.Code != 200 || fs.last.Keep == nil || *fs.last.Keep != 1 || fs.last.Mode == nil || fs.last.Name != nil || fs.last.URL != nil {
		t.Fatalf("PATCH: %d %s, patch %+v", w.Code, w.Body, *fs.last)
	}

	w = do(h, as("secret", "POST", "/sources/7/refresh", ""))
	if err := resource.Unmarshal(w.Body.Bytes(), &src); err != nil || w.Code != 202 || src.Status != "refreshing" {
		t.Fatalf("refresh: %d %s", w.Code, w.Body)
	}
	if w = do(h, as("secret", "DELETE", "/sources/7", "")); w.Code != 204 {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}

	w = do(h, as("bob", "GET", "/images?source=prod", ""))
	var images []resource.Image
	if err := resource.UnmarshalList(w.Body.Bytes(), &images); err != nil || w.Code != 200 || len(images) != 1 || images[0].SourceID != 7 {
		t.Fatalf("GET /images?source=prod: %d %s", w.Code, w.Body)
	}
	if got := f.lastCall(); got != `bob@example.com: list images of source "prod"` {
		t.Errorf("call %q", got)
	}
}

// Bad requests about sources get a 4xx that says what is wrong; another
// user than the upload user gets 403.
func TestSourcesRefuseBadRequests(t *testing.T) {
	f := newFake()
	h, _ := newSourcesServer(f)
	for _, c := range []struct {
		token, method, path, body string
		status                    int
		says                      string
	}{
		{"secret", "POST", "/sources", `{"data":{"type":"sources","attributes":{"url":"postgres://db/x"}}}`, 400, "name is required"},
		{"secret", "POST", "/sources", `{"data":{"type":"sources","attributes":{"name":"p"}}}`, 400, "url is required"},
		{"secret", "POST", "/sources", `{"data":{"type":"sources","attributes":{"name":"p","url":"postgres://db/x","keep":0}}}`, 400, "keep must be at least 1"},
		{"secret", "POST", "/sources", `{"data":{"type":"sources","attributes":{"name":"p","url":"postgres://db/x","keep":"2"}}}`, 400, "keep"},
		{"secret", "POST", "/sources", `{"data":{"type":"sources","attributes":{"name":"p","url":"postgres://db/x","status":"idle"}}}`, 400, "status"},
		{"secret", "POST", "/sources", `{"data":{"type":"images","attributes":{"name":"p","url":"postgres://db/x"}}}`, 409, "images"},
		{"secret", "PATCH", "/sources/7", `{"data":{"type":"sources","attributes":{}}}`, 400, "give at least one"},
		{"secret", "PATCH", "/sources/7", `{"data":{"type":"sources","id":"8","attributes":{"keep":2}}}`, 409, "source 8"},
		{"secret", "GET", "/sources/8", "", 404, "no source 8"},
		{"secret", "GET", "/sources/x", "", 404, "positive integers"},
		{"secret", "GET", "/images?source=", "", 400, "source must name"},
		{"secret", "GET", "/images?source=nope", "", 404, `no source named \"nope\"`},
		{"bob", "GET", "/sources", "", 403, "upload user"},
		{"bob", "GET", "/sources/7", "", 403, "upload user"},
		{"bob", "POST", "/sources", `{"data":{"type":"sources","attributes":{"name":"p","url":"postgres://db/x"}}}`, 403, "upload user"},
		{"bob", "POST", "/sources/7/refresh", "", 403, "upload user"},
		{"bob", "DELETE", "/sources/7", "", 403, "upload user"},
	} {
		w := do(h, as(c.token, c.method, c.path, c.body))
		if w.Code != c.status || !strings.Contains(w.Body.String(), c.says) {
			t.Errorf("%s %s %s as %s: %d %s; want %d saying %q", c.method, c.path, c.body, c.token, w.Code, w.Body, c.status, c.says)
		}
	}
}
