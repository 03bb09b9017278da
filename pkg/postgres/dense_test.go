package postgres_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// A clone sleeps long when idle, whatever its data directory says, yet
// still vacuums (its autovacuum launcher runs, counting what changes) and
// checkpoints; it runs no logical replication launcher.
func TestCloneIsCheapWhenIdleYetVacuumsAndCheckpoints(t *testing.T) {
	c := pgtest.NewInstance(t)
	// An upload that asks for the opposite is not heard.
	conf := "autovacuum_naptime = 1s\nbgwriter_delay = 10ms\nwal_writer_delay = 1ms\ncheckpoint_timeout = 30s\n" +
		"autovacuum = off\ntrack_counts = off\nmax_logical_replication_workers = 4\n"
	if err := os.WriteFile(filepath.Join(c.DataDir, "postgresql.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Start(t)
	got, err := query(t, c.SocketURL(), `select string_agg(name || '=' || setting || coalesce(unit, ''), ' ' order by name) from pg_settings
		where name in ('autovacuum', 'autovacuum_naptime', 'bgwriter_delay', 'wal_writer_delay', 'checkpoint_timeout', 'track_counts', 'max_logical_replication_workers')`)
	if err != nil {
		t.Fatal(err)
	}
	const want = "autovacuum=on autovacuum_naptime=600s bgwriter_delay=10000ms checkpoint_timeout=1800s max_logical_replication_workers=0 track_counts=on wal_writer_delay=1000ms"
	if got != want {
		t.Errorf("a clone's settings:\n got %s\nwant %s", got, want)
	}
	conn, err := pgx.Connect(ctx, c.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// The control file's checkpoint moves before CHECKPOINT returns; the
	// statistics counters are reported by the checkpointer a moment later.
	var before, after string
	if err := conn.QueryRow(ctx, "select checkpoint_lsn::text from pg_control_checkpoint()").Scan(&before); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "checkpoint"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "select checkpoint_lsn::text from pg_control_checkpoint()").Scan(&after); err != nil || after == before {
		t.Errorf("the last checkpoint: at %s before CHECKPOINT, at %s after (%v)", before, after, err)
	}

	// Its auxiliary processes: the postmaster's children, by title.
	var roles []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(c.Process.PID) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if role := pgtest.ProcessRole(string(cmdline)); role != "backend" { // a session ending
			roles = append(roles, role)
		}
	}
	slices.Sort(roles)
	roles = slices.Compact(roles)
	if !slices.Equal(roles, []string{"autovacuum launcher", "background writer", "checkpointer", "walwriter"}) {
		t.Errorf("the clone's processes: %v; want the autovacuum launcher, background writer, checkpointer and walwriter, and no other", roles)
	}
}
