package engine_test

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/metrics"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// A replica-mode source keeps a streaming standby of a source under
// pgbench's load and reports its lag; a refresh snapshots the standby
// into a ready image holding what was written just before. The standby
// killed is started again; the source restarted, it streams again; each
// refresh after that makes a correct image.
func TestSourceReplicaStreamsAndRefreshes(t *testing.T) {
	w := newWorld(t, 10)
	opts := w.options()
	opts.SourceTick = 200 * time.Millisecond
	e := engine.New(opts)
	src := pgtest.StartSource(t)
	pgbenchLoad(t, src)
	s, err := e.CreateSource(ctx, engine.SourceRequest{Name: "replica", URL: socketURL(src), Mode: store.SourceReplica, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	runSources(t, e)
	streaming := func(what string) store.Source {
		t.Helper()
		return waitSource(t, w.store, s.ID, 2*time.Minute, what, func(s store.Source) bool {
			return s.Status == store.SourceStreaming && s.LagBytes != nil && s.LagSeconds != nil
		})
	}
	got := streaming("streaming")
	t.Logf("streaming: lag %d bytes, %.3f s", *got.LagBytes, *got.LagSeconds)
	// The lag is in /status (the upload user's) and a Prometheus gauge.
	status, err := e.Services().Status.Get(ctx, engine.Actor{Owner: engine.UploadOwner, Upload: true})
	if err != nil || len(status.Standbys) != 1 || status.Standbys[0].Source != "replica" || status.Standbys[0].LagBytes == nil {
		t.Fatalf("status: %+v, %v", status.Standbys, err)
	}
	if st, _ := e.Services().Status.Get(ctx, engine.Actor{Owner: "dev@example.com"}); st.Standbys != nil {
		t.Fatalf("another user's status shows the standbys: %+v", st.Standbys)
	}
	rec := httptest.NewRecorder()
	metrics.New(e.Status).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `sindri_source_lag_bytes{source="replica"}`) || !strings.Contains(rec.Body.String(), `sindri_source_lag_seconds{source="replica"}`) {
		t.Fatalf("metrics without the lag:\n%s", rec.Body)
	}

	refresh := func(what string) store.Image {
		t.Helper()
		before, _ := w.store.GetSource(ctx, s.ID)
		if _, err := e.RefreshSource(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		after := waitSource(t, w.store, s.ID, 3*time.Minute, what, func(s store.Source) bool {
			return s.LastImageID != before.LastImageID || (s.Status == store.SourceFailed && s.Failures > 0)
		})
		img, err := w.store.GetImage(ctx, after.LastImageID)
		if err != nil || img.Status != store.ImageReady || img.SourceID != s.ID || after.Status != store.SourceStreaming {
			t.Fatalf("%s: source %+v, image %+v, %v", what, after, img, err)
		}
		return img
	}
	img := refresh("a refresh of the standby")
	if tick := newestTick(t, e, img.ID); tick.Before(img.BackedUpAt.Add(-2 * time.Second)) {
		t.Fatalf("image %d's newest row is from %s; the refresh began %s", img.ID, tick, img.BackedUpAt)
	}

	// The standby killed: started again, streaming again.
	standby, err := w.storage.Get(ctx, engine.StandbyVolume(s.ID))
	if err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Status(standby.Path)
	if err != nil || !st.Alive {
		t.Fatalf("the standby's postmaster: %+v, %v", st, err)
	}
	syscall.Kill(st.PID, syscall.SIGKILL)
	deadline := time.Now().Add(time.Minute)
	for {
		now, err := postgres.Status(standby.Path)
		if err == nil && now.Alive && now.PID != st.PID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed standby was not started again: %+v, %v", now, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	streaming("streaming after the standby was killed")

	// The source restarted (pgbench's sessions end with it).
	pgctl := filepath.Join(pgtest.BinDir(t), "pg_ctl")
	if out, err := exec.Command("runuser", "-u", "postgres", "--", pgctl, "-D", src.DataDir, "-l", filepath.Join(src.SocketDir, "source.log"), "-m", "fast", "-w", "restart").CombinedOutput(); err != nil {
		t.Fatalf("restarting the source: %v\n%s", err, out)
	}
	pgtest.Exec(t, src.SocketURL(), "insert into ticks values (clock_timestamp() + interval '1 hour')")
	streaming("streaming after the source restarted")
	img = refresh("a refresh after the source restarted")
	if tick := newestTick(t, e, img.ID); tick.Before(time.Now().Add(30 * time.Minute)) {
		t.Fatalf("image %d's newest row is from %s: the row written after the source restarted is missing", img.ID, tick)
	}
}

// A replica-mode source whose server goes away says failed, with the
// reason; a refresh then fails cleanly (no image, half-made or stale);
// the server back, it streams again and refreshes.
func TestSourceReplicaLosesItsSource(t *testing.T) {
	w := newWorld(t, 10)
	opts := w.options()
	opts.SourceTick = 200 * time.Millisecond
	opts.SourceRetryMin = time.Second
	opts.StandbyResyncAfter = 5 * time.Second
	e := engine.New(opts)
	src := pgtest.StartSource(t)
	pgtest.Exec(t, src.SocketURL(), "create table people (id int); insert into people values (1)")
	s, err := e.CreateSource(ctx, engine.SourceRequest{Name: "replica", URL: socketURL(src), Mode: store.SourceReplica})
	if err != nil {
		t.Fatal(err)
	}
	runSources(t, e)
	waitSource(t, w.store, s.ID, 2*time.Minute, "streaming", func(s store.Source) bool { return s.Status == store.SourceStreaming })
	// A mark in the first standby: gone once it is made again.
	standby, err := w.storage.Get(ctx, engine.StandbyVolume(s.ID))
	if err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(standby.Path, "first-standby")
	if err := os.WriteFile(mark, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	pgctl := filepath.Join(pgtest.BinDir(t), "pg_ctl")
	if out, err := exec.Command("runuser", "-u", "postgres", "--", pgctl, "-D", src.DataDir, "-m", "fast", "-w", "stop").CombinedOutput(); err != nil {
		t.Fatalf("stopping the source: %v\n%s", err, out)
	}
	down := waitSource(t, w.store, s.ID, time.Minute, "failed", func(s store.Source) bool { return s.Status == store.SourceFailed })
	if !strings.Contains(down.Error, "does not stream") {
		t.Fatalf("the source down: %q", down.Error)
	}
	if _, err := e.RefreshSource(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	failed := waitSource(t, w.store, s.ID, time.Minute, "a failed refresh", func(s store.Source) bool { return s.Failures > 0 })
	if !strings.Contains(failed.Error, "does not stream") || failed.LastImageID != 0 {
		t.Fatalf("the refresh without a source: %+v", failed)
	}
	if imgs, _ := w.store.ListImagesOfSource(ctx, s.ID); len(imgs) != 0 {
		t.Fatalf("images of the source after a failed refresh: %+v", imgs)
	}
	// Not streaming for longer than StandbyResyncAfter, the standby is
	// dropped, to be made again from a new base backup.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(mark); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby that stopped streaming was not dropped to be made again")
		}
	}

	if out, err := exec.Command("runuser", "-u", "postgres", "--", pgctl, "-D", src.DataDir, "-l", filepath.Join(src.SocketDir, "source.log"),
		"-o", fmt.Sprintf("-c port=%d -c listen_addresses='' -c unix_socket_directories=%s", src.Port, src.SocketDir), "-w", "start").CombinedOutput(); err != nil {
		t.Fatalf("starting the source again: %v\n%s", err, out)
	}
	pgtest.Exec(t, src.SocketURL(), "insert into people values (2)")
	if _, err := e.RefreshSource(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	// Retried until the standby streams again, then ready.
	got := waitSource(t, w.store, s.ID, 3*time.Minute, "a ready image", func(s store.Source) bool { return s.LastImageID != 0 })
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: got.LastImageID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if n := mustSQL(t, certConn(t, inst), "select count(*)::text from people"); n != "2" {
		t.Fatalf("people in the image after the source came back: %s", n)
	}
}

// A standby whose source is gone from the store (sindrid died between
// the source's delete and its standby's) is stopped and destroyed by the
// next pass of the sources: no postmaster streams from the source for
// ever. The standby of a source that is still there stays.
func TestSourceReplicaStandbyOfNoSourceIsDropped(t *testing.T) {
	w := newWorld(t, 5)
	opts := w.options()
	opts.SourceTick = 200 * time.Millisecond
	e := engine.New(opts)
	src := pgtest.StartSource(t)
	kept, err := e.CreateSource(ctx, engine.SourceRequest{Name: "kept", URL: socketURL(src), Mode: store.SourceReplica})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := e.CreateSource(ctx, engine.SourceRequest{Name: "gone", URL: socketURL(src), Mode: store.SourceReplica})
	if err != nil {
		t.Fatal(err)
	}
	runSources(t, e)
	for _, id := range []int64{kept.ID, gone.ID} {
		waitSource(t, w.store, id, 2*time.Minute, "streaming", func(s store.Source) bool { return s.Status == store.SourceStreaming })
	}
	standby, err := w.storage.Get(ctx, engine.StandbyVolume(gone.ID))
	if err != nil {
		t.Fatal(err)
	}
	if len(liveProcesses("postgres", standby.Path)) == 0 {
		t.Fatal("no postmaster runs on the standby before its source goes")
	}
	// The source's record goes, as DeleteSource's first step does; its
	// standby is left as a crash would leave it.
	if err := w.store.DeleteSource(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		_, err := w.storage.Get(ctx, engine.StandbyVolume(gone.ID))
		if errors.Is(err, storage.ErrNotFound) && len(liveProcesses("postgres", standby.Path)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby of a deleted source after a minute: %v, postmasters %v", err, liveProcesses("postgres", standby.Path))
		}
	}
	if _, err := w.storage.Get(ctx, engine.StandbyVolume(kept.ID)); err != nil {
		t.Fatalf("the standby of the source that stays: %v", err)
	}
	if s, err := w.store.GetSource(ctx, kept.ID); err != nil || s.Status != store.SourceStreaming {
		t.Fatalf("the source that stays: %+v, %v", s, err)
	}
}
