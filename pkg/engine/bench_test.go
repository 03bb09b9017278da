package engine_test

import (
	"fmt"
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
	w := newWorldSized(b, 5, 16<<30) // sparse: room for the data, its WAL and the restores
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
