package ingest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// defaultBenchScale is the pgbench scale of BenchmarkExtract's fixture: a
// data directory of about 2 GB. SINDRI_BENCH_INGEST_SCALE overrides it.
const defaultBenchScale = 130

// benchFixture is a tar.zst of a real PostgreSQL data directory.
type benchFixture struct {
	path                   string
	compressed, tarSize    int64
	dataDirSize, dataFiles int64 // known only when built by this process
}

// BenchmarkExtract measures ingest.Extract on a tar.zst of a pgbench data
// directory next to what a user would run on the same file instead:
// `zstd -d -c FILE | tar -x -C DIR`. Both read the same archive, already
// in the page cache (it is read whole before the runs), and write into a
// fresh directory next to it; the directory is removed and the file
// system synced with the timer stopped. go test's first pass of each
// sub-benchmark (b.N = 1, before -benchtime's count) is their warm-up.
// MB/s is of the uncompressed tar stream; MB/s-compressed of the archive.
//
// The archive is made once, by starting a cluster with pgtest and running
// pgbench -i, and kept under /var/tmp/sindri-bench-ingest (or
// SINDRI_BENCH_INGEST_DIR) for later runs: delete it to rebuild it.
//
//	go test -run '^$' -bench BenchmarkExtract -benchtime 3x ./pkg/ingest/
func BenchmarkExtract(b *testing.B) {
	testenv.RequireRoot(b, "the fixture is made by a PostgreSQL cluster that pgtest runs as the postgres OS user")
	fx := benchArchive(b)
	b.Logf("fixture %s: %.1f MB compressed, %.1f MB tar stream (ratio %.2f)",
		fx.path, mb(fx.compressed), mb(fx.tarSize), float64(fx.tarSize)/float64(fx.compressed))
	work := filepath.Dir(fx.path)

	run := func(b *testing.B, extract func(dir string) error) {
		b.SetBytes(fx.tarSize)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dir, err := os.MkdirTemp(work, "extract-")
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := extract(dir); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if _, err := os.Lstat(filepath.Join(dir, "PG_VERSION")); err != nil {
				b.Fatalf("no data directory extracted: %v", err)
			}
			if err := os.RemoveAll(dir); err != nil {
				b.Fatal(err)
			}
			// Writeback of one iteration's files must not land in the next.
			syscall.Sync()
			b.StartTimer()
		}
		b.ReportMetric(float64(fx.compressed)*float64(b.N)/1e6/b.Elapsed().Seconds(), "MB/s-compressed")
	}

	b.Run("sindri", func(b *testing.B) {
		run(b, func(dir string) error {
			f, err := os.Open(fx.path)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = Extract(context.Background(), f, dir, Limits{})
			return err
		})
	})
	b.Run("zstd-tar", func(b *testing.B) {
		run(b, func(dir string) error {
			return zstdTar(fx.path, dir)
		})
	})
}

// zstdTar runs `zstd -d -c archive | tar -x -C dir`.
func zstdTar(archive, dir string) error {
	return pipeline(exec.Command("zstd", "-d", "-q", "-c", archive), exec.Command("tar", "-x", "-C", dir))
}

// pipeline runs `from | to` and fails when either fails (which sh's
// pipeline, without pipefail, would not tell).
func pipeline(from, to *exec.Cmd) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	from.Stdout, to.Stdin = pw, pr
	if from.Stderr == nil {
		from.Stderr = os.Stderr
	}
	if to.Stderr == nil {
		to.Stderr = os.Stderr
	}
	if err := from.Start(); err != nil {
		pr.Close()
		pw.Close()
		return err
	}
	pw.Close()
	err = to.Start()
	pr.Close()
	if err != nil {
		from.Process.Kill()
		from.Wait()
		return err
	}
	ferr, terr := from.Wait(), to.Wait()
	if ferr != nil {
		return fmt.Errorf("%s: %w", from.Args[0], ferr)
	}
	if terr != nil {
		return fmt.Errorf("%s: %w", to.Args[0], terr)
	}
	return nil
}

