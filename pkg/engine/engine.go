package engine

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sindri-db/sindri/pkg/keyedmutex"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// Options configure an Engine.
type Options struct {
	Store   *store.Store
	Storage storage.Driver
	// Owner is the OS user postmasters run as.
	Owner postgres.OSUser
	// BinPattern finds binaries by major version: /usr/lib/postgresql/{version}/bin.
	BinPattern string
	// MinPort and MaxPort bound instance ports: [MinPort, MaxPort).
	MinPort, MaxPort int
	// PublicHostname goes into the server certificates and URLs.
	PublicHostname string
	SharedBuffers  string
	// AllowSuperuser makes the client roles superusers (off by default).
	AllowSuperuser bool
	// UploadsDir holds each image's upload directory (data_path/image_uploads).
	UploadsDir string
	// BackupsDir holds the backups' archives (data_path/backups).
	BackupsDir string
	// RunDir holds each instance's private socket directory; a short path
	// such as /run/sindri, since a socket's path has at most 107 bytes.
	RunDir string
	Logger *slog.Logger

	// OrphanGrace is how long a volume that no instance references stays
	// before reconcile removes it.
	OrphanGrace time.Duration
	// SupervisePeriod is how often the supervisor checks postmasters:
	// at each tick, those whose postmaster ended (it watches each one's
	// end) and the next SuperviseBatch of the others (default 8), in turn.
	SupervisePeriod time.Duration
	SuperviseBatch  int
	// MaxCrashes within CrashWindow mark an instance failed.
	MaxCrashes  int
	CrashWindow time.Duration
	// A live postmaster is also looked at every ProbeEvery, or less often
	// on a host of more than ProbeEvery / SupervisePeriod × SuperviseBatch
	// instances, and asked for a connection when its activity leaves a
	// doubt that it is awake (see hung; ProbesPerTick, default 2, bounds
	// the asks a tick makes); after MaxUnanswered attempts in a row with
	// no answer within ProbeTimeout it is killed and restarted like a
	// dead one.
	ProbeEvery, ProbeTimeout time.Duration
	ProbesPerTick            int
	MaxUnanswered            int
	// StartTimeout bounds a postmaster's start.
	StartTimeout time.Duration

	// DefaultTTL is an instance's lifetime when its creator names none (0:
	// no expiry); MaxTTL caps what a creator may ask for (0: no cap).
	DefaultTTL, MaxTTL time.Duration
	// BackupMaxAge is how long a finished backup is kept before the expiry
	// sweep deletes it (0: until deleted).
	BackupMaxAge time.Duration
	// Limits are the [limits]: per-user counts and the disk reserve.
	Limits Limits
	// ReserveCheckEvery is how often work whose writes sindrid does not
	// see (an extraction, a pull) looks at the free space (default 500 ms).
	ReserveCheckEvery time.Duration
	// DiskRetryMax caps the wait between restarts of a postmaster that
	// stopped while the disk was full (default 30 s); such stops do not
	// count towards MaxCrashes.
	DiskRetryMax time.Duration
	// SourceTick is how often due refreshes of sources are started and
	// their retention applied (default DefaultSourceTick).
	SourceTick time.Duration
	// A failed refresh is retried after SourceRetryMin, doubled with each
	// failure in a row up to SourceRetryMax (defaults DefaultRetryMin,
	// DefaultRetryMax).
	SourceRetryMin, SourceRetryMax time.Duration
	// StandbyResyncAfter is how long a replica-mode source's standby may
	// go without streaming before it is made again from a new base backup
	// (default DefaultStandbyResyncAfter).
	StandbyResyncAfter time.Duration
	// DownTimeout is the fleet's down_timeout: in a fleet (the store's
	// FleetHost set), a host whose last heartbeat is older is down: its
	// instances read "unavailable" and nothing is placed on it. Unused on
	// a single host.
	DownTimeout time.Duration
	// Now is the clock (tests set it); nil means time.Now.
	Now func() time.Time
	// ObserveInstanceReady, if set, gets each creation's duration (metrics).
	ObserveInstanceReady func(time.Duration)
	// ObserveCreateStep, if set, gets how long each step of a creation
	// took (metrics): recorded (the quota check and the row), credentials,
	// port, cloned, configured, started, accepting (a login of sindri's
	// own), ready (the client roles set up).
	ObserveCreateStep func(step string, d time.Duration)

	// In a fleet (the store's FleetHost set), Peers has the instances
	// placed on other hosts built there (see placement.go).
	Peers InstancePeers

	// hooks are where the package's tests act on an operation under way
	// (hooks.go); production code cannot set them.
	hooks hooks
}

