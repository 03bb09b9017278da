package engine_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// BenchmarkBackupRestore measures a backup of a running instance (flush,
// snapshot, tar.zst, sha256) and a restore (an image from the backup:
// extract, recover, checkpoint, freeze), in MB/s of the instance's data
// directory, beside what a user would run instead on the same instance:
// pg_dump -Fc, and createdb plus pg_restore of that dump. The instance
// holds pgbench's tables at scale SINDRI_BENCH_BACKUP_SCALE (30: about
// 500 MB of data directory).
//
//	go test -run '^$' -bench BenchmarkBackupRestore -benchtime 3x ./pkg/engine/
func BenchmarkBackupRestore(b *testing.B) {
	testenv.RequireRoot(b, "loopback BTRFS and Postgres run as the postgres user")
	scale := 30
	if v := os.Getenv("SINDRI_BENCH_BACKUP_SCALE"); v != "" {
		var err error
		if scale, err = strconv.Atoi(v); err != nil || scale < 1 {
			b.Fatalf("SINDRI_BENCH_BACKUP_SCALE=%q: want a positive integer", v)
		}
	}
	skipOnDircopy(b, "the benchmarks measure BTRFS, what sindri offers, and 16 GiB of tmpfs would be memory")
	w := newWorldBtrfs(b, 5, 16<<30) // sparse: room for the data, its WAL and the restores
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		b.Fatal(err)
	}
	bin := pgtest.BinDir(b)
	su := w.superuserConn(inst)
	run := func(name string, args ...string) {
		b.Helper()
		if out, err := exec.Command(filepath.Join(bin, name), args...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	run("pgbench", "-i", "-q", "-s", strconv.Itoa(scale), su)
	vol, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	if err != nil {
		b.Fatal(err)
	}
	var dataBytes int64
	filepath.Walk(vol.Path, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			dataBytes += fi.Size()
		}
		return nil
	})
	b.Logf("instance data directory: %.0f MB (pgbench scale %d)", float64(dataBytes)/1e6, scale)

	var backupID int64
	b.Run("sindri-backup", func(b *testing.B) {
		b.SetBytes(dataBytes)
		for i := 0; i < b.N; i++ {
			bk, err := e.CreateBackup(ctx, engine.BackupRequest{InstanceID: inst.ID})
			if err != nil {
				b.Fatal(err)
			}
			if bk = waitBackup(b, e, bk.ID); bk.Status != store.BackupDone {
				b.Fatalf("backup %+v", bk)
			}
			b.ReportMetric(float64(bk.SizeBytes)/1e6, "MB-archive")
			if backupID != 0 {
				b.StopTimer()
				e.DeleteBackup(ctx, backupID)
				b.StartTimer()
			}
			backupID = bk.ID
		}
	})
	dump := filepath.Join(b.TempDir(), "dump")
	b.Run("pg_dump", func(b *testing.B) {
		b.SetBytes(dataBytes)
		for i := 0; i < b.N; i++ {
			run("pg_dump", "-Fc", "-f", dump, su)
		}
		fi, _ := os.Stat(dump)
		b.ReportMetric(float64(fi.Size())/1e6, "MB-archive")
	})
	b.Run("sindri-restore", func(b *testing.B) {
		b.SetBytes(dataBytes)
		for i := 0; i < b.N; i++ {
			img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: backupID})
			if err != nil {
				b.Fatal(err)
			}
			if img, err = e.FinaliseImage(ctx, img.ID); err != nil {
				b.Fatalf("restore: %+v, %v", img, err)
			}
			b.StopTimer()
			if err := e.DestroyImage(ctx, img.ID, false); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("pg_restore", func(b *testing.B) {
		b.SetBytes(dataBytes)
		for i := 0; i < b.N; i++ {
			db := fmt.Sprintf("restored_%d", i)
			run("createdb", "-h", filepath.Join(w.runDir, strconv.FormatInt(inst.ID, 10)), "-p", strconv.Itoa(inst.Port), "-U", "postgres", db)
			run("pg_restore", "-d", fmt.Sprintf("postgres://postgres@/%s?host=%s&port=%d", db, filepath.Join(w.runDir, strconv.FormatInt(inst.ID, 10)), inst.Port), dump)
			b.StopTimer()
			run("dropdb", "-h", filepath.Join(w.runDir, strconv.FormatInt(inst.ID, 10)), "-p", strconv.Itoa(inst.Port), "-U", "postgres", db)
			b.StartTimer()
		}
	})
}

// benchImageSizes reads SINDRI_BENCH_IMAGE_MB: image sizes in MB, comma
// separated; 1 GB and 5 GB unless set (as spec's BenchmarkAPI).
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

// benchScript anonymises a pgbench database as a user's script would: a
// column of every row of every table rewritten.
const benchScript = `\c postgres
update pgbench_accounts set filler = md5(aid::text);
update pgbench_tellers set filler = md5(tid::text);
update pgbench_branches set filler = md5(bid::text);
`

