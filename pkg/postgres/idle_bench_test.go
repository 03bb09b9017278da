package postgres_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// idlePostgresDefaults are Postgres's defaults of the settings sindri
// gives clones so that an idle one costs little: BenchmarkIdleClones runs
// clones with each of them, and with all of them, put back.
var idlePostgresDefaults = map[string]string{
	"autovacuum_naptime": "1min",
	"bgwriter_delay":     "200ms",
	"wal_writer_delay":   "200ms",
	"checkpoint_timeout": "5min",
}

// benchEnvInt reads a positive integer from the environment, def unless set.
func benchEnvInt(b *testing.B, name string, def int) int {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// BenchmarkIdleClones measures what idle clones cost the host: it starts
// SINDRI_BENCH_IDLE_CLONES clones (default 100) of one image on a
// loopback BTRFS, as sindri starts them (its settings, TLS, the client
// roles), lets them settle for SINDRI_BENCH_IDLE_SETTLE seconds (default
// 60), then reports the CPU their processes use over
// SINDRI_BENCH_IDLE_SECONDS (default 60), as a percentage of one core (by
// process in the log), and their total PSS. Sub-benchmarks:
//
//   - sindri: the clone settings as sindri gives them;
//   - postgres-defaults: the settings of idlePostgresDefaults at
//     Postgres's defaults;
//   - default-NAME: only NAME at Postgres's default;
//   - sindri+login-probe: sindri's settings, each clone also given a
//     session every 10 s as sindrid's supervisor did until it probed with
//     an SSLRequest (a login over the unix socket as the superuser, closed
//     at once);
//   - sindri+probe: sindri's settings, each clone also probed every 10 s
//     as sindrid's supervisor probes on a small host (Cluster.Answers:
//     an SSLRequest, answered before any login);
//   - try, with SINDRI_BENCH_IDLE_TRY="name=value,...": sindri's settings
//     with these changed, to try others.
//
// Run it with -benchtime 1x:
//
//	go test -run '^$' -bench IdleClones -benchtime 1x -timeout 60m ./pkg/postgres
func BenchmarkIdleClones(b *testing.B) {
	n := benchEnvInt(b, "SINDRI_BENCH_IDLE_CLONES", 100)
	settle := time.Duration(benchEnvInt(b, "SINDRI_BENCH_IDLE_SETTLE", 60)) * time.Second
	window := time.Duration(benchEnvInt(b, "SINDRI_BENCH_IDLE_SECONDS", 60)) * time.Second
	d, seed, owner, _ := benchImage(b, 16<<30)
	verifier, err := postgres.PasswordVerifier(seed.Password)
	if err != nil {
		b.Fatal(err)
	}
	sockets := benchSocketDir(b, owner)

	type variant struct {
		name   string
		values map[string]string
		probe  string // "", "login" or "answers"
	}
	variants := []variant{{name: "sindri"}, {name: "postgres-defaults", values: idlePostgresDefaults}}
	names := make([]string, 0, len(idlePostgresDefaults))
	for name := range idlePostgresDefaults {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		variants = append(variants, variant{name: "default-" + name, values: map[string]string{name: idlePostgresDefaults[name]}})
	}
	variants = append(variants, variant{name: "sindri+login-probe", probe: "login"}, variant{name: "sindri+probe", probe: "answers"})
	if try := benchSettings(b, "SINDRI_BENCH_IDLE_TRY"); try != nil {
		variants = append(variants, variant{name: "try", values: try})
	}

	round := 0
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			round++
			restore := postgres.WithCloneSettings(v.values)
			defer restore()
			type clone struct {
				name, dir, sock string
				port, pid       int
			}
			clones := make([]clone, n)
			defer func() {
				var volumes []benchVolume
				for _, c := range clones {
					if c.dir != "" {
						volumes = append(volumes, benchVolume{c.name, c.dir})
					}
				}
				benchDestroy(b, d, volumes)
			}()
			t0 := time.Now()
			for i := range clones {
				c := clone{name: fmt.Sprintf("clone-%d-%d", round, i), port: pgtest.FreePort(b),
					sock: filepath.Join(sockets, strconv.Itoa(i))}
				vol, err := d.Clone(ctx, "image-1", c.name)
				if err != nil {
					b.Fatal(err)
				}
				c.dir = vol.Path
				clones[i] = c
				if err := os.MkdirAll(c.sock, 0o700); err != nil {
					b.Fatal(err)
				}
				owner.Chown(c.sock, false)
				cl := seed.Cluster
				cl.DataDir, cl.SocketDir, cl.Port = c.dir, c.sock, c.port
				cl.Settings.ClusterName = c.name
				if err := cl.Configure(); err != nil {
					b.Fatal(err)
				}
				p, err := cl.Start()
				if err != nil {
					b.Fatal(err)
				}
				clones[i].pid = p.PID
				session, err := cl.Ready(ctx, p)
				if err != nil {
					b.Fatal(err)
				}
				err = session.SetUpClientRoles(ctx, seed.PasswordRole, verifier, false)
				session.Close(ctx)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.Logf("%d clones started in %s; settling for %s", n, time.Since(t0).Round(time.Millisecond), settle)

			probeCtx, stopProbes := context.WithCancel(ctx)
			var probes sync.WaitGroup
			if v.probe != "" {
				// One goroutine walks the clones, one session each per
				// 10 s, spread evenly, as a supervisor would.
				probes.Add(1)
				go func() {
					defer probes.Done()
					tick := time.NewTicker(10 * time.Second / time.Duration(n))
					defer tick.Stop()
					for i := 0; ; i = (i + 1) % n {
						select {
						case <-probeCtx.Done():
							return
						case <-tick.C:
						}
						c := clones[i]
						attempt, cancel := context.WithTimeout(probeCtx, 5*time.Second)
						if v.probe == "answers" {
							probe := postgres.Cluster{SocketDir: c.sock, Port: c.port}
							probe.Answers(attempt)
						} else if conn, err := pgx.Connect(attempt, postgres.SuperuserURL(c.sock, c.port, "postgres")); err == nil {
							conn.Close(ctx)
						}
						cancel()
					}
				}()
			}
			time.Sleep(settle)

			roots := map[int]string{}
			for _, c := range clones {
				roots[c.pid] = "postmaster"
			}
			self := os.Getpid()
			roots[self] = "benchmark (the probes' client side)"
			load0 := pgtest.LoadAverage()
			before := pgtest.SampleCPU(roots)
			time.Sleep(window)
			after := pgtest.SampleCPU(roots)
			load1 := pgtest.LoadAverage()
			stopProbes()
			probes.Wait()

			usage := pgtest.CPUUsage(before, after)
			wall := after.At.Sub(before.At).Seconds()
			var total float64
			roles := make([]string, 0, len(usage))
			for role, s := range usage {
				if !strings.HasPrefix(role, "benchmark") {
					total += s
				}
				roles = append(roles, role)
			}
			slices.SortFunc(roles, func(x, y string) int { return int(1e6 * (usage[y] - usage[x])) })
			var lines []string
			for _, role := range roles {
				lines = append(lines, fmt.Sprintf("  %-40s %6.2f %% of a core", role, 100*usage[role]/wall))
			}
			pmPIDs := make([]int, 0, n)
			for _, c := range clones {
				pmPIDs = append(pmPIDs, c.pid)
			}
			pss, procs := pgtest.PSS(pmPIDs)
			b.ReportMetric(100*total/wall, "%core")
			b.ReportMetric(float64(pss)/(1<<20)/float64(n), "MB-PSS/clone")
			b.Logf("%d idle clones, settings %v, probe %v: %.2f %% of one core over %.0f s (load average %.2f → %.2f); PSS %.0f MB (%.1f MB a clone, %d processes)\n%s",
				n, v.values, v.probe, 100*total/wall, wall, load0, load1, float64(pss)/(1<<20), float64(pss)/(1<<20)/float64(n), procs,
				strings.Join(lines, "\n"))
		})
	}
}
