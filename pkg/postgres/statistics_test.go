package postgres_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

var autovacuumVisit = regexp.MustCompile(`autovacuum: processing database "([^"]+)"`)

// visitedDatabases are the databases the autovacuum workers of the
// cluster's current run have visited, from its log (debug1).
func visitedDatabases(t *testing.T, c *pgtest.Instance) []string {
	t.Helper()
	log, err := os.ReadFile(filepath.Join(c.DataDir, postgres.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	var dbs []string
	for _, m := range autovacuumVisit.FindAllStringSubmatch(string(log), -1) {
		dbs = append(dbs, m[1])
	}
	slices.Sort(dbs)
	return slices.Compact(dbs)
}

// An image's saved statistics name every database its freeze used; a
// clone that starts with them has its autovacuum launcher start a worker
// in each, every naptime, for nothing. A clone of an image whose
// statistics were forgotten visits only the databases its sessions use,
// and there vacuums and analyses what changes, as any server does.
func TestAClonesAutovacuumVisitsOnlyTheDatabasesItsSessionsUse(t *testing.T) {
	restore := postgres.WithCloneSettings(map[string]string{"autovacuum_naptime": "1s", "log_min_messages": "debug1"})
	defer restore()

	var clones []*pgtest.Instance
	for range 2 {
		c := pgtest.NewInstance(t)
		c.Start(t)
		pgtest.Exec(t, c.SocketURL(), "create database app")
		pgtest.Exec(t, postgres.SocketURL(c.SocketDir, c.Port, "postgres", "app"), "create table t as select g from generate_series(1, 10000) g")
		// As finalise leaves an image: every database frozen and
		// analysed, then a clean shutdown.
		if err := c.FreezeDatabases(ctx, true, nil); err != nil {
			t.Fatal(err)
		}
		if err := postgres.Stop(ctx, c.DataDir, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		clones = append(clones, c)
	}
	kept, forgotten := clones[0], clones[1]
	if err := postgres.ForgetStatistics(forgotten.DataDir); err != nil {
		t.Fatal(err)
	}
	kept.Restart(t)
	forgotten.Restart(t)

	all := []string{"app", "postgres", "template1"}
	deadline := time.Now().Add(time.Minute)
	for !slices.Equal(visitedDatabases(t, kept), all) {
		if time.Now().After(deadline) {
			t.Fatalf("the clone that kept its statistics visited %v within a minute at a naptime of 1 s; want %v", visitedDatabases(t, kept), all)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Sindri's own session at the start uses database postgres.
	if got := visitedDatabases(t, forgotten); slices.ContainsFunc(got, func(db string) bool { return db != "postgres" }) {
		t.Errorf("the clone without saved statistics visited %v; its sessions used only postgres", got)
	}

	// Changed by a session, a table is analysed again.
	conn, err := pgx.Connect(ctx, postgres.SocketURL(forgotten.SocketDir, forgotten.Port, "postgres", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "insert into t select g from generate_series(1, 10000) g"); err != nil {
		t.Fatal(err)
	}
	for {
		var analysed bool
		if err := conn.QueryRow(ctx, "select last_autoanalyze is not null from pg_stat_user_tables where relname = 't'").Scan(&analysed); err != nil {
			t.Fatal(err)
		}
		if analysed {
			break
		}
		if time.Now().After(deadline.Add(time.Minute)) {
			t.Fatalf("the changed table was not analysed; autovacuum visited %v", visitedDatabases(t, forgotten))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := visitedDatabases(t, forgotten); !slices.Contains(got, "app") {
		t.Errorf("autovacuum visited %v, not the database a session changed", got)
	}
}

// A statistics directory in an upload may be a symbolic link, or hold
// one: the link goes, what it points to stays.
func TestForgetStatisticsFollowsNoLink(t *testing.T) {
	dataDir, outside := t.TempDir(), t.TempDir()
	kept := filepath.Join(outside, "pgstat.stat")
	if err := os.WriteFile(kept, []byte("not the upload's"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dataDir, "pg_stat")); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dataDir, "pg_stat_tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(kept, filepath.Join(tmp, "pgss_query_texts.stat")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "global.tmp"), []byte("counters"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Owned as a data directory is, not by the caller.
	owner := pgtest.Owner(t)
	for _, dir := range []string{dataDir, tmp} {
		if err := owner.Chown(dir, false); err != nil {
			t.Fatal(err)
		}
	}

	if err := postgres.ForgetStatistics(dataDir); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(kept); err != nil || string(data) != "not the upload's" {
		t.Errorf("the file a link in the upload points to: %q, %v", data, err)
	}
	var root syscall.Stat_t
	if err := syscall.Stat(dataDir, &root); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pg_stat", "pg_stat_tmp"} {
		dir := filepath.Join(dataDir, name)
		info, err := os.Lstat(dir)
		if err != nil || !info.IsDir() {
			t.Errorf("%s: %v, %v; want a directory", name, info, err)
			continue
		}
		if st := info.Sys().(*syscall.Stat_t); st.Uid != root.Uid || st.Gid != root.Gid || st.Uid == uint32(os.Getuid()) {
			t.Errorf("%s is owned by %d:%d, the data directory by %d:%d", name, st.Uid, st.Gid, root.Uid, root.Gid)
		}
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("%s still holds %d entries", name, len(entries))
		}
	}
}
