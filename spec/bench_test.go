package spec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// Sample counts of BenchmarkAPI's parts.
const (
	benchCreateSamples   = 100 // POST /instances, one after another
	benchTemplateSamples = 10  // CREATE DATABASE … TEMPLATE
	benchConcurrent      = 50  // POST /instances at once
	benchListRecords     = 1000
	benchListSamples     = 200 // GET /instances over benchListRecords
)

// benchPercentile is the nearest-rank p-th percentile (0 < p ≤ 1) of
// sorted durations, in milliseconds.
func benchPercentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := max(0, int(math.Ceil(p*float64(len(sorted))))-1)
	return float64(sorted[i].Microseconds()) / 1000
}

// benchReport sorts d, reports its percentiles ps as metrics named
// prefix + "p50-ms" and so on, and logs them on one line as what.
func benchReport(b *testing.B, what, prefix string, d []time.Duration, ps ...float64) {
	b.Helper()
	slices.Sort(d)
	line := fmt.Sprintf("%s: n=%d", what, len(d))
	for _, p := range ps {
		name := fmt.Sprintf("p%d", int(math.Round(p*100)))
		v := benchPercentile(d, p)
		b.ReportMetric(v, prefix+name+"-ms")
		line += fmt.Sprintf(", %s %.1f ms", name, v)
	}
	b.Logf("%s (min %.1f ms, max %.1f ms)", line, benchPercentile(d, 0), benchPercentile(d, 1))
}

