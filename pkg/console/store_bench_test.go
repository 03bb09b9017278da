package console

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
)

// TestMain starts the metadata Postgres that BenchmarkPagesOverTheStore
// reads (as root only; the handler tests need none).
func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

// BenchmarkPagesOverTheStore renders the pages that list instances for
// the upload user with 1,000 instances in a real metadata store, through
// the engine's services (their credentials unsealed on each read, as the
// API's list does): the console's cost as sindrid pays it, less the
// storage, which these pages do not ask.
func BenchmarkPagesOverTheStore(b *testing.B) {
	ctx := context.Background()
	st, _ := storetest.New(b)
	img, err := st.CreateImage(ctx, store.ImageInput{Name: "prod", BackedUpAt: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	if err := st.MarkImageReady(ctx, img.ID, "15", 1<<30, false); err != nil {
		b.Fatal(err)
	}
	exp := time.Now().Add(24 * time.Hour)
	var last int64
	for i := range 1000 {
		inst, err := st.CreateInstance(ctx, store.InstanceInput{ImageID: img.ID, Owner: fmt.Sprintf("user%d@example.com", i%10), ExpiresAt: &exp})
		if err != nil {
			b.Fatal(err)
		}
		if err := st.SetInstanceCredentials(ctx, inst.ID, store.Credentials{Username: "sindri", Password: "a-password-of-some-32-characters",
			CACertificate: "ca", ServerCertificate: "cert", ServerKey: "key", ClientCertificate: "cert", ClientKey: "key"}); err != nil {
			b.Fatal(err)
		}
		if err := st.SetInstanceStatus(ctx, inst.ID, store.InstanceRunning, ""); err != nil {
			b.Fatal(err)
		}
		last = inst.ID
	}
	svc := engine.New(engine.Options{Store: st, Logger: slog.New(slog.DiscardHandler)}).Services()
	opts := newFake().options()
	opts.Images, opts.Instances, opts.Backups = svc.Images, svc.Instances, svc.Backups
	opts.Logger = slog.New(slog.DiscardHandler)
	c, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	id, _ := c.sessions.create(uploadToken, 0)
	for _, path := range []string{"/ui/instances", "/ui/images", fmt.Sprintf("/ui/instances/%d", last), "/ui/backups"} {
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
}
