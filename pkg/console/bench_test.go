package console

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/store"
)

// withInstances fills f with n instances of image 1, owned by ten users.
func withInstances(f *fake, n int) {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	exp := at.Add(24 * time.Hour)
	for i := range n {
		id := int64(1000 + i)
		f.instances[id] = store.Instance{ID: id, ImageID: 1, Owner: fmt.Sprintf("user%d@example.com", i%10), Status: store.InstanceRunning,
			Port: 20000 + i, ExpiresAt: &exp, Credentials: store.Credentials{Username: "u", Password: "secret-password-of-32-characters"}, CreatedAt: at}
	}
}

// BenchmarkPages renders each page server-side for the upload user with
// 1,000 instances (over the in-memory services: the console's own cost).
func BenchmarkPages(b *testing.B) {
	f := newFake()
	withInstances(f, 1000)
	opts := f.options()
	opts.Logger = slog.New(slog.DiscardHandler)
	c, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	id, sess := c.sessions.create(uploadToken, 0)
	for _, path := range []string{"/ui/", "/ui/images", "/ui/instances", "/ui/instances/1500", "/ui/backups"} {
		b.Run(path, func(b *testing.B) {
			for b.Loop() {
				r := httptest.NewRequest(http.MethodGet, path, nil)
				r.AddCookie(&http.Cookie{Name: sessionCookie, Value: id})
				w := httptest.NewRecorder()
				c.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatalf("%s: %d %s", path, w.Code, w.Body)
				}
			}
		})
	}
	_ = sess
}

// BenchmarkAPIRequest is an API request through the API's server without
// and with the console's routes registered: what the console adds to a
// request that is not its own.
func BenchmarkAPIRequest(b *testing.B) {
	for _, withConsole := range []bool{false, true} {
		b.Run(fmt.Sprintf("console=%t", withConsole), func(b *testing.B) {
			opts := api.Options{Logger: slog.New(slog.DiscardHandler),
				Authenticate: func(r *http.Request) (any, error) { return "caller", nil }}
			if withConsole {
				opts.VersionExempt = RouteKeys
			}
			s := api.NewServer(opts)
			if withConsole {
				c, err := New(newFake().options())
				if err != nil {
					b.Fatal(err)
				}
				Register(s, c)
			}
			s.Router().Handle("/instances/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
			})).Methods(http.MethodGet)
			h := s.Handler()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodGet, "/instances/7", nil)
				r.Header.Set(api.VersionHeader, "5.4.0")
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}