// benchImageSizes reads SINDRI_BENCH_IMAGE_MB: image sizes in MB, comma
// separated; 1 GB and 5 GB unless set.
func benchImageSizes(b *testing.B) []int {
	v := os.Getenv("SINDRI_BENCH_IMAGE_MB")
	if strings.TrimSpace(v) == "" {
		v = "1024,5120"
	}
	var sizes []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("SINDRI_BENCH_IMAGE_MB=%q: want image sizes in MB, positive integers separated by commas", v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// BenchmarkAPI drives a real sindrid, one sub-benchmark (and one sindrid)
// per image size in SINDRI_BENCH_IMAGE_MB (MB of pgbench data, comma
// separated; default "1024,5120"). For each size: POST /instances → 201,
// created and destroyed one after another, beside CREATE DATABASE …
// TEMPLATE of the same data on a plain Postgres. On the first size only:
// 50 concurrent POST /instances, all of which must succeed, and GET
// /instances over 1,000 instance records.
//
// Run it with -benchtime 1x: each part runs its own fixed count, and the
// figures are in the metrics and log lines.
//
//	go test -run '^$' -bench API -benchtime 1x -timeout 90m ./spec
func BenchmarkAPI(b *testing.B) {
	for i, sizeMB := range benchImageSizes(b) {
		b.Run(fmt.Sprintf("image=%dMB", sizeMB), func(b *testing.B) {
			benchAPIImage(b, sizeMB, i == 0)
		})
	}
}

// benchAPIImage is BenchmarkAPI for one image size; first adds the parts
// that run once.
func benchAPIImage(b *testing.B, sizeMB int, first bool) {
	ctx := context.Background()

	// The image: pgbench data (scale 1 is about 15 MB on disk) in a
	// stopped data directory, as a tarball.
	scale := max(1, sizeMB/15)
	t0 := time.Now()
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
	if err := conn.QueryRow(ctx, "select pg_size_pretty(pg_database_size('postgres'))").Scan(&dbSize); err != nil {
		b.Fatal(err)
	}
	conn.Close(ctx)
	if err := postgres.Stop(ctx, src.DataDir, time.Minute); err != nil {
		b.Fatal(err)
	}
	tarball := filepath.Join(pgtest.Dir(b), "image.tar")
	if out, err := exec.Command("tar", "-C", src.DataDir, "-cf", tarball, ".").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v %s", err, out)
	}
	var tarMB float64
	if fi, err := os.Stat(tarball); err == nil {
		tarMB = float64(fi.Size()) / (1 << 20)
	}
	b.Logf("image: pgbench scale %d, database size %s, tarball %.0f MB, built in %s",
		scale, dbSize, tarMB, time.Since(t0).Round(time.Second))

	// The alternative, on the same data: CREATE DATABASE … TEMPLATE on
	// the same server, started again after the tarball was taken (so that
	// the WAL these copies write is not in the image).
	src.Restart(b)
	admin, err := pgx.Connect(ctx, postgres.SocketURL(src.SocketDir, src.Port, "postgres", "template1"))
	if err != nil {
		b.Fatal(err)
	}
	var version string
	if err := admin.QueryRow(ctx, "show server_version").Scan(&version); err != nil {
		b.Fatal(err)
	}
	var template []time.Duration
	for i := range benchTemplateSamples {
		t0 := time.Now()
		if _, err := admin.Exec(ctx, fmt.Sprintf("create database copy%d template postgres", i)); err != nil {
			b.Fatal(err)
		}
		template = append(template, time.Since(t0))
		if _, err := admin.Exec(ctx, fmt.Sprintf("drop database copy%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	admin.Close(ctx)
	benchReport(b, fmt.Sprintf("CREATE DATABASE … TEMPLATE (PostgreSQL %s, its default strategy)", version), "template-", template, 0.5, 0.95)
	if err := postgres.Stop(ctx, src.DataDir, time.Minute); err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(src.DataDir)

	// sindrid on a loopback BTRFS with room for the upload (kept until
	// the image goes), the image and what the clones write.
	s := startServerSized(b, fmt.Sprintf("%dGiB", 3*sizeMB/1024+4), "")
	status, body := s.call(b, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T00:00:00Z"}))
	if status != 201 {
		b.Fatalf("POST /images: %d %s", status, body)
	}
	imageID := decode(b, body).one(b).ID
	f, err := os.Open(tarball)
	if err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	status, body = s.call(b, "PUT", "/images/"+imageID+"/upload", s.secret, f, "Content-Type", "application/octet-stream")
	f.Close()
	if status != 200 {
		b.Fatalf("upload: %d %s", status, body)
	}
	upload := time.Since(t0)
	os.Remove(tarball)
	t0 = time.Now()
	if status, body = s.call(b, "POST", "/images/"+imageID+"/done", s.secret, nil); status != 200 {
		b.Fatalf("done: %d %s", status, body)
	}
	b.Logf("upload %s, finalise %s", upload.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))

	// POST /instances → 201, one after another, each destroyed before
	// the next.
	var create []time.Duration
	for range benchCreateSamples {
		t0 := time.Now()
		inst, _ := s.createInstance(b, s.secret, imageID, nil)
		create = append(create, time.Since(t0))
		if status, body := s.call(b, "DELETE", "/instances/"+inst.ID, s.secret, nil); status != 204 {
			b.Fatalf("DELETE /instances/%s: %d %s", inst.ID, status, body)
		}
	}
	benchReport(b, "POST /instances → 201", "", create, 0.5, 0.95, 0.99)

	if !first {
		return
	}
	benchConcurrentCreate(b, s, imageID)
	benchList(b, s, imageID)
}

// benchConcurrentCreate makes benchConcurrent instances at once, reports
// how many got 201 and the wall time until the last answer, destroys the
// ones made and fails unless all were.
func benchConcurrentCreate(b *testing.B, s *server, imageID string) {
	ids := make([]string, benchConcurrent)
	errs := make([]error, benchConcurrent)
	var created atomic.Int32
	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := range benchConcurrent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ready
			// Not s.createInstance: it calls Fatalf, which only the
			// benchmark's goroutine may.
			ids[i], errs[i] = benchPostInstance(s, imageID)
			if errs[i] == nil {
				created.Add(1)
			}
		}()
	}
	t0 := time.Now()
	close(ready)
	wg.Wait()
	total := time.Since(t0)
	n := int(created.Load())
	b.ReportMetric(float64(n), "concurrent50-201s")
	b.ReportMetric(float64(total.Microseconds())/1000, "concurrent50-total-ms")
	b.Logf("%d concurrent POST /instances: %d × 201 in %s", benchConcurrent, n, total.Round(time.Millisecond))

	var failures []string
	for i, err := range errs {
		if err != nil {
			failures = append(failures, fmt.Sprintf("request %d: %v", i, err))
		}
	}
	for _, id := range ids {
		if id == "" {
			continue
		}
		if status, body := s.call(b, "DELETE", "/instances/"+id, s.secret, nil); status != 204 {
			b.Errorf("DELETE /instances/%s: %d %s", id, status, body)
		}
	}
	if n < benchConcurrent {
		b.Fatalf("%d of %d concurrent POST /instances got 201:\n%s", n, benchConcurrent, strings.Join(failures, "\n"))
	}
}

// benchPostInstance is POST /instances without a testing.TB, for other
// goroutines than the benchmark's: the new instance's id, or why there is
// none.
func benchPostInstance(s *server, imageID string) (string, error) {
	data, err := json.Marshal(resourceBody("instances", map[string]any{"image_id": imageID}))
	if err != nil {
		return "", err
	}
	req, err := http.NewRequest("POST", "http://"+s.http+"/instances", bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	req.Header.Set("Draupnir-Version", apiVersion)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("status %d, reading the body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != 201 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	var doc struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.Data.ID == "" {
		return "", fmt.Errorf("201 without an instance id (%v): %s", err, body)
	}
	return doc.Data.ID, nil
}

// benchList times GET /instances over benchListRecords instance records.
// The records are written straight into the store (1,000 real postmasters
// do not fit in 24 GiB), stopped, so that nothing acts on them, and
// deleted afterwards.
func benchList(b *testing.B, s *server, imageID string) {
	ctx := context.Background()
	meta, err := pgx.Connect(ctx, postgres.SocketURL(filepath.Join(s.data, "meta", "socket"), 5432, "postgres", "sindri"))
	if err != nil {
		b.Fatal(err)
	}
	defer meta.Close(ctx)
	// Without a password or keys: the store takes only sealed ones, and
	// the list shows none of them.
	if _, err := meta.Exec(ctx, `insert into instances (image_id, owner, status, port, username, ca_certificate, client_certificate)
		select $1::bigint, 'upload', 'stopped', 40000 + g, 'sindri', 'ca', 'cert' from generate_series(1, $2::int) g`,
		imageID, benchListRecords); err != nil {
		b.Fatal(err)
	}
	defer meta.Exec(ctx, "delete from instances where status = 'stopped'")
	status, body := s.call(b, "GET", "/instances", s.secret, nil)
	var listed []json.RawMessage
	if status != 200 {
		b.Fatalf("GET /instances: %d %s", status, body)
	}
	if err := json.Unmarshal(decode(b, body).Data, &listed); err != nil || len(listed) != benchListRecords {
		b.Fatalf("GET /instances lists %d instances (%v), want %d", len(listed), err, benchListRecords)
	}
	var list []time.Duration
	for range benchListSamples {
		t0 := time.Now()
		if status, _ := s.call(b, "GET", "/instances", s.secret, nil); status != 200 {
			b.Fatalf("GET /instances: %d", status)
		}
		list = append(list, time.Since(t0))
	}
	benchReport(b, fmt.Sprintf("GET /instances (%d instances, %.0f kB)", benchListRecords, float64(len(body))/1000), "list1000-", list, 0.5, 0.99)
}

// The benchmarks' percentiles are nearest ranks: of 100 samples the 99th
// percentile is the 99th; of 50 or fewer, it is the largest.
func TestBenchPercentileIsTheNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct{ p, want float64 }{{0, 1}, {0.5, 50}, {0.9, 90}, {0.99, 99}, {1, 100}} {
		if got := benchPercentile(d, c.p); got != c.want {
			t.Errorf("percentile %g of 1..100 ms: %g ms, want %g", c.p, got, c.want)
		}
	}
	if got := benchPercentile(d[:40], 0.99); got != 40 {
		t.Errorf("percentile 0.99 of 1..40 ms: %g ms, want 40", got)
	}
}
