// Command sindrid is the sindri server: it keeps uploaded PostgreSQL data
// directories as read-only copy-on-write images and hands out writable
// clones of them, each a Postgres server on its own port.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/config"
	"github.com/sindri-db/sindri/pkg/console"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/fleet"
	"github.com/sindri-db/sindri/pkg/metadb"
	"github.com/sindri-db/sindri/pkg/metrics"
	"github.com/sindri-db/sindri/pkg/osuser"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/servercert"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/setup"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/version"
)

// serverGCPercent is the server's GOGC unless the environment sets one.
// Its live heap is about 10 MB beside a thousand instances, and a listing
// of them allocates about 340 kB: at Go's default of 100, 300 listings
// in a row ran eleven collections, and the listings they overlapped made
// the tail. At 400 the heap may grow to five times the live one (an RSS
// of about 80 MB instead of 47 MB beside a thousand instances).
const serverGCPercent = 400

// Exit statuses: 2 for a bad command line or configuration, 1 for a
// failure while running.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && (os.Args[1] == "token" || os.Args[1] == "secrets" || os.Args[1] == "host") {
		run := func() error { return runToken(ctx, os.Args[2:], os.Stdout, os.Stderr) }
		switch os.Args[1] {
		case "secrets":
			run = func() error { return runSecrets(ctx, os.Args[2:], os.Stderr) }
		case "host":
			run = func() error { return runHost(ctx, os.Args[2:], os.Stdout, os.Stderr) }
		}
		if err := run(); err != nil {
			fmt.Fprintln(os.Stderr, "sindrid:", err)
			var u usageError
			var cerr *config.Error
			if errors.As(err, &u) || errors.As(err, &cerr) {
				os.Exit(exitUsage)
			}
			os.Exit(exitFailure)
		}
		return
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serverGCPercent)
	}
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
	Metrics    *metrics.Metrics

	logger      *slog.Logger
	stderr      io.Writer
	servers     []*http.Server
	stop        context.CancelFunc
	done        chan struct{}
	fleet       *fleet.Member // nil without [fleet]
	peerAuth    *fleet.PeerAuth
	peerClient  *fleet.Client
	fleetDone   chan struct{}
	secretsLock *store.SecretsLock // held while sindrid runs
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
// metadata Postgres when no database_url is set) with the key that seals
// its secrets, reconciles instances with what is on disk, and starts
// supervising them.
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
		m.Meta.Supervise()
		databaseURL = m.Meta.URL()
	}
	applied, err := m.openStore(ctx, databaseURL)
	if err != nil {
		return err
	}
	m.logger.Info("sindrid: metadata store ready", "embedded", cfg.EmbeddedMetadataDB(), "migrations_applied", len(applied),
		"secrets_key_file", cfg.SecretsKeyFilePath(), "key_id", m.Store.Keyring().Current())
	if cfg.Fleet.Enabled() {
		// Registered before the engine starts: the instances it makes are
		// this host's.
		if err := m.joinFleet(ctx, driver); err != nil {
			return err
		}
	}

	// 0711: each postmaster must reach its own socket directory inside.
	if err := os.MkdirAll(cfg.Postgres.SocketDir, 0o711); err != nil {
		return fmt.Errorf("postgres.socket_dir: %w", err)
	}
	if err := os.Chmod(cfg.Postgres.SocketDir, 0o711); err != nil {
		return fmt.Errorf("postgres.socket_dir: %w", err)
	}
	if err := owner.CheckReach(filepath.Join(cfg.Postgres.SocketDir, "x")); err != nil {
		return fmt.Errorf("postgres.socket_dir: %w", err)
	}
	var peers *api.Fleet // nil without [fleet]
	if cfg.Fleet.Enabled() {
		if peers, err = m.fleetRouting(); err != nil {
			return err
		}
	}
	m.Metrics = metrics.New(func(ctx context.Context) (engine.Status, error) { return m.Engine.Status(ctx) })
	m.Engine = engine.New(engine.Options{
		ObserveInstanceReady: m.Metrics.ObserveInstanceReady,
		ObserveCreateStep:    m.Metrics.ObserveCreateStep,
		Store:                m.Store, Storage: driver, Owner: owner, BinPattern: cfg.Postgres.BinDir,
		MinPort: cfg.Postgres.MinPort, MaxPort: cfg.Postgres.MaxPort,
		PublicHostname: cfg.PublicHostname, SharedBuffers: cfg.Postgres.SharedBuffers,
		AllowSuperuser: cfg.Postgres.AllowSuperuser, RunDir: cfg.Postgres.SocketDir,
		UploadsDir: cfg.UploadsDir(), BackupsDir: cfg.BackupsDir(),
		DefaultTTL: cfg.Instances.DefaultTTL, MaxTTL: cfg.Instances.MaxTTL,
		BackupMaxAge:   cfg.Backups.MaxAge,
		SourceRetryMin: cfg.Sources.RetryMin, SourceRetryMax: cfg.Sources.RetryMax,
		StandbyResyncAfter: cfg.Sources.StandbyResyncAfter,
		Limits:             engineLimits(cfg.Limits),
		DownTimeout:        cfg.Fleet.DownTimeout,
		Logger:             m.logger, OrphanGrace: 10 * time.Minute,
	})
	if peers != nil {
		m.Engine.SetPeers(peers)
	}
	m.setUploadAccount()
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
	if m.fleet != nil {
		m.fleetDone = make(chan struct{})
		replicator := m.Engine.NewReplicator(engine.ReplicationOptions{
			Host: cfg.Fleet.Name, Peers: m.peerClient, DownTimeout: cfg.Fleet.DownTimeout, Concurrency: 1,
			Observer: m.Metrics,
		})
		go func() {
			defer close(m.fleetDone)
			var wg sync.WaitGroup
			wg.Go(func() { m.fleet.Run(engineCtx) })
			wg.Go(func() { replicator.Run(engineCtx) })
			wg.Wait()
		}()
	}

	authenticator, err := auth.NewFromConfig(cfg, m.Store, m.logger)
	if err != nil {
		return err
	}
	server := api.NewServer(api.Options{
		Logger: m.logger, Authenticate: api.Authenticate(authenticator),
		MaxBodyBytes: cfg.HTTP.MaxBodyBytes.Int64(),
		Metrics:      m.Metrics.Handler(),
		Observe:      func(ri api.RequestInfo) { m.Metrics.ObserveRequest(ri.Method, ri.Status) },
		// The console has its own sign-in (a session cookie, or OAuth in
		// the browser), not the API's header and bearer token.
		VersionExempt: console.RouteKeys,
		ExplainError:  m.explainError,
	})
	services := m.Engine.Services()
	handlers := &api.Handlers{
		Images: services.Images, Instances: services.Instances, Backups: services.Backups, Status: services.Status,
		Sources: services.Sources, Auth: authenticator, PublicHostname: cfg.PublicHostname, Version: version.Version,
	}
	if cfg.Fleet.Enabled() {
		handlers.Hosts = engine.NewHostService(m.Store, cfg.Fleet.DownTimeout)
		peers.Placed = services.Instances
		handlers.Fleet, handlers.ImageSender = peers, m.Engine
	}
	handlers.Register(server)
	ui, err := console.New(console.Options{
		Images: services.Images, Instances: services.Instances, Backups: services.Backups, Status: services.Status,
		Written: services.Instances.Written,
		Auth:    authenticator, PublicHostname: cfg.PublicHostname, Version: version.Version, Logger: m.logger,
	})
	if err != nil {
		return err
	}
	console.Register(server, ui)

	if err := m.listenTLS(server.Handler()); err != nil {
		return err
	}
	if addr := cfg.HTTP.InsecureListenAddress; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on http.insecure_listen_address %s: %w", addr, err)
		}
		m.serve(api.NewHTTPServer(server.Handler(), api.Options{Logger: m.logger}), ln, "http")
	}
	return nil
}

