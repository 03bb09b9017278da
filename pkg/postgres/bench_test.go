package postgres_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// BenchmarkCloneToTLSLogin measures what an instance costs after its BTRFS
// clone is made: writing sindri's settings, starting the postmaster,
// waiting until it is ready, and the first TLS login with the client
// certificate. "sindri" waits by connecting every 2 ms; "pg_ctl" is
// `pg_ctl -w start` on the same data, the way most tools start Postgres.
func BenchmarkCloneToTLSLogin(b *testing.B) {
	d, seed, owner, _ := benchImage(b, 2<<30)
	sock := benchSocketDir(b, owner)
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
