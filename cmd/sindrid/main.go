// Command sindrid is the sindri server: it keeps uploaded PostgreSQL data
// directories as read-only copy-on-write images and hands out writable
// clones of them, each a Postgres server on its own port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sindri-db/sindri/pkg/config"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/metadb"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/setup"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/version"
)

// Exit statuses: 2 for a bad command line or configuration, 1 for a
// failure while running.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := NewMain(os.Stderr)
	if err := m.ParseFlags(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "sindrid:", err)
		os.Exit(exitUsage)
	}
	if err := m.Run(ctx); err != nil {
		m.Close()
		fmt.Fprintln(os.Stderr, "sindrid:", err)
		var cerr *config.Error
		if errors.As(err, &cerr) {
			os.Exit(exitUsage)
		}
		os.Exit(exitFailure)
	}
	<-ctx.Done()
	m.logger.Info("sindrid: stopping")
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "sindrid:", err)
		os.Exit(exitFailure)
	}
}

// Main is the server program: ParseFlags, then Run, then Close.
type Main struct {
	ConfigPath string
	Config     *config.Config
	Storage    storage.Driver
	Meta       *metadb.Cluster
	Store      *store.Store
	Engine     *engine.Engine

	logger *slog.Logger
	stderr io.Writer
	health *http.Server
	stop   context.CancelFunc
	done   chan struct{}
}

func NewMain(stderr io.Writer) *Main {
	return &Main{stderr: stderr, logger: slog.New(slog.NewTextHandler(stderr, nil))}
}

// ParseFlags reads the command line and loads the configuration file.
func (m *Main) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("sindrid", flag.ContinueOnError)
	fs.SetOutput(m.stderr)
	fs.StringVar(&m.ConfigPath, "config", "/etc/sindri/config.toml", "path of the TOML configuration file")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (sindrid takes only flags; see -help)", fs.Arg(0))
	}
	if *showVersion {
		fmt.Fprintln(m.stderr, "sindrid", version.Version)
		return flag.ErrHelp
	}
	cfg, err := config.Load(m.ConfigPath)
	if err != nil {
		return err
	}
	m.Config = cfg
	return nil
}

// Run opens the storage (making and mounting the loopback BTRFS when it is
// the embedded default), the metadata store (starting the embedded
// metadata Postgres when no database_url is set), reconciles instances
// with what is on disk, and starts supervising them.
func (m *Main) Run(ctx context.Context) error {
	cfg := m.Config
	m.logger.Info("sindrid: starting", "version", version.Version, "config", m.ConfigPath, "data_path", cfg.DataPath)
	driver, err := setup.Open(ctx, setup.Options{
		Driver:       cfg.Storage.Driver,
		DataPath:     cfg.DataPath,
		ZFSDataset:   cfg.Storage.ZFSDataset,
		LoopbackFile: cfg.LoopbackFilePath(),
		LoopbackSize: cfg.Storage.LoopbackSize.Int64(),
		Logger:       m.logger,
	})
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	m.Storage = driver
	capacity, err := driver.Capacity(ctx)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	m.logger.Info("sindrid: storage ready", "driver", driver.Name(),
		"total_bytes", capacity.TotalBytes, "free_bytes", capacity.FreeBytes)

	owner, err := postgres.LookupUser(cfg.Postgres.User)
	if err != nil {
		return err
	}
	if err := owner.CheckReach(cfg.DataPath); err != nil {
		return err
	}
	databaseURL := cfg.DatabaseURL
	if cfg.EmbeddedMetadataDB() {
		if m.Meta, err = metadb.Start(ctx, cfg.MetaDir(), cfg.Postgres.BinDir, owner, m.logger); err != nil {
			return fmt.Errorf("embedded metadata database: %w", err)
		}
		databaseURL = m.Meta.URL()
	}
	if m.Store, err = store.Open(ctx, databaseURL); err != nil {
		return err
	}
	applied, err := m.Store.Migrate(ctx)
	if err != nil {
		return err
	}
	m.logger.Info("sindrid: metadata store ready", "embedded", cfg.EmbeddedMetadataDB(), "migrations_applied", len(applied))

	if err := os.MkdirAll(cfg.Postgres.SocketDir, 0o711); err != nil {
		return fmt.Errorf("postgres.socket_dir: %w", err)
	}
	m.Engine = engine.New(engine.Options{
		Store: m.Store, Storage: driver, Owner: owner, BinPattern: cfg.Postgres.BinDir,
		MinPort: cfg.Postgres.MinPort, MaxPort: cfg.Postgres.MaxPort,
		PublicHostname: cfg.PublicHostname, SharedBuffers: cfg.Postgres.SharedBuffers,
		AllowSuperuser: cfg.Postgres.AllowSuperuser, RunDir: cfg.Postgres.SocketDir,
		UploadsDir: cfg.UploadsDir(), DefaultTTL: cfg.Instances.DefaultTTL, MaxTTL: cfg.Instances.MaxTTL,
		Logger: m.logger, OrphanGrace: 10 * time.Minute,
	})
	if err := m.Engine.Reconcile(ctx); err != nil {
		// What could not be reconciled is logged and retried every minute;
		// the rest of sindrid serves meanwhile.
		m.logger.Error("sindrid: reconcile at start", "err", err)
	}
	engineCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	m.stop, m.done = stop, make(chan struct{})
	go func() {
		defer close(m.done)
		m.Engine.Run(engineCtx, time.Minute, cfg.Instances.ExpiryInterval)
	}()

	// Not yet: the JSON:API server (issue 4). Until then only the health
	// check answers.
	if addr := cfg.HTTP.InsecureListenAddress; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on http.insecure_listen_address %s: %w", addr, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /health_check", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"status":"ok"}`)
		})
		m.health = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := m.health.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				m.logger.Error("sindrid: health check server", "err", err)
			}
		}()
		m.logger.Info("sindrid: health check listening", "address", ln.Addr().String())
	}
	m.logger.Warn("sindrid: not yet: the JSON:API server comes with the next issue; storage, the metadata store and instance supervision run, and GET /health_check answers")
	return nil
}

// Close stops serving and supervising, closes the store and stops the
// embedded metadata Postgres. Instance postmasters keep running: the next
// start adopts them.
func (m *Main) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if m.health != nil {
		errs = append(errs, m.health.Shutdown(ctx))
	}
	if m.stop != nil {
		m.stop()
		<-m.done
	}
	if m.Store != nil {
		m.Store.Close()
	}
	if m.Meta != nil {
		errs = append(errs, m.Meta.Stop(ctx))
	}
	return errors.Join(errs...)
}