// explainError answers a request that failed because the embedded
// metadata database is out of reach while data_path's filesystem, where
// that database keeps its data, is under the disk reserve with the
// reserve's 503 no_disk_space: the database cannot write there (a full
// disk ends it, and it is started again once it can write), so sending
// the request again, as metadata_unavailable says, does not help until
// space is freed. Any other error, and an external database's, is left
// as it is.
func (m *Main) explainError(ctx context.Context, err error) error {
	if m.Meta == nil || !(errors.Is(err, engine.ErrMetadataUnavailable) || errors.Is(err, store.ErrUnavailable)) {
		return err
	}
	full := m.Engine.CheckDiskReserve(ctx, 0, "the request needs sindri's metadata database, which cannot write to data_path's filesystem now; the request is")
	if !errors.Is(full, engine.ErrNoDiskSpace) {
		return err
	}
	api.LoggerFrom(ctx).Warn("sindrid: the metadata database is out of reach with its disk under the reserve; answering no_disk_space",
		"err", err.Error())
	return full
}

// openStore opens the metadata store, migrates it and takes the secrets
// lock and key (see openSecrets). While the store is unavailable (not up
// yet, or its leader changing) it waits and tries again, with backoff up
// to 10 s, logging each attempt, until ctx ends; any other error is
// returned at once.
func (m *Main) openStore(ctx context.Context, databaseURL string) (applied []string, err error) {
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		applied, err = m.openStoreOnce(ctx, databaseURL)
		if err == nil || !errors.Is(err, store.ErrUnavailable) {
			return applied, err
		}
		m.logger.Warn("sindrid: the metadata store is unavailable; trying again", "attempt", attempt,
			"retry_in", wait.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stopped while waiting for the metadata store: %w", err)
		case <-time.After(wait):
		}
		wait = min(wait*2, 10*time.Second)
	}
}

