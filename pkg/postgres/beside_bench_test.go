package postgres_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// BenchmarkCloneBesideRunning measures what a clone costs as the host fills
// with running ones, below sindrid: the BTRFS snapshot, sindri's settings
// written, the postmaster started, and its first login, each timed apart.
// It fills the host with running clones of one image (each started as
// sindri starts them) up to each of SINDRI_BENCH_BESIDE (default
// "10,250,1000") and at each point times SINDRI_BENCH_BESIDE_TIMED
// (default 20) clones made, started and destroyed one after another,
// reporting the median of each step in ms. SINDRI_BENCH_BESIDE_MOUNT
// remounts the filesystem with these options first (such as "noatime");
// SINDRI_BENCH_BESIDE_TRY="name=value,..." changes the clones' settings.
// SINDRI_BENCH_BESIDE_SETTLE (seconds, default 0) waits that long at each
// point before the timed clones, for the new clones' first minutes of
// work to pass, and reports the host's context switches and forks a
// second over the wait.
//
//	go test -run '^$' -bench CloneBesideRunning -benchtime 1x -timeout 60m ./pkg/postgres
func BenchmarkCloneBesideRunning(b *testing.B) {
	var points []int
	for _, f := range strings.Split(envOr("SINDRI_BENCH_BESIDE", "10,250,1000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			b.Fatalf("SINDRI_BENCH_BESIDE: %q is not a count", f)
		}
		points = append(points, n)
	}
	timed := benchEnvInt(b, "SINDRI_BENCH_BESIDE_TIMED", 20)
	settle := time.Duration(benchEnvInt(b, "SINDRI_BENCH_BESIDE_SETTLE", 0)) * time.Second
	if try := benchSettings(b, "SINDRI_BENCH_BESIDE_TRY"); try != nil {
		defer postgres.WithCloneSettings(try)()
	}
	d, seed, owner, mnt := benchImage(b, 24<<30)
	verifier, err := postgres.PasswordVerifier(seed.Password)
	if err != nil {
		b.Fatal(err)
	}
	if opts := os.Getenv("SINDRI_BENCH_BESIDE_MOUNT"); opts != "" {
		if out, err := exec.Command("mount", "-o", "remount,"+opts, mnt).CombinedOutput(); err != nil {
			b.Fatalf("SINDRI_BENCH_BESIDE_MOUNT=%q: %v %s", opts, err, out)
		}
	}
	sockets := benchSocketDir(b, owner)

	type clone struct {
		name, dir string
		cluster   postgres.Cluster
	}
	var running []clone
	defer func() {
		volumes := make([]benchVolume, len(running))
		for i, c := range running {
			volumes[i] = benchVolume{c.name, c.dir}
		}
		benchDestroy(b, d, volumes)
	}()
	serial := 0
	// start makes one clone and starts it as sindri does, returning how
	// long each step took.
	start := func(b *testing.B) (clone, [4]time.Duration) {
		var took [4]time.Duration
		serial++
		c := clone{name: fmt.Sprintf("clone-%d", serial)}
		sock := filepath.Join(sockets, strconv.Itoa(serial))
		if err := os.MkdirAll(sock, 0o700); err != nil {
			b.Fatal(err)
		}
		owner.Chown(sock, false)
		t0 := time.Now()
		vol, err := d.Clone(ctx, "image-1", c.name)
		if err != nil {
			b.Fatal(err)
		}
		took[0] = time.Since(t0)
		c.dir = vol.Path
		c.cluster = seed.Cluster
		c.cluster.DataDir, c.cluster.SocketDir, c.cluster.Port = c.dir, sock, pgtest.FreePort(b)
		c.cluster.Settings.ClusterName = c.name
		t1 := time.Now()
		if err := c.cluster.Configure(); err != nil {
			b.Fatal(err)
		}
		took[1] = time.Since(t1)
		t2 := time.Now()
		p, err := c.cluster.Start()
		if err != nil {
			b.Fatal(err)
		}
		took[2] = time.Since(t2)
		t3 := time.Now()
		session, err := c.cluster.Ready(ctx, p)
		if err != nil {
			b.Fatal(err)
		}
		took[3] = time.Since(t3)
		err = session.SetUpClientRoles(ctx, seed.PasswordRole, verifier, false)
		session.Close(ctx)
		if err != nil {
			b.Fatal(err)
		}
		return c, took
	}
	steps := []string{"snapshot", "configure", "start", "first-login"}
	for _, point := range points {
		b.Run(fmt.Sprintf("running=%d", point), func(b *testing.B) {
			for len(running) < point {
				c, _ := start(b)
				running = append(running, c)
			}
			if settle > 0 {
				switches, forks, t := pgtest.ContextSwitches(), pgtest.Forks(), time.Now()
				time.Sleep(settle)
				secs := time.Since(t).Seconds()
				b.Logf("beside %d running clones, over %s of quiet: %.0f context switches and %.1f forks a second",
					len(running), settle, float64(pgtest.ContextSwitches()-switches)/secs, float64(pgtest.Forks()-forks)/secs)
			}
			samples := make([][]float64, len(steps))
			var totals []float64
			for range timed {
				c, took := start(b)
				var total time.Duration
				for i, t := range took {
					samples[i] = append(samples[i], float64(t)/1e6)
					total += t
				}
				totals = append(totals, float64(total)/1e6)
				if err := postgres.StopAll(ctx, c.dir, 10*time.Second); err != nil {
					b.Fatal(err)
				}
				if err := d.Destroy(ctx, c.name); err != nil {
					b.Fatal(err)
				}
			}
			var parts []string
			for i, step := range steps {
				m := median(samples[i])
				b.ReportMetric(m, step+"-ms")
				parts = append(parts, fmt.Sprintf("%s %.1f", step, m))
			}
			b.ReportMetric(median(totals), "clone-to-login-ms")
			b.Logf("beside %d running clones, medians of %d (ms): %s; all %.1f; load average %.2f",
				len(running), timed, strings.Join(parts, ", "), median(totals), pgtest.LoadAverage())
		})
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func envOr(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}
