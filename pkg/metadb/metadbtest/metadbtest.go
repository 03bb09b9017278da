// Package metadbtest gives tests a real metadata PostgreSQL, started as
// sindrid starts its own (metadb.Start): one cluster per test binary,
// started by Main, and a fresh, empty database per test, made by
// NewDatabase and dropped at its cleanup.
package metadbtest

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
)

var (
	meta      *metadb.Cluster
	dbCounter atomic.Int64
)

// Main starts the cluster (as root; otherwise the tests that need it fail,
// or skip with SINDRI_SKIP_ROOT_TESTS=1), runs the tests and stops it.
// Call it from TestMain: os.Exit(metadbtest.Main(m)).
func Main(m *testing.M) int {
	flag.Parse()
	if os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "sindri-metadbtest-")
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
	meta, err = metadb.Start(ctx, filepath.Join(dir, "meta"), pgtest.BinPattern, owner, Logger())
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the test metadata PostgreSQL:", err)
		return 1
	}
	defer meta.Stop(ctx)
	return m.Run()
}

// Logger logs at debug level with -v, and nowhere without.
func Logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// NewDatabase makes a fresh, empty database, dropped (with the sessions
// left in it) at cleanup, and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	pgtest.Owner(t) // fails unless root
	if meta == nil {
		t.Fatal("the test metadata PostgreSQL did not start (call metadbtest.Main, or storetest.Main, from TestMain)")
	}
	ctx := context.Background()
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), dbCounter.Add(1))
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
	return strings.Replace(meta.URL(), "/"+metadb.Database+"?", "/"+name+"?", 1)
}
