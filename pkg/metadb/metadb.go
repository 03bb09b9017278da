// Package metadb runs sindrid's own metadata PostgreSQL, the embedded
// default when no database_url is configured: a cluster under
// data_path/meta reachable only through a private unix socket.
package metadb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// Database is the name of sindri's database in the cluster.
const Database = "sindri"

// port only names the socket file: the cluster listens on no TCP address.
const port = 5432

// Cluster is the running metadata cluster.
type Cluster struct {
	pg      postgres.Cluster
	process *postgres.Process
	log     *slog.Logger

	mu sync.Mutex
	// unsupervise ends Supervise's watch and waits for it (nil: none).
	unsupervise func()
}

// Supervision's pace: how often the postmaster is looked at, and the
// longest wait between two failed starts.
const (
	superviseInterval   = time.Second
	maxSuperviseBackoff = 30 * time.Second
)

// Start makes the cluster under dir when it is missing (initdb with the
// newest installed PostgreSQL), starts it, or adopts it when a previous
// sindrid left it running, and makes sure sindri's database exists.
func Start(ctx context.Context, dir, binPattern string, owner postgres.OSUser, log *slog.Logger) (*Cluster, error) {
	c := &Cluster{log: log, pg: postgres.Cluster{
		DataDir: filepath.Join(dir, "data"), SocketDir: filepath.Join(dir, "socket"), Port: port, Owner: owner,
		Settings: postgres.Settings{ListenAddresses: "", SharedBuffers: "64MB", ClusterName: "sindri-metadata"},
	}}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.pg.SocketDir, 0o700); err != nil {
		return nil, err
	}
	if err := owner.Chown(c.pg.SocketDir, false); err != nil {
		return nil, err
	}
	var err error
	if _, err = postgres.MajorVersion(c.pg.DataDir); errors.Is(err, postgres.ErrNotDataDir) {
		major, err := postgres.NewestMajor(binPattern)
		if err != nil {
			return nil, err
		}
		if c.pg.BinDir, err = postgres.BinDir(binPattern, major); err != nil {
			return nil, err
		}
		os.RemoveAll(c.pg.DataDir) // what a cut-short initdb left
		if err := c.pg.Init(ctx); err != nil {
			return nil, err
		}
		log.Info("metadb: made the metadata cluster", "data_dir", c.pg.DataDir, "pg_version", major)
	} else if err != nil {
		return nil, err
	} else if c.pg.BinDir, err = postgres.BinDirFor(binPattern, c.pg.DataDir); err != nil {
		return nil, err
	}

	if st, err := postgres.Status(c.pg.DataDir); err == nil && st.Alive {
		log.Info("metadb: adopting the running metadata cluster", "pid", st.PID)
	} else {
		if err := c.pg.Configure(); err != nil {
			return nil, err
		}
		if c.process, err = c.pg.Start(); err != nil {
			return nil, err
		}
	}
	ready, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.pg.WaitReady(ready, c.process); err != nil {
		return nil, err
	}
	if err := c.createDatabase(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) createDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, postgres.SocketURL(c.pg.SocketDir, port, "postgres", "postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "select exists (select from pg_database where datname = $1)", Database).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "create database "+pgx.Identifier{Database}.Sanitize())
	return err
}

// URL is the libpq URL of sindri's database.
func (c *Cluster) URL() string {
	return postgres.SocketURL(c.pg.SocketDir, port, "postgres", Database)
}

// Supervise starts the cluster's postmaster again whenever it has ended,
// until Stop. The cluster keeps its data under data_path, on the disk the
// instances and uploads fill: when that disk is full, Postgres ends on
// its next WAL write (a PANIC), and its own restart ends again at the
// end-of-recovery checkpoint it cannot write. Without a new start the
// store would stay out of reach, every request answered 503, until
// sindrid itself is restarted, long after space is freed; with it, the
// store is back within moments of space coming back. Failed starts back
// off up to maxSuperviseBackoff, each logged with the end of the
// cluster's log.
func (c *Cluster) Supervise() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c.mu.Lock()
	c.unsupervise = func() { cancel(); <-done }
	c.mu.Unlock()
	go func() {
		defer close(done)
		c.supervise(ctx)
	}()
}

func (c *Cluster) supervise(ctx context.Context) {
	wait := superviseInterval
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if st, err := postgres.Status(c.pg.DataDir); err == nil && st.Alive {
			wait = superviseInterval
			continue
		}
		c.log.Warn("metadb: the metadata cluster's postmaster has ended; starting it again",
			"data_dir", c.pg.DataDir, "log", postgres.LogTail(c.pg.DataDir, 5))
		if err := c.restart(ctx); err != nil {
			wait = min(max(2*wait, superviseInterval), maxSuperviseBackoff)
			c.log.Error("metadb: starting the metadata cluster again failed (is data_path's disk full?)",
				"err", err, "retry_in", wait.String(), "log", postgres.LogTail(c.pg.DataDir, 5))
			continue
		}
		wait = superviseInterval
		c.log.Info("metadb: the metadata cluster is running again", "pid", c.process.PID)
	}
}

// restart starts the postmaster and waits until it accepts connections
// (crash recovery first), or kills it when it does not within the wait.
func (c *Cluster) restart(ctx context.Context) error {
	if err := postgres.KillLeftovers(ctx, c.pg.DataDir); err != nil {
		return err
	}
	p, err := c.pg.Start()
	if err != nil {
		return err
	}
	c.process = p
	ready, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return c.pg.WaitReady(ready, p)
}

// Stop ends supervision and shuts the cluster down (fast shutdown, then
// immediate).
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	unsupervise := c.unsupervise
	c.unsupervise = nil
	c.mu.Unlock()
	if unsupervise != nil {
		unsupervise()
	}
	if err := c.pg.Stop(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("stopping the metadata cluster: %w", err)
	}
	c.log.Info("metadb: stopped")
	return nil
}
