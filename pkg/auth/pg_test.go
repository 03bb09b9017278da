package auth_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/metadb"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// meta is the one metadata cluster of the test binary; each test gets a
// database of its own in it (newStore). nil when not running as root.
var meta *metadb.Cluster

func TestMain(m *testing.M) {
	code := func() int {
		flag.Parse()
		if os.Geteuid() != 0 {
			return m.Run() // the tests that need PostgreSQL skip themselves
		}
		dir, err := os.MkdirTemp("", "sindri-auth-meta-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755)
		owner, err := postgres.LookupUser("postgres")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ctx := context.Background()
		meta, err = metadb.Start(ctx, filepath.Join(dir, "meta"), pgtest.BinPattern, owner, testLogger())
		if err != nil {
			fmt.Fprintln(os.Stderr, "auth tests: start PostgreSQL:", err)
			return 1
		}
		defer meta.Stop(ctx)
		return m.Run()
	}()
	os.Exit(code)
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var dbCounter atomic.Int64

// newStore opens a Store on a fresh, migrated database, dropped at cleanup,
// and returns it with the database's URL.
func newStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	pgtest.Owner(t) // skips unless root
	if meta == nil {
		t.Fatal("the metadata cluster did not start")
	}
	ctx := context.Background()
	name := fmt.Sprintf("auth_test_%d_%d", os.Getpid(), dbCounter.Add(1))
	admin := func(sql string) error {
		conn, err := pgx.Connect(ctx, meta.URL())
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := admin("create database " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := admin("drop database " + name + " with (force)"); err != nil {
			t.Error(err)
		}
	})
	url := strings.Replace(meta.URL(), "/"+metadb.Database+"?", "/"+name+"?", 1)
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return st, url
}
