package spec

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// percentile of sorted durations, in milliseconds.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return float64(sorted[i].Microseconds()) / 1000
}

func report(b *testing.B, name string, d []time.Duration) {
	slices.Sort(d)
	b.ReportMetric(percentile(d, 0.5), "p50-ms")
	b.ReportMetric(percentile(d, 0.95), "p95-ms")
	b.ReportMetric(percentile(d, 0.99), "p99-ms")
	b.Logf("%s: n=%d p50 %.1f ms, p95 %.1f ms, p99 %.1f ms", name, len(d), percentile(d, 0.5), percentile(d, 0.95), percentile(d, 0.99))
}

// BenchmarkAPI drives a real sindrid: POST /instances → 201 for an image
// of pgbench data (SINDRI_BENCH_IMAGE_MB, default 1024), side by side with
// CREATE DATABASE … TEMPLATE of the same data on a plain Postgres; 50
// concurrent POST /instances; GET /instances over 1,000 instance records.
// Run it with -benchtime 1x: each part runs its own fixed count.
func BenchmarkAPI(b *testing.B) {
	sizeMB := 1024
	if v := os.Getenv("SINDRI_BENCH_IMAGE_MB"); v != "" {
		sizeMB, _ = strconv.Atoi(v)
	}
	ctx := context.Background()
	// pgbench's scale 1 is about 15 MB on disk.
	scale := max(1, sizeMB/15)
	src := pgtest.StartInstance(b)
	pgbench := exec.Command(filepath.Join(src.BinDir, "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
		"-h", src.SocketDir, "-p", strconv.Itoa(src.Port), "-U", "postgres", "postgres")
	if out, err := pgbench.CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v %s", err, out)
	}
	conn, err := pgx.Connect(ctx, src.SocketURL())
	if err != nil {
		b.Fatal(err)
	}
	var dbSize string
	conn.QueryRow(ctx, "select pg_size_pretty(pg_database_size('postgres'))").Scan(&dbSize)
	conn.Close(ctx)
	b.Logf("image: pgbench scale %d, database size %s", scale, dbSize)

	// The alternative: CREATE DATABASE … TEMPLATE on the same server.
	var template []time.Duration
	admin, err := pgx.Connect(ctx, postgres.SocketURL(src.SocketDir, src.Port, "postgres", "template1"))
	if err != nil {
		b.Fatal(err)
	}
	for i := range 5 {
		t0 := time.Now()
		if _, err := admin.Exec(ctx, fmt.Sprintf("create database copy%d template postgres", i)); err != nil {
			b.Fatal(err)
		}
		template = append(template, time.Since(t0))
		admin.Exec(ctx, fmt.Sprintf("drop database copy%d", i))
	}
	admin.Close(ctx)
	report(b, "CREATE DATABASE TEMPLATE", template)

	if err := postgres.Stop(ctx, src.DataDir, time.Minute); err != nil {
		b.Fatal(err)
	}
	tarball := filepath.Join(pgtest.Dir(b), "image.tar")
	if out, err := exec.Command("tar", "-C", src.DataDir, "-cf", tarball, ".").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v %s", err, out)
	}
	os.RemoveAll(src.DataDir)

	// Room for the upload, the image and what the clones write.
	s := startServerSized(b, fmt.Sprintf("%dGiB", 3*sizeMB/1024+4), "")
	status, body := s.call(b, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T00:00:00Z"}))
	if status != 201 {
		b.Fatalf("%d %s", status, body)
	}
	imageID := decode(b, body).one(b).ID
	f, err := os.Open(tarball)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	status, body = s.call(b, "PUT", "/images/"+imageID+"/upload", s.secret, f, "Content-Type", "application/octet-stream")
	f.Close()
	if status != 200 {
		b.Fatalf("upload: %d %s", status, body)
	}
	upload := time.Since(t0)
	t0 = time.Now()
	if status, body = s.call(b, "POST", "/images/"+imageID+"/done", s.secret, nil); status != 200 {
		b.Fatalf("done: %d %s", status, body)
	}
	b.Logf("upload %s, finalise %s", upload.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))

	var create []time.Duration
	for range 30 {
		t0 := time.Now()
		inst, _ := s.createInstance(b, s.secret, imageID, nil)
		create = append(create, time.Since(t0))
		if status, _ := s.call(b, "DELETE", "/instances/"+inst.ID, s.secret, nil); status != 204 {
			b.Fatalf("DELETE: %d", status)
		}
	}
	report(b, "POST /instances", create)

	// 50 at once.
	t0 = time.Now()
	var wg sync.WaitGroup
	ids := make([]string, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst, _ := s.createInstance(b, s.secret, imageID, nil)
			ids[i] = inst.ID
		}()
	}
	wg.Wait()
	b.ReportMetric(time.Since(t0).Seconds(), "50-concurrent-s")
	b.Logf("50 concurrent POST /instances: all 201 in %s", time.Since(t0).Round(time.Millisecond))
	for _, id := range ids {
		s.call(b, "DELETE", "/instances/"+id, s.secret, nil)
	}

	// GET /instances over 1,000 records: the records are written straight
	// into the store (1,000 real postmasters do not fit in 24 GiB), stopped,
	// so that nothing acts on them.
	meta, err := pgx.Connect(ctx, postgres.SocketURL(filepath.Join(s.data, "meta", "socket"), 5432, "postgres", "sindri"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := meta.Exec(ctx, `insert into instances (image_id, owner, status, port, username, password, ca_certificate, client_certificate, client_key)
		select $1::bigint, 'upload', 'stopped', 40000 + g, 'sindri', 'pw', 'ca', 'cert', 'key' from generate_series(1, 1000) g`, imageID); err != nil {
		b.Fatal(err)
	}
	var list []time.Duration
	for range 200 {
		t0 := time.Now()
		if status, _ := s.call(b, "GET", "/instances", s.secret, nil); status != 200 {
			b.Fatalf("GET /instances: %d", status)
		}
		list = append(list, time.Since(t0))
	}
	report(b, "GET /instances (1,000)", list)
	meta.Exec(ctx, "delete from instances where status = 'stopped'")
	meta.Close(ctx)
}