// pgbenchTarball is a tar of a stopped data directory holding pgbench's
// tables at the scale that makes about sizeMB MB (scale 1 is about 15 MB),
// analysed as pgbench -i leaves them.
func pgbenchTarball(b *testing.B, sizeMB int) string {
	b.Helper()
	scale := max(1, sizeMB/15)
	t0 := time.Now()
	src := pgtest.StartInstance(b)
	pgbench := exec.Command(filepath.Join(src.BinDir, "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
		"-h", src.SocketDir, "-p", strconv.Itoa(src.Port), "-U", "postgres", "postgres")
	if out, err := pgbench.CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v %s", err, out)
	}
	if err := postgres.Stop(ctx, src.DataDir, time.Minute); err != nil {
		b.Fatal(err)
	}
	tarball := filepath.Join(pgtest.Dir(b), "image.tar")
	if out, err := exec.Command("tar", "-C", src.DataDir, "-cf", tarball, ".").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v %s", err, out)
	}
	os.RemoveAll(src.DataDir)
	fi, err := os.Stat(tarball)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("pgbench scale %d: a tarball of %.0f MB, made in %s", scale, float64(fi.Size())/1e6, time.Since(t0).Round(time.Second))
	return tarball
}

// diskUsed is what the filesystem mounted at mnt has in use, once BTRFS
// has cleaned up the deleted subvolumes and committed what was freed.
func diskUsed(b *testing.B, mnt string) int64 {
	b.Helper()
	for _, args := range [][]string{{"subvolume", "sync", mnt}, {"filesystem", "sync", mnt}} {
		if out, err := exec.Command("btrfs", args...).CombinedOutput(); err != nil {
			b.Fatalf("btrfs %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		b.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// BenchmarkFinaliseAnonymised measures the finalise of a pgbench image of
// each size in SINDRI_BENCH_IMAGE_MB (MB; default "1024,5120") with an
// anonymisation script that rewrites a column of every row (benchScript),
// with the scrub after it and without (engine.WithoutScrub, which only
// benchmarks can set), SINDRI_BENCH_FINALISE_SAMPLES times each (default
// 3), alternating; and the disk one image takes, on a loopback BTRFS:
// the upload's archive, which sindri once kept for the image's life, and
// the ready image, once its upload is removed. Medians are the metrics.
//
//	go test -run '^$' -bench FinaliseAnonymised -benchtime 1x -timeout 300m ./pkg/engine/
func BenchmarkFinaliseAnonymised(b *testing.B) {
	testenv.RequireRoot(b, "loopback BTRFS and Postgres run as the postgres user")
	samples := 3
	if v := os.Getenv("SINDRI_BENCH_FINALISE_SAMPLES"); v != "" {
		var err error
		if samples, err = strconv.Atoi(v); err != nil || samples < 1 {
			b.Fatalf("SINDRI_BENCH_FINALISE_SAMPLES=%q: want a positive integer", v)
		}
	}
	skipOnDircopy(b, "it measures BTRFS's disk use, and images of gigabytes on tmpfs would be memory")
	for _, sizeMB := range benchImageSizes(b) {
		b.Run(fmt.Sprintf("image=%dMB", sizeMB), func(b *testing.B) {
			tarball := pgbenchTarball(b, sizeMB)
			// Sparse: room for the upload, its extraction, the script's
			// new row versions and WAL, and VACUUM FULL's copy.
			w := newWorldBtrfs(b, 3, int64(4*sizeMB+8192)<<20)
			mnt := filepath.Dir(w.root)
			engines := map[string]*engine.Engine{
				"scrub":    engine.New(w.options()),
				"no-scrub": engine.New(engine.WithoutScrub(w.options())),
			}
			seconds := map[string][]float64{}
			imageMB := map[string][]float64{}
			var uploadMB []float64
			for range b.N {
				for i := range samples {
					for _, variant := range []string{"scrub", "no-scrub"} {
						e := engines[variant]
						before := diskUsed(b, mnt)
						img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), AnonymisationScript: benchScript})
						if err != nil {
							b.Fatal(err)
						}
						f, err := os.Open(tarball)
						if err != nil {
							b.Fatal(err)
						}
						_, err = e.UploadImage(ctx, img.ID, f)
						f.Close()
						if err != nil {
							b.Fatal(err)
						}
						uploaded := diskUsed(b, mnt)
						t0 := time.Now()
						img, err = e.FinaliseImage(ctx, img.ID)
						took := time.Since(t0)
						if err != nil {
							b.Fatalf("finalise (%s): %+v, %v", variant, img, err)
						}
						if img.Anonymised != (variant == "scrub") {
							b.Fatalf("finalise (%s): anonymised %v", variant, img.Anonymised)
						}
						ready := diskUsed(b, mnt)
						seconds[variant] = append(seconds[variant], took.Seconds())
						imageMB[variant] = append(imageMB[variant], float64(ready-before)/1e6)
						uploadMB = append(uploadMB, float64(uploaded-before)/1e6)
						b.Logf("sample %d, %s: finalise %s; on disk: upload %.0f MB, ready image %.0f MB (size_bytes %.0f MB)",
							i+1, variant, took.Round(10*time.Millisecond), float64(uploaded-before)/1e6, float64(ready-before)/1e6, float64(img.SizeBytes)/1e6)
						if err := e.DestroyImage(ctx, img.ID, false); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			for _, variant := range []string{"scrub", "no-scrub"} {
				b.ReportMetric(median(seconds[variant]), "s-finalise-"+variant)
				b.ReportMetric(median(imageMB[variant]), "MB-image-"+variant)
			}
			b.ReportMetric(median(uploadMB), "MB-upload")
			b.ReportMetric(median(uploadMB)+median(imageMB["scrub"]), "MB-image+upload")
			b.ReportMetric(0, "ns/op")
		})
	}
}
