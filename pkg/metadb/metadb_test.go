package metadb_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/metadb"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

func TestStartMakesAdoptsAndRestarts(t *testing.T) {
	ctx := context.Background()
	owner := pgtest.Owner(t)
	dir := filepath.Join(pgtest.Dir(t), "meta")
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	c, err := metadb.Start(ctx, dir, pgtest.BinPattern, owner, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(ctx) })
	exec := func(c *metadb.Cluster, sql string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, c.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(c, "create table kept (x int); insert into kept values (42)")
	first, err := postgres.Status(filepath.Join(dir, "data"))
	if err != nil || !first.Alive {
		t.Fatalf("Status = %+v, %v", first, err)
	}
	if first.Port != 5432 {
		t.Fatalf("port %d", first.Port)
	}

	// A second start while it runs (sindrid crashed) adopts the same postmaster.
	c2, err := metadb.Start(ctx, dir, pgtest.BinPattern, owner, log)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := postgres.Status(filepath.Join(dir, "data")); again.PID != first.PID {
		t.Fatalf("second start replaced pid %d with %d, want adoption", first.PID, again.PID)
	}
	if err := c2.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// After a stop, a start brings the same data back.
	c3, err := metadb.Start(ctx, dir, pgtest.BinPattern, owner, log)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c3.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var x int
	if err := conn.QueryRow(ctx, "select x from kept").Scan(&x); err != nil || x != 42 {
		t.Fatalf("after restart: %d, %v", x, err)
	}
	// Unix socket only.
	var listen string
	conn.QueryRow(ctx, "show listen_addresses").Scan(&listen)
	if listen != "" {
		t.Fatalf("listen_addresses = %q, want none", listen)
	}
}