func (m *Main) openStoreOnce(ctx context.Context, databaseURL string) (applied []string, err error) {
	st, err := store.Open(ctx, databaseURL)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if applied, err = st.Migrate(ctx); err != nil {
		return nil, err
	}
	if f := m.Config.Fleet; f.Enabled() {
		// Before the secrets: a host that may not join must not seal
		// anything with its key.
		if err := fleet.CheckJoin(ctx, st, f.Name, f.PeerURL, f.DownTimeout); err != nil {
			return nil, fmt.Errorf("joining the fleet as %q: %w", f.Name, err)
		}
	}
	lock, err := openSecrets(ctx, st, m.Config.SecretsKeyFilePath(), m.logger)
	if err != nil {
		return nil, err
	}
	m.Store, m.secretsLock = st, lock
	return applied, nil
}

// joinFleet makes this host a member of the fleet: the store makes
// instances as this host's, and the host is registered in the hosts table
// (waiting while the metadata store is unavailable). Another live host
// of the same name stops the start.
func (m *Main) joinFleet(ctx context.Context, driver storage.Driver) error {
	cfg := m.Config
	reserve := engineLimits(cfg.Limits).DiskReserve
	secret, err := cfg.Fleet.ReadSecret()
	if err != nil {
		return fmt.Errorf("fleet.secret_file %q %w", cfg.Fleet.SecretFile, err)
	}
	roots, err := cfg.Fleet.PeerRoots()
	if err != nil {
		return fmt.Errorf("fleet.peer_ca_file %q %w", cfg.Fleet.PeerCAFile, err)
	}
	m.peerAuth = fleet.NewPeerAuth(cfg.Fleet.Name, secret)
	m.peerClient = fleet.NewClient(m.peerAuth, roots)
	m.Store.SetFleetHost(cfg.Fleet.Name)
	m.fleet = fleet.New(fleet.Options{
		Store: m.Store, Capacity: driver.Capacity, Reserve: reserve.Of,
		Name: cfg.Fleet.Name, PeerURL: cfg.Fleet.PeerURL, PublicHostname: cfg.PublicHostname,
		StorageDriver: driver.Name(), MaxInstances: cfg.Fleet.MaxInstances,
		HeartbeatInterval: cfg.Fleet.HeartbeatInterval, DownTimeout: cfg.Fleet.DownTimeout, Logger: m.logger,
	})
	if _, err := m.fleet.Register(ctx); err != nil {
		return fmt.Errorf("joining the fleet as %q: %w", cfg.Fleet.Name, err)
	}
	return nil
}

