package engine_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// refreshEnv makes the child sindrid refresh that source instead, and
// wait for the refresh.
const refreshEnv = "SINDRI_ENGINE_TEST_REFRESH"

// childRefresh is the short-lived sindrid that refreshes one source.
func childRefresh(id string) int {
	sourceID, _ := strconv.ParseInt(id, 10, 64)
	s, err := store.Open(ctx, os.Getenv(dbEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := s.LoadKeyring(ctx, os.Getenv(keyEnv), false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	root := os.Getenv(rootEnv)
	d, err := btrfs.New(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	owner, _ := postgres.LookupUser("postgres")
	e := engine.New(engine.Options{
		Store: s, Storage: d, Owner: owner, BinPattern: pgtest.BinPattern, PublicHostname: "localhost",
		SharedBuffers: "16MB", RunDir: os.Getenv(runDirEnv), UploadsDir: filepath.Join(root, "image_uploads"),
		BackupsDir: filepath.Join(root, "backups"), Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if _, err := e.RefreshSource(ctx, sourceID); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	e.WaitRefreshes()
	return 0
}

// socketURL is a source url that reaches pgtest cluster c over its socket.
func socketURL(c *pgtest.Instance) string {
	return fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d", c.SocketDir, c.Port)
}

// runSources runs the engine's source loop until the test ends.
func runSources(t *testing.T, e *engine.Engine) {
	t.Helper()
	c, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.RunSources(c)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		e.WaitRefreshes()
	})
}

// waitSource polls source id until ok says so, failing after limit.
func waitSource(t *testing.T, st *store.Store, id int64, limit time.Duration, what string, ok func(store.Source) bool) store.Source {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		src, err := st.GetSource(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(src) {
			return src
		}
		if time.Now().After(deadline) {
			t.Fatalf("source %d after %s: %s %q (last image %d), want %s", id, limit, src.Status, src.Error, src.LastImageID, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readyImagesOf lists the ids of a source's ready images, newest first.
func readyImagesOf(t *testing.T, st *store.Store, id int64) []int64 {
	t.Helper()
	imgs, err := st.ListImagesOfSource(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, img := range imgs {
		if img.Status == store.ImageReady {
			ids = append(ids, img.ID)
		}
	}
	return ids
}

// pgbenchLoad initialises pgbench on the source and runs it until the
// test ends, each transaction also recording its time in table ticks.
func pgbenchLoad(t *testing.T, src *pgtest.Instance) {
	t.Helper()
	pgtest.Exec(t, src.SocketURL(), "create table ticks (at timestamptz not null)")
	pgbench := filepath.Join(pgtest.BinDir(t), "pgbench")
	conn := []string{"-h", src.SocketDir, "-p", strconv.Itoa(src.Port), "-U", "postgres"}
	init := exec.Command("runuser", append([]string{"-u", "postgres", "--", pgbench, "-i", "-s", "1", "-q"}, append(conn, "postgres")...)...)
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	script := filepath.Join(pgtest.Dir(t), "ticks.sql")
	if err := os.WriteFile(script, []byte("insert into ticks values (clock_timestamp());\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(script), 0o755)
	c, cancel := context.WithCancel(ctx)
	run := exec.CommandContext(c, "runuser", append([]string{"-u", "postgres", "--", pgbench,
		"-b", "tpcb-like@1", "-f", script + "@1", "-c", "2", "-R", "100", "-T", "600", "-n"}, append(conn, "postgres")...)...)
	// runuser does not pass its signal on: the whole group is ended.
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	run.Cancel = func() error { return syscall.Kill(-run.Process.Pid, syscall.SIGTERM) }
	run.WaitDelay = 10 * time.Second
	var out testenv.SyncBuffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
	})
	// Until it writes.
	for deadline := time.Now().Add(30 * time.Second); mustSQL(t, src.SocketURL(), "select count(*)::text from ticks") == "0"; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			t.Fatalf("pgbench ended: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbench wrote nothing in 30 s\n%s", out.String())
		}
	}
}

// newestTick is the time of the newest row of ticks in image id, read
// from a clone of it (destroyed after).
func newestTick(t *testing.T, e *engine.Engine, id int64) time.Time {
	t.Helper()
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: id, Owner: "upload"})
	if err != nil {
		t.Fatalf("an instance of image %d: %v", id, err)
	}
	defer e.DestroyInstance(ctx, inst.ID)
	s := mustSQL(t, certConn(t, inst), "select to_char(max(at) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') from ticks")
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// A basebackup source with a 10 s schedule, pulled under pgbench's write
// load: each refresh makes a ready image holding what was written just
// before the refresh began; keep = 2 leaves two, but an image in use
// stays beyond keep until its last instance goes.
func TestSourceBasebackupRefreshesOnScheduleAndRetains(t *testing.T) {
	w := newWorld(t, 10)
	opts := w.options()
	opts.SourceTick = 200 * time.Millisecond
	e := engine.New(opts)
	src := pgtest.StartSource(t)
	pgbenchLoad(t, src)
	s, err := e.CreateSource(ctx, engine.SourceRequest{Name: "prod", URL: socketURL(src), Schedule: "10s", Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != store.SourceIdle || s.NextRefreshAt == nil || time.Since(*s.NextRefreshAt) > time.Minute {
		t.Fatalf("new source: %+v; want idle and due now", s)
	}
	runSources(t, e)

	var made []int64
	var inUse store.Instance
	var lastTick time.Time
	for len(made) < 3 {
		prev := int64(0)
		if len(made) > 0 {
			prev = made[len(made)-1]
		}
		got := waitSource(t, w.store, s.ID, 3*time.Minute, "a new image", func(s store.Source) bool {
			return s.LastImageID != prev && s.Status == store.SourceIdle
		})
		img, err := w.store.GetImage(ctx, got.LastImageID)
		if err != nil || img.Status != store.ImageReady || img.SourceID != s.ID {
			t.Fatalf("refresh %d's image: %+v, %v", len(made)+1, img, err)
		}
		if got.NextRefreshAt == nil || got.LastRefreshAt == nil || got.NextRefreshAt.Sub(*got.LastRefreshAt) != 10*time.Second {
			t.Fatalf("after refresh %d: last %v next %v, want 10 s apart", len(made)+1, got.LastRefreshAt, got.NextRefreshAt)
		}
		made = append(made, img.ID)
		if len(made) == 1 {
			// An instance of the first image: it keeps it beyond keep.
			if inUse, err = e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "dev@example.com"}); err != nil {
				t.Fatal(err)
			}
		}
		tick := newestTick(t, e, img.ID)
		t.Logf("image %d: refresh began %s, newest row %s", img.ID, img.BackedUpAt.Format(time.StampMilli), tick.Format(time.StampMilli))
		if tick.Before(img.BackedUpAt.Add(-2*time.Second)) || !tick.After(lastTick) {
			t.Fatalf("image %d's newest row is from %s; the refresh began %s, the previous image's newest row is from %s",
				img.ID, tick, img.BackedUpAt, lastTick)
		}
		lastTick = tick
	}
	// Three images made, keep 2: the first stays while its instance does.
	if got := readyImagesOf(t, w.store, s.ID); len(got) < 3 || !slices.Contains(got, made[0]) {
		t.Fatalf("ready images of the source %v: the first, in use, must stay", got)
	}
	if err := e.DestroyInstance(ctx, inUse.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := w.store.GetImage(ctx, made[0])
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %d, beyond keep, still there 30 s after its last instance went: %v", made[0], err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := readyImagesOf(t, w.store, s.ID); len(got) != 2 || got[0] < made[2] {
		t.Fatalf("ready images of the source %v: want the newest 2 (image %d and the one before)", got, made[2])
	}
	// Image 1, the world's own, is no source's: untouched.
	if img, err := w.store.GetImage(ctx, 1); err != nil || img.Status != store.ImageReady {
		t.Fatalf("image 1: %+v, %v", img, err)
	}
}

// A source that cannot be reached says failed, with the reason and
// without the password; nothing half-made stays; it is retried after a
// backoff; the images and instances already there are untouched.
func TestSourceUnreachableFailsAndRetries(t *testing.T) {
	w := newWorld(t, 5)
	opts := w.options()
	opts.SourceTick = 100 * time.Millisecond
	opts.SourceRetryMin = 2 * time.Second
	e := engine.New(opts)
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	const password = "Unreach-S3cret"
	s, err := e.CreateSource(ctx, engine.SourceRequest{Name: "gone", URL: "postgres://rep:" + password + "@127.0.0.1:1/postgres", Schedule: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	runSources(t, e)
	failed := waitSource(t, w.store, s.ID, time.Minute, "failed", func(s store.Source) bool { return s.Status == store.SourceFailed })
	if !strings.Contains(failed.Error, "pg_basebackup") || !strings.Contains(failed.Error, "127.0.0.1") || strings.Contains(failed.Error, password) {
		t.Fatalf("the failure says %q: want pg_basebackup's reason, without the password", failed.Error)
	}
	if failed.NextRefreshAt == nil || time.Until(*failed.NextRefreshAt) > 3*time.Second || failed.Failures != 1 {
		t.Fatalf("after the first failure: next %v, failures %d; want a retry within the 2 s backoff", failed.NextRefreshAt, failed.Failures)
	}
	imgs, err := w.store.ListImagesOfSource(ctx, s.ID)
	if err != nil || len(imgs) != 0 {
		t.Fatalf("images of the failed source: %+v, %v; want none", imgs, err)
	}
	// Retried, and failing again, with a longer backoff.
	again := waitSource(t, w.store, s.ID, time.Minute, "a second failure", func(s store.Source) bool { return s.Failures >= 2 })
	if again.NextRefreshAt == nil || again.NextRefreshAt.Sub(again.UpdatedAt) < 3*time.Second {
		t.Fatalf("after the second failure: next %v, updated %v; want the backoff doubled", again.NextRefreshAt, again.UpdatedAt)
	}
	if got, err := w.store.GetInstance(ctx, inst.ID); err != nil || got.Status != store.InstanceRunning {
		t.Fatalf("the instance meanwhile: %+v, %v", got, err)
	}
	if img, err := w.store.GetImage(ctx, 1); err != nil || img.Status != store.ImageReady {
		t.Fatalf("image 1 meanwhile: %+v, %v", img, err)
	}
}

// What a source is made of is checked, each refusal saying what to fix.
func TestSourceRefusesBadInput(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	good := engine.SourceRequest{Name: "prod", URL: "postgres://rep:pw@db.example.com/postgres", Schedule: "6h"}
	for _, c := range []struct {
		change func(*engine.SourceRequest)
		says   string
	}{
		{func(r *engine.SourceRequest) { r.Name = "" }, "source name"},
		{func(r *engine.SourceRequest) { r.Name = "a/b" }, "source name"},
		{func(r *engine.SourceRequest) { r.Name = strings.Repeat("x", 64) }, "source name"},
		{func(r *engine.SourceRequest) { r.URL = "" }, "url is required"},
		{func(r *engine.SourceRequest) { r.URL = "mysql://x" }, "not a PostgreSQL connection string"},
		{func(r *engine.SourceRequest) { r.Schedule = "5s" }, "shorter than"},
		{func(r *engine.SourceRequest) { r.Schedule = "61 * * * *" }, "neither an interval"},
		{func(r *engine.SourceRequest) { r.Schedule = "0 3 * * * *" }, "neither an interval"},
		{func(r *engine.SourceRequest) { r.Schedule = "CRON_TZ=Europe/Paris 0 3 * * *" }, "time zone"},
		{func(r *engine.SourceRequest) { r.Schedule = "0 0 30 2 *" }, "matches no time"},
		{func(r *engine.SourceRequest) { r.Keep = -1 }, "keep must be"},
		{func(r *engine.SourceRequest) { r.Mode = "logical" }, "not a source mode"},
	} {
		req := good
		c.change(&req)
		_, err := e.CreateSource(ctx, req)
		if !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: %v; want invalid, saying %q", req, err, c.says)
		}
	}
	if srcs, _ := w.store.ListSources(ctx); len(srcs) != 0 {
		t.Fatalf("refused sources were recorded: %+v", srcs)
	}
	s, err := e.CreateSource(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSource(ctx, good); !errors.Is(err, engine.ErrConflict) || !strings.Contains(err.Error(), `"prod"`) {
		t.Fatalf("a second source named prod: %v", err)
	}
	// A cron schedule's first refresh is at its next time, in UTC.
	cron := "30 4 * * *"
	s, err = e.UpdateSource(ctx, s.ID, engine.SourcePatch{Schedule: &cron})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.NextRefreshAt; n == nil || n.Hour() != 4 || n.Minute() != 30 || n.Location() != time.UTC || time.Until(*n) > 24*time.Hour {
		t.Fatalf("next refresh of %q: %v", cron, n)
	}
	if s.URLRedacted != "postgres://rep@db.example.com/postgres" || s.Keep != engine.DefaultSourceKeep || s.Mode != store.SourceBasebackup {
		t.Fatalf("source %+v", s)
	}
}

// A refresh cut by a crash of sindrid, while pg_basebackup pulls, is
// undone at the next start and made again: no half-made image stays, and
// the source ends with a ready image of the source's data.
func TestSourceRefreshCutByCrashIsRepaired(t *testing.T) {
	w := newWorld(t, 5)
	src := replicationSource(t)
	pgtest.Exec(t, src.SocketURL(), "create table bulk as select g, md5(g::text) as h from generate_series(1, 100000) g")
	proxy := newStallingProxy(t, src.SocketDir, src.Port, 1<<20)
	e := engine.New(w.options())
	s, err := e.CreateSource(ctx, engine.SourceRequest{Name: "prod", URL: "postgres://postgres@" + proxy.addr + "/postgres"})
	if err != nil {
		t.Fatal(err)
	}

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=1", refreshEnv+"="+strconv.FormatInt(s.ID, 10), dbEnv+"="+w.dbURL,
		rootEnv+"="+w.root, runDirEnv+"="+w.runDir, keyEnv+"="+w.store.Keyring().Path())
	var childLog testenv.SyncBuffer
	child.Stdout, child.Stderr = &childLog, &childLog
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	childDone := make(chan error, 1)
	go func() { childDone <- child.Wait() }()
	defer func() {
		if t.Failed() {
			t.Logf("child sindrid:\n%s", childLog.String())
		}
	}()
	for deadline := time.Now().Add(2 * time.Minute); len(liveProcesses("pg_basebackup", w.root)) == 0 || proxy.held.Load() == 0; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-childDone:
			t.Fatalf("the child sindrid ended (%v) before its pull was held", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no pull held after 2 minutes")
		}
	}
	cut, err := w.store.GetSource(ctx, s.ID)
	if err != nil || cut.Status != store.SourceRefreshing || cut.RefreshingImageID == 0 {
		t.Fatalf("the source during the pull: %+v, %v", cut, err)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-childDone
	proxy.Release()

	// The next start: reconcile, then the sources' loop repairs.
	opts := w.options()
	opts.SourceTick = 100 * time.Millisecond
	next := engine.New(opts)
	if err := next.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	runSources(t, next)
	got := waitSource(t, w.store, s.ID, 3*time.Minute, "a ready image after the repair", func(s store.Source) bool {
		return s.Status == store.SourceIdle && s.LastImageID != 0
	})
	if _, err := w.store.GetImage(ctx, cut.RefreshingImageID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the cut refresh's image %d: %v; want it destroyed", cut.RefreshingImageID, err)
	}
	if imgs := readyImagesOf(t, w.store, s.ID); !slices.Equal(imgs, []int64{got.LastImageID}) {
		t.Fatalf("ready images of the source: %v, want [%d]", imgs, got.LastImageID)
	}
	all, _ := w.store.ListImagesOfSource(ctx, s.ID)
	if len(all) != 1 {
		t.Fatalf("images of the source: %+v; want the one ready", all)
	}
	inst, err := next.CreateInstance(ctx, engine.InstanceRequest{ImageID: got.LastImageID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if n := mustSQL(t, certConn(t, inst), "select count(*)::text from bulk"); n != "100000" {
		t.Fatalf("rows of bulk in the clone: %s", n)
	}
	if left := liveProcesses("pg_basebackup", w.root); len(left) > 0 {
		t.Fatalf("pg_basebackup left: %v", left)
	}
}

// A source's url is sealed in the metadata store, and what is shown of it
// has no password; the images it makes keep no url once ready.
func TestSourceURLSealedAtRest(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	src := replicationSource(t) // trusts the socket: the password is carried, not checked
	const password = "Source-S3cret"
	url := fmt.Sprintf("postgres://postgres:%s@/postgres?host=%s&port=%d", password, src.SocketDir, src.Port)
	s, err := e.CreateSource(ctx, engine.SourceRequest{Name: "sealed", URL: url})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s.URLRedacted, password) || !strings.Contains(s.URLRedacted, src.SocketDir) {
		t.Fatalf("shown url %q", s.URLRedacted)
	}
	if s.NextRefreshAt != nil {
		t.Fatalf("a source without a schedule is due at %v", s.NextRefreshAt)
	}
	if _, err := e.RefreshSource(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	e.WaitRefreshes()
	got, err := w.store.GetSource(ctx, s.ID)
	if err != nil || got.Status != store.SourceIdle || got.LastImageID == 0 {
		t.Fatalf("after the refresh: %+v, %v", got, err)
	}
	db, err := pgx.Connect(ctx, w.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	var dump string
	if err := db.QueryRow(ctx, `select string_agg(t::text, ' ') from (select * from sources) t`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	var images string
	if err := db.QueryRow(ctx, `select string_agg(t::text, ' ') from (select * from images) t`).Scan(&images); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(dump+images, password) || !strings.Contains(dump, "sindri:v1:") {
		t.Fatalf("the metadata holds the password in clear:\n%s\n%s", dump, images)
	}
	if opened, err := w.store.SourceURL(ctx, s.ID); err != nil || opened != url {
		t.Fatalf("the url opened: %q, %v", opened, err)
	}
	// A sealed value moved to another row does not open.
	s2, err := e.CreateSource(ctx, engine.SourceRequest{Name: "other", URL: "postgres://x@db.example.com/postgres"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `update sources set url = (select url from sources where id = $1) where id = $2`, s.ID, s2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.SourceURL(ctx, s2.ID); err == nil {
		t.Fatal("a url sealed for another source opened")
	}
}