// Engine runs instances' lifecycles.
type Engine struct {
	opts       Options
	log        *slog.Logger
	locks      keyedmutex.Map[int64] // per instance
	imageLocks keyedmutex.Map[int64] // per image
	// sourceLocks: per source, held for a source's changes of state, not
	// through a refresh's pull (refreshes says which run).
	sourceLocks keyedmutex.Map[int64]
	refreshes   refreshRuns
	standbys    standbyState

	mu         sync.Mutex
	watched    map[int64]*watch
	rounds     rounds               // the supervisor's schedule
	exits      chan struct{}        // a watched postmaster ended
	orphans    map[string]time.Time // volume name → first seen unreferenced
	reconciled atomic.Bool          // the first Reconcile has run
	strayScan  atomic.Int64         // when the sweep last looked for stray operations (Unix ns)
	finalising map[int64]*finaliseRun
	backups    map[int64]*backupRun
	backupMu   sync.RWMutex // see CreateBackup
	cloneTimes cloneTimes
	used       struct { // see usedByInstances
		mu    sync.Mutex
		at    time.Time
		bytes int64
	}
	uploadAcct *UploadAccount // scp uploads; nil when off

	installation  string          // the metadata database's id, once read
	uploading     map[string]bool // temporary files of uploads being received
	storeProblems []string        // what the last reconcile found amiss between store and disk
	// storeMismatch: the last reconcile found that the store does not
	// describe the volumes; nothing is destroyed meanwhile.
	storeMismatch atomic.Bool
	// creationBegun: this process has recorded an instance; the first
	// reconcile must then leave young creations alone.
	creationBegun atomic.Bool
}

// New returns an engine; call Reconcile, then Run.
func New(opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.SupervisePeriod == 0 {
		opts.SupervisePeriod = 500 * time.Millisecond
	}
	if opts.SuperviseBatch == 0 {
		opts.SuperviseBatch = 8
	}
	if opts.ProbesPerTick == 0 {
		opts.ProbesPerTick = 2
	}
	if opts.MaxCrashes == 0 {
		opts.MaxCrashes = 5
	}
	if opts.CrashWindow == 0 {
		opts.CrashWindow = time.Minute
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	if opts.ProbeEvery == 0 {
		opts.ProbeEvery = 10 * time.Second
	}
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = 5 * time.Second
	}
	if opts.MaxUnanswered == 0 {
		opts.MaxUnanswered = 3
	}
	if opts.ReserveCheckEvery == 0 {
		opts.ReserveCheckEvery = 500 * time.Millisecond
	}
	if opts.DiskRetryMax == 0 {
		opts.DiskRetryMax = 30 * time.Second
	}
	return &Engine{
		opts:       opts,
		log:        opts.Logger,
		watched:    map[int64]*watch{},
		exits:      make(chan struct{}, 1),
		orphans:    map[string]time.Time{},
		finalising: map[int64]*finaliseRun{},
		backups:    map[int64]*backupRun{},
		uploading:  map[string]bool{},
	}
}

// Run supervises running instances every SupervisePeriod, destroys expired
// instances every expiryEvery, reconciles every reconcileEvery and
// refreshes the sources (RunSources), until ctx ends. They run side by side: an expiry that waits for a slow
// shutdown, or a reconcile that starts postmasters, must not hold up the
// supervisor's 2-second promise. Instance postmasters keep running after
// it returns.
func (e *Engine) Run(ctx context.Context, reconcileEvery, expiryEvery time.Duration) {
	var wg sync.WaitGroup
	every := func(d time.Duration, f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(d)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					f()
				}
			}
		}()
	}
	// The supervisor also runs at once when a postmaster ends (see
	// watchExit).
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(e.opts.SupervisePeriod)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			case <-e.exits:
			}
			e.supervise(ctx)
		}
	}()
	// Work cut short because Run is ending is not an error to log.
	every(expiryEvery, func() {
		if _, err := e.DestroyExpired(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("engine: destroying expired instances", "err", err)
		}
		if _, err := e.DeleteExpiredBackups(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("engine: deleting expired backups", "err", err)
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.RunSources(ctx)
	}()
	every(reconcileEvery, func() {
		if err := e.Reconcile(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("engine: reconcile", "err", err)
		}
	})
	wg.Wait()
}

func (e *Engine) now() time.Time {
	if e.opts.Now != nil {
		return e.opts.Now()
	}
	return time.Now()
}
