package engine_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// BenchmarkSourceRefreshAndBranch measures a basebackup-mode refresh of a
// pgbench source (pull, private start, freeze, retention) and a branch of
// a running instance of the image it made (snapshot, copy, private
// recovery, freeze), in MB/s of the data directory, and a replica-mode
// refresh (a snapshot of the standby, copied, recovered, frozen) after
// about 100 MB of new WAL. The source holds
// pgbench's tables at scale SINDRI_BENCH_SOURCE_SCALE (30: about 500 MB;
// 340: about 5 GB).
//
//	go test -run '^$' -bench BenchmarkSourceRefreshAndBranch -benchtime 3x ./pkg/engine/
func BenchmarkSourceRefreshAndBranch(b *testing.B) {
	testenv.RequireRoot(b, "loopback BTRFS and Postgres run as the postgres user")
	scale := 30
	if v := os.Getenv("SINDRI_BENCH_SOURCE_SCALE"); v != "" {
		var err error
		if scale, err = strconv.Atoi(v); err != nil || scale < 1 {
			b.Fatalf("SINDRI_BENCH_SOURCE_SCALE=%q: want a positive integer", v)
		}
	}
	w := newWorldSized(b, 5, int64(scale)*200<<20+4<<30) // sparse: three copies and their WAL
	e := engine.New(w.options())
	src := pgtest.StartSource(b)
	pgbench := filepath.Join(pgtest.BinDir(b), "pgbench")
	if out, err := exec.Command("runuser", "-u", "postgres", "--", pgbench, "-i", "-q", "-s", strconv.Itoa(scale),
		"-h", src.SocketDir, "-p", strconv.Itoa(src.Port), "-U", "postgres", "postgres").CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	s, err := e.CreateSource(ctx, engine.SourceRequest{Name: "bench", URL: socketURL(src), Keep: 1})
	if err != nil {
		b.Fatal(err)
	}
	var img store.Image
	b.Run("basebackup-refresh", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			started := time.Now()
			if _, err := e.RefreshSource(ctx, s.ID); err != nil {
				b.Fatal(err)
			}
			e.WaitRefreshes()
			got, err := w.store.GetSource(ctx, s.ID)
			if err != nil || got.Status != store.SourceIdle {
				b.Fatalf("after the refresh: %+v, %v", got, err)
			}
			if img, err = w.store.GetImage(ctx, got.LastImageID); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(img.SizeBytes)
			b.ReportMetric(float64(time.Since(started).Milliseconds()), "ms/refresh")
		}
	})
	// Replica mode: a standby of the same source, each refresh after
	// about 100 MB of new WAL.
	r, err := e.CreateSource(ctx, engine.SourceRequest{Name: "bench-replica", URL: socketURL(src), Mode: store.SourceReplica, Keep: 1})
	if err != nil {
		b.Fatal(err)
	}
	loop, stop := context.WithCancel(ctx)
	looped := make(chan struct{})
	go func() { defer close(looped); e.RunSources(loop) }()
	defer func() { stop(); <-looped; e.WaitRefreshes() }()
	waitStreaming := func() {
		for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
			got, err := w.store.GetSource(ctx, r.ID)
			if err == nil && got.Status == store.SourceStreaming && got.LagBytes != nil && *got.LagBytes < 1<<20 {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("the standby does not catch up: %+v, %v", got, err)
			}
		}
	}
	waitStreaming()
	b.Run("replica-refresh-after-100MB-WAL", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			pgtest.Exec(b, src.SocketURL(), "create table if not exists filler (x text); insert into filler select repeat(md5(g::text), 16) from generate_series(1, 180000) g")
			waitStreaming()
			b.StartTimer()
			started := time.Now()
			before, _ := w.store.GetSource(ctx, r.ID)
			if _, err := e.RefreshSource(ctx, r.ID); err != nil {
				b.Fatal(err)
			}
			for {
				got, err := w.store.GetSource(ctx, r.ID)
				if err != nil || got.Failures > 0 {
					b.Fatalf("replica refresh: %+v, %v", got, err)
				}
				if got.LastImageID != before.LastImageID {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			b.ReportMetric(float64(time.Since(started).Milliseconds()), "ms/refresh")
		}
	})
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "ada@example.com"})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("branch", func(b *testing.B) {
		b.SetBytes(img.SizeBytes)
		for i := 0; i < b.N; i++ {
			started := time.Now()
			br, err := e.CreateImage(ctx, engine.ImageRequest{InstanceID: inst.ID})
			if err != nil {
				b.Fatal(err)
			}
			snapshotted := time.Since(started)
			if br, err = e.FinaliseImage(ctx, br.ID); err != nil || br.Status != store.ImageReady {
				b.Fatalf("branch: %+v, %v", br, err)
			}
			b.ReportMetric(float64(snapshotted.Milliseconds()), "ms/snapshot")
			b.ReportMetric(float64(time.Since(started).Milliseconds()), "ms/branch")
			b.StopTimer()
			if err := e.DestroyImage(ctx, br.ID, false); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}
