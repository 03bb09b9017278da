package postgres_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/testfs"
)

// benchImage makes what the clone benchmarks, and the tests of clones side
// by side, start from: a loopback BTRFS of size bytes holding image-1, a
// data directory that has run once with the client roles and was shut down
// cleanly, as finalise leaves one. The seed's Cluster is the template each
// clone's settings start from. mnt is where the filesystem is mounted.
func benchImage(b testing.TB, size int64) (d *btrfs.Driver, seed *pgtest.Instance, owner postgres.OSUser, mnt string) {
	d, seed, owner, mnt, upload := benchUpload(b, size)
	// As finalise does: kept, the seed's statistics would send every
	// clone's autovacuum into template1's catalogs minutes after its start.
	if err := postgres.ForgetStatistics(upload); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Freeze(ctx, "upload-1", "image-1"); err != nil {
		b.Fatal(err)
	}
	return d, seed, owner, mnt
}

// benchUpload is benchImage before the freeze: the data directory is in
// volume upload-1, at upload.
func benchUpload(b testing.TB, size int64) (d *btrfs.Driver, seed *pgtest.Instance, owner postgres.OSUser, mnt, upload string) {
	owner = pgtest.Owner(b)
	mnt = testfs.Btrfs(b, size)
	for d := filepath.Dir(mnt); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	var err error
	d, err = btrfs.New(filepath.Join(mnt, "sindri"))
	if err != nil {
		b.Fatal(err)
	}
	seed = pgtest.StartInstance(b)
	if err := postgres.Stop(ctx, seed.DataDir, 10*time.Second); err != nil {
		b.Fatal(err)
	}
	up, err := d.Create(ctx, "upload-1")
	if err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", seed.DataDir+"/.", up.Path).CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	owner.Chown(up.Path, false)
	os.Chmod(up.Path, 0o700)
	return d, seed, owner, mnt, up.Path
}

// benchSocketDir is a directory for clones' sockets, removed after b.
func benchSocketDir(b testing.TB, owner postgres.OSUser) string {
	sock, err := os.MkdirTemp("", "sb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(sock) })
	owner.Chown(sock, false)
	os.Chmod(sock, 0o755)
	return sock
}

// benchSettings reads clone settings to try from the environment variable
// name, as "name=value,name=value"; nil when it is not set.
func benchSettings(b *testing.B, name string) map[string]string {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return nil
	}
	try := map[string]string{}
	for _, kv := range strings.Split(v, ",") {
		setting, value, ok := strings.Cut(kv, "=")
		if !ok {
			b.Fatalf("%s=%q: want name=value pairs separated by commas", name, v)
		}
		try[strings.TrimSpace(setting)] = strings.TrimSpace(value)
	}
	return try
}

// benchVolume is a clone the benchmarks made: its volume and data directory.
type benchVolume struct{ name, dir string }

// benchDestroy stops the postmasters of volumes and destroys them, four at
// a time.
func benchDestroy(b *testing.B, d *btrfs.Driver, volumes []benchVolume) {
	var wg sync.WaitGroup
	work := make(chan benchVolume)
	for range 4 {
		wg.Go(func() {
			for v := range work {
				postgres.StopAll(ctx, v.dir, 10*time.Second)
				if err := d.Destroy(ctx, v.name); err != nil {
					b.Errorf("destroying %s: %v", v.name, err)
				}
			}
		})
	}
	for _, v := range volumes {
		work <- v
	}
	close(work)
	wg.Wait()
}