// benchArchive returns the fixture for SINDRI_BENCH_INGEST_SCALE, making it
// when it is not on disk yet, and reads it once whole, which counts its
// tar stream and puts it in the page cache.
func benchArchive(b *testing.B) benchFixture {
	b.Helper()
	scale := defaultBenchScale
	if s := os.Getenv("SINDRI_BENCH_INGEST_SCALE"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("SINDRI_BENCH_INGEST_SCALE=%q: want a pgbench scale, a positive integer", s)
		}
		scale = n
	}
	work := os.Getenv("SINDRI_BENCH_INGEST_DIR")
	if work == "" {
		// /var/tmp outlives reboots, where /tmp may not.
		work = "/var/tmp"
		if st, err := os.Stat(work); err != nil || !st.IsDir() {
			work = os.TempDir()
		}
		work = filepath.Join(work, "sindri-bench-ingest")
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		b.Fatal(err)
	}
	for _, tool := range []string{"zstd", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%v (make deps installs it)", err)
		}
	}
	fx := benchFixture{path: filepath.Join(work, fmt.Sprintf("pgbench-s%d.tar.zst", scale))}
	if _, err := os.Stat(fx.path); os.IsNotExist(err) {
		buildBenchArchive(b, scale, &fx)
	} else if err != nil {
		b.Fatal(err)
	}
	st, err := os.Stat(fx.path)
	if err != nil {
		b.Fatal(err)
	}
	fx.compressed = st.Size()
	f, err := os.Open(fx.path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	stream, err := Decompress(f)
	if err != nil {
		b.Fatal(err)
	}
	defer stream.Close()
	fx.tarSize, err = io.Copy(io.Discard, stream)
	if err != nil {
		b.Fatalf("reading %s (delete it to rebuild it): %v", fx.path, err)
	}
	return fx
}

// buildBenchArchive starts a cluster, fills it with pgbench -i -s scale,
// stops it (a fast shutdown: checkpointed, clean) and writes its data
// directory as a tar.zst to fx.path, through a temporary name.
func buildBenchArchive(b *testing.B, scale int, fx *benchFixture) {
	start := time.Now()
	b.Logf("building the fixture %s: pgbench -i -s %d (delete the file to rebuild it)", fx.path, scale)
	inst := pgtest.StartInstance(b)
	pgbench := exec.Command(filepath.Join(inst.BinDir, "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
		"-h", inst.SocketDir, "-p", strconv.Itoa(inst.Port), "-U", "postgres", "postgres")
	if out, err := pgbench.CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	if err := postgres.Stop(context.Background(), inst.DataDir, time.Minute); err != nil {
		b.Fatalf("stopping the cluster: %v", err)
	}
	// pgtest removes it at cleanup, after every sub-benchmark: too late
	// for the disk's sake.
	defer os.RemoveAll(filepath.Dir(inst.DataDir))
	if err := filepath.Walk(inst.DataDir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			fx.dataDirSize += info.Size()
			fx.dataFiles++
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	du := "?"
	if out, err := exec.Command("du", "-sh", inst.DataDir).Output(); err == nil && len(out) > 0 {
		du = strings.Fields(string(out))[0]
	}
	tmp := fx.path + ".tmp"
	defer os.Remove(tmp)
	if err := pipeline(exec.Command("tar", "-C", inst.DataDir, "-cf", "-", "."),
		exec.Command("zstd", "-T0", "-3", "-q", "-f", "-o", tmp)); err != nil {
		b.Fatalf("tar -c | zstd: %v", err)
	}
	if err := os.Rename(tmp, fx.path); err != nil {
		b.Fatal(err)
	}
	b.Logf("built the fixture in %v: data directory of %.1f MB in %d files (du: %s)",
		time.Since(start).Round(time.Second), mb(fx.dataDirSize), fx.dataFiles, du)
}

func mb(n int64) float64 { return float64(n) / 1e6 }