// fleetRouting is what routes requests between the fleet's hosts: this
// host's proof under the fleet secret, and the client that reaches the
// peers' peer_url, trusting fleet.peer_ca_file's certificates (or the
// system's roots without it).
func (m *Main) fleetRouting() (*api.Fleet, error) {
	f := m.Config.Fleet
	secret, err := f.ReadSecret()
	if err != nil {
		return nil, fmt.Errorf("fleet.secret_file %q %w", f.SecretFile, err)
	}
	roots, err := f.PeerRoots()
	if err != nil {
		return nil, fmt.Errorf("fleet.peer_ca_file %q %w", f.PeerCAFile, err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// Peers talk directly: a proxy from the environment (for OAuth's
	// egress) would carry the clients' tokens and the peer proofs.
	transport.Proxy = nil
	transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	transport.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	st := m.Store
	return &api.Fleet{
		Self: f.Name, Auth: fleet.NewPeerAuth(f.Name, secret), Transport: transport,
		Hosts:      func(ctx context.Context) ([]store.Host, error) { return st.ListHosts(ctx, f.DownTimeout) },
		ImageHosts: st.ImageReadyHosts,
		Logger:     m.logger,
	}, nil
}

// engineLimits is the [limits] section in the engine's terms.
func engineLimits(l config.LimitsConfig) engine.Limits {
	amount := func(a config.SizeOrPercent) engine.Amount {
		return engine.Amount{Bytes: a.Bytes.Int64(), Percent: a.Percent}
	}
	return engine.Limits{
		InstancesPerUser: l.InstancesPerUser, ProtectedInstancesPerUser: l.ProtectedInstancesPerUser,
		BranchesPerUser: l.BranchesPerUser, UploadUserBranches: l.UploadUserBranches,
		RunningBackupsPerUser: l.RunningBackupsPerUser, RunningBackups: l.RunningBackups,
		BackupsTotal: amount(l.BackupsTotalBytes), DiskReserve: amount(l.DiskReserve),
		UploadUserInstances: l.UploadUserInstances, UploadUserProtectedInstances: l.UploadUserProtectedInstances,
		UploadUserRunningBackups: l.UploadUserRunningBackups,
	}
}

// setUploadAccount looks up uploads.account and lets the engine give it
// the upload directories of pending images; without the account, scp
// uploads are off (PUT /images/{id}/upload still works).
func (m *Main) setUploadAccount() {
	name := m.Config.Uploads.Account
	account, err := osuser.Lookup(name)
	if errors.Is(err, osuser.ErrRoot) {
		m.logger.Warn("sindrid: unusable upload account: uploads by scp are off", "uploads.account", name, "err", err)
		return
	}
	if err != nil {
		m.logger.Warn("sindrid: no upload account: uploads by scp are off (see packaging/setup-upload-account)",
			"uploads.account", name, "err", err)
		return
	}
	warning, err := m.Engine.SetUploadAccount(account)
	if err != nil {
		m.logger.Warn("sindrid: uploads by scp are off", "uploads.account", name, "err", err)
		return
	}
	if warning != "" {
		m.logger.Warn("sindrid: "+warning, "uploads.account", name)
	}
	m.logger.Info("sindrid: uploads by scp on", "uploads.account", name, "uploads_dir", m.Config.UploadsDir())
}

// listenTLS serves HTTPS on listen_address with the configured
// certificate or, without one, a self-signed certificate made once under
// data_path/tls whose fingerprint is logged. In development, no
// certificate means no HTTPS listener.
func (m *Main) listenTLS(handler http.Handler) error {
	cfg := m.Config
	var cert tls.Certificate
	var err error
	switch {
	case cfg.HTTP.TLSCertificate != "":
		cert, err = servercert.Load(cfg.HTTP.TLSCertificate, cfg.HTTP.TLSPrivateKey)
	case cfg.Environment == "development":
		m.logger.Info("sindrid: no TLS certificate in development: only http.insecure_listen_address serves")
		return nil
	default:
		cert, err = servercert.LoadOrCreate(filepath.Join(cfg.DataPath, "tls"), []string{cfg.PublicHostname, "localhost", "127.0.0.1"})
		if err == nil {
			m.logger.Warn("sindrid: serving HTTPS with a self-signed certificate; set http.tls_certificate for a real one",
				"sha256_fingerprint", servercert.Fingerprint(cert))
		}
	}
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.HTTP.ListenAddress)
	if err != nil {
		return fmt.Errorf("listening on http.listen_address %s: %w", cfg.HTTP.ListenAddress, err)
	}
	srv := api.NewHTTPServer(handler, api.Options{Logger: m.logger})
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	m.serve(srv, tls.NewListener(ln, srv.TLSConfig), "https")
	return nil
}

func (m *Main) serve(srv *http.Server, ln net.Listener, scheme string) {
	m.servers = append(m.servers, srv)
	m.logger.Info("sindrid: listening", "scheme", scheme, "address", ln.Addr().String())
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.logger.Error("sindrid: server", "scheme", scheme, "err", err)
		}
	}()
}

// Close stops serving and supervising, closes the store and stops the
// embedded metadata Postgres. Instance postmasters keep running: the next
// start adopts them.
func (m *Main) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, srv := range m.servers {
		errs = append(errs, srv.Shutdown(ctx))
	}
	if m.stop != nil {
		m.stop()
		<-m.done
		if m.fleetDone != nil {
			<-m.fleetDone
		}
	}
	if m.secretsLock != nil {
		m.secretsLock.Release()
	}
	if m.Store != nil {
		m.Store.Close()
	}
	if m.Meta != nil {
		errs = append(errs, m.Meta.Stop(ctx))
	}
	return errors.Join(errs...)
}
