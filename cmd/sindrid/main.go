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
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/setup"
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

	logger *slog.Logger
	stderr io.Writer
	health *http.Server
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
// the embedded default) and starts serving.
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
	entries, err := driver.List(ctx)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	m.logger.Info("sindrid: storage ready", "driver", driver.Name(), "entries", len(entries),
		"total_bytes", capacity.TotalBytes, "free_bytes", capacity.FreeBytes)

	// Not yet: the metadata store, the Postgres supervisor and the API
	// (issues 3 and 4). Until then only the health check answers.
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
	m.logger.Warn("sindrid: not yet: the metadata store, instance supervisor and JSON:API server come with the next issues; only storage and GET /health_check run")
	return nil
}

// Close stops serving. Storage needs no closing: its state is on disk.
func (m *Main) Close() error {
	if m.health == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return m.health.Shutdown(ctx)
}
