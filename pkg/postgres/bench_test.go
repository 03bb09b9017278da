package postgres_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/testfs"
)

// BenchmarkCloneToTLSLogin measures what an instance costs after its BTRFS
// clone is made: writing sindri's settings, starting the postmaster,
// waiting until it is ready, and the first TLS login with the client
// certificate. "sindri" waits by connecting every 2 ms; "pg_ctl" is
// `pg_ctl -w start` on the same data, the way most tools start Postgres.
func BenchmarkCloneToTLSLogin(b *testing.B) {
	owner := pgtest.Owner(b)
	mnt := testfs.Btrfs(b, 2<<30)
	for d := filepath.Dir(mnt); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	d, err := btrfs.New(filepath.Join(mnt, "sindri"))
	if err != nil {
		b.Fatal(err)
	}
	// The image: a data directory that has run once, with the client roles.
	seed := pgtest.StartInstance(b)
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
	if _, err := d.Freeze(ctx, "upload-1", "image-1"); err != nil {
		b.Fatal(err)
	}
	sock, err := os.MkdirTemp("", "sb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(sock)
	owner.Chown(sock, false)
	os.Chmod(sock, 0o700)
	run := func(b *testing.B, start func(c *postgres.Cluster) error) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			name := fmt.Sprintf("clone-%d", i)
			clone, err := d.Clone(ctx, "image-1", name)
			if err != nil {
				b.Fatal(err)
			}
			c := seed.Cluster
			c.DataDir, c.SocketDir = clone.Path, sock
			b.StartTimer()

			if err := c.Configure(); err != nil {
				b.Fatal(err)
			}
			if err := start(&c); err != nil {
				b.Fatal(err)
			}
			conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=draupnir sslmode=verify-ca sslrootcert=%s sslcert=%s sslkey=%s",
				c.Port, seed.ClientFiles.CA, seed.ClientFiles.Cert, seed.ClientFiles.Key))
			if err != nil {
				b.Fatal(err)
			}
			conn.Close(ctx)

			b.StopTimer()
			if err := postgres.StopAll(ctx, clone.Path, 10*time.Second); err != nil {
				b.Fatal(err)
			}
			if err := d.Destroy(ctx, name); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.Run("sindri", func(b *testing.B) {
		run(b, func(c *postgres.Cluster) error {
			p, err := c.Start()
			if err != nil {
				return err
			}
			return c.WaitReady(ctx, p)
		})
	})
	b.Run("pg_ctl", func(b *testing.B) {
		run(b, func(c *postgres.Cluster) error {
			cmd := c.Command(ctx, "pg_ctl", nil, "-w", "-D", c.DataDir, "-l", filepath.Join(c.DataDir, postgres.LogFile),
				"-o", "-c config_file="+filepath.Join(c.DataDir, postgres.ConfFile), "start")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	})
}
