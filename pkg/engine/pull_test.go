package engine_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// replicationSource starts a cluster that allows pg_basebackup over its
// socket, holding table people (3 rows).
func replicationSource(t *testing.T) *pgtest.Instance {
	t.Helper()
	c := pgtest.StartInstance(t)
	if err := postgres.Stop(ctx, c.DataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Settings.Clone = false // clone defaults forbid WAL senders
	c.Configure(t)
	f, err := os.OpenFile(filepath.Join(c.DataDir, postgres.HBAFile), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("local\treplication\tall\t\ttrust\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	c.Restart(t)
	pgtest.Exec(t, c.SocketURL(), "create table people (id int, email text); insert into people values (1, 'a@x'), (2, 'b@x'), (3, 'c@y')")
	return c
}

func TestPullImageFromSourceServer(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	src := replicationSource(t)
	url := fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d", src.SocketDir, src.Port)
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: url})
	if err != nil {
		t.Fatal(err)
	}
	if !img.HasSourceURL || img.SourceURLRedacted != url || img.Status != store.ImagePending {
		t.Fatalf("created %+v", img)
	}
	got, err := e.FinaliseImage(ctx, img.ID)
	if err != nil || got.Status != store.ImageReady || got.PGVersion != "15" || got.SizeBytes <= 0 {
		t.Fatalf("finalise: %+v, %v", got, err)
	}
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if n := mustSQL(t, certConn(t, inst), "select count(*)::text from people"); n != "3" {
		t.Fatalf("people in the clone: %s", n)
	}
	pgtest.Exec(t, passwordConn(inst), "insert into people values (4, 'd@x')")
}

func TestPullFromUnreachableSourceHidesPassword(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	for _, url := range []string{
		"postgres://postgres:s3cret@127.0.0.1:1/postgres",
		"host=127.0.0.1 port=1 user=postgres password='s3cret' dbname=postgres",
	} {
		img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: url})
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.FinaliseImage(ctx, img.ID)
		if !errors.Is(err, engine.ErrFinaliseFailed) || got.Status != store.ImageFailed {
			t.Fatalf("finalise from nowhere: %+v, %v", got, err)
		}
		if got.Error == "" || !strings.Contains(got.Error, "pg_basebackup") {
			t.Fatalf("image error %q does not say what failed", got.Error)
		}
		if strings.Contains(got.Error, "s3cret") || strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("the password leaked: %q / %v", got.Error, err)
		}
	}
}

func TestPullRejectsBadSourceURL(t *testing.T) {
	w := newWorld(t, 1)
	e := engine.New(w.options())
	for _, bad := range []string{"garbage", "http://example.com/", "postgres://user:pw@[::1/db", "host='unterminated"} {
		_, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: bad})
		if !errors.Is(err, engine.ErrInvalid) {
			t.Fatalf("source_url %q: %v, want ErrInvalid", bad, err)
		}
		if strings.Contains(err.Error(), "pw@") {
			t.Fatalf("the error repeats the source_url: %v", err)
		}
	}
}
