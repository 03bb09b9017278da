package metadb_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

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

// TestSuperviseStartsAnEndedPostmasterAgain: a postmaster that ends while
// sindrid runs (as a full disk ends it) is started again, with its data,
// and Stop ends the supervision before it stops the cluster.
func TestSuperviseStartsAnEndedPostmasterAgain(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(pgtest.Dir(t), "meta")
	c, err := metadb.Start(ctx, dir, pgtest.BinPattern, pgtest.Owner(t), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(ctx) })
	c.Supervise()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "create table kept (x int); insert into kept values (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	dataDir := filepath.Join(dir, "data")
	first, err := postgres.Status(dataDir)
	if err != nil || !first.Alive {
		t.Fatalf("Status = %+v, %v", first, err)
	}
	if err := syscall.Kill(first.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var x int
		conn, err := pgx.Connect(ctx, c.URL())
		if err == nil {
			err = conn.QueryRow(ctx, "select x from kept").Scan(&x)
			conn.Close(ctx)
		}
		if err == nil && x == 42 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metadata cluster is not back 60s after its postmaster was killed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if again, err := postgres.Status(dataDir); err != nil || !again.Alive || again.PID == first.PID {
		t.Fatalf("after the kill: %+v, %v; want a new postmaster", again, err)
	}

	// Stopped, it stays stopped.
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // three of supervision's looks
	if st, err := postgres.Status(dataDir); err == nil && st.Alive {
		t.Fatalf("the cluster runs again (pid %d) after Stop", st.PID)
	}
}
