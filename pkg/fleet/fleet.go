// Package fleet makes a sindrid host one of several that share a metadata
// database: it registers the host in the store's hosts table and keeps
// its row fresh with a heartbeat (free disk, instances, memory), from
// which every host derives which hosts are down. Without [fleet] in the
// configuration, nothing here runs.
package fleet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// Options describe this host.
type Options struct {
	Store *store.Store
	// Capacity reads the storage filesystem's total and free bytes.
	Capacity func(ctx context.Context) (storage.Capacity, error)
	// Reserve is the disk reserve in bytes on a filesystem of total
	// bytes (limits.disk_reserve).
	Reserve func(total int64) int64

	Name, PeerURL, PublicHostname, StorageDriver string
	MaxInstances                                 int
	HeartbeatInterval, DownTimeout               time.Duration
	Logger                                       *slog.Logger

	// MemInfo is the file the memory figures are read from (default
	// /proc/meminfo).
	MemInfo string
}

// Member is this host as a member of the fleet.
type Member struct {
	opts Options
	// latest are the last figures read, which Run's beats send.
	latest atomic.Pointer[figures]
}

// New returns the member; nothing is recorded until Beat or Run.
func New(opts Options) *Member {
	if opts.MemInfo == "" {
		opts.MemInfo = "/proc/meminfo"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Member{opts: opts}
}

// Beat records one heartbeat: the host's figures now, and the time. It
// registers the host the first time. store.ErrConflict if another live
// host has this name.
func (m *Member) Beat(ctx context.Context) (store.Host, error) {
	f, err := m.readFigures(ctx)
	if err != nil {
		return store.Host{}, err
	}
	m.latest.Store(&f)
	return m.record(ctx, f)
}

// figures are what a heartbeat tells the others about this host besides
// that it is alive.
type figures struct {
	capacity storage.Capacity
	memory   *memInfo // nil when /proc/meminfo could not be read
}

func (m *Member) readFigures(ctx context.Context) (figures, error) {
	c, err := m.opts.Capacity(ctx)
	if err != nil {
		return figures{}, fmt.Errorf("fleet: heartbeat: storage capacity: %w", err)
	}
	f := figures{capacity: c}
	if mem, err := readMemInfo(m.opts.MemInfo); err != nil {
		m.opts.Logger.Warn("fleet: heartbeat without memory figures", "err", err)
	} else {
		f.memory = &mem
	}
	return f, nil
}

// record writes a heartbeat with the figures f.
func (m *Member) record(ctx context.Context, f figures) (store.Host, error) {
	o := m.opts
	hb := store.Heartbeat{
		Name: o.Name, PeerURL: o.PeerURL, PublicHostname: o.PublicHostname, StorageDriver: o.StorageDriver,
		TotalBytes: f.capacity.TotalBytes, FreeBytes: f.capacity.FreeBytes, MaxInstances: o.MaxInstances,
	}
	if o.Reserve != nil {
		hb.ReserveBytes = o.Reserve(f.capacity.TotalBytes)
	}
	if f.memory != nil {
		hb.MemoryTotalBytes, hb.MemoryAvailableBytes = f.memory.total, f.memory.available
	}
	h, err := o.Store.RecordHeartbeat(ctx, hb, o.DownTimeout)
	if err != nil {
		return h, fmt.Errorf("fleet: heartbeat of host %q: %w", o.Name, err)
	}
	return h, nil
}

// Register records the first heartbeat, waiting while the store is
// unavailable (with backoff up to the heartbeat interval) until ctx ends.
// Another live host of this name is an error: two hosts were given one
// name.
func (m *Member) Register(ctx context.Context) (store.Host, error) {
	wait := 500 * time.Millisecond
	for {
		err := m.checkJoin(ctx)
		var h store.Host
		if err == nil {
			h, err = m.Beat(ctx)
		}
		if err == nil {
			// The first host of the fleet: what a single host made
			// before the fleet is its own.
			var instances, images int64
			instances, images, err = m.opts.Store.AdoptSingleHostRecords(ctx, m.opts.Name)
			if err == nil {
				m.opts.Logger.Info("fleet: host registered", "host", h.Name, "peer_url", h.PeerURL, "state", h.State,
					"adopted_instances", instances, "adopted_images", images)
				return h, nil
			}
		}
		if errors.Is(err, store.ErrConflict) {
			return h, fmt.Errorf("%w: give each host its own fleet.name, or stop the other", err)
		}
		if !errors.Is(err, store.ErrUnavailable) {
			return h, err
		}
		m.opts.Logger.Warn("fleet: metadata store unavailable; registering again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return h, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, m.opts.HeartbeatInterval)
	}
}

func (m *Member) checkJoin(ctx context.Context) error {
	return CheckJoin(ctx, m.opts.Store, m.opts.Name, m.opts.PeerURL, m.opts.DownTimeout)
}

// CheckJoin is store.ErrConflict when a live host of that name has
// another peer URL: two hosts were given one name. Other hosts, alive or
// down, are no obstacle: each host's engine acts on its own instances and
// image copies only. sindrid checks it before it touches the store's
// secrets, then again as it registers.
func CheckJoin(ctx context.Context, st *store.Store, name, peerURL string, downTimeout time.Duration) error {
	h, err := st.GetHost(ctx, name, downTimeout)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("fleet: read host %q: %w", name, err)
	case h.PeerURL != peerURL && h.State != store.HostDown:
		return fmt.Errorf("fleet: host %q is alive at %s: %w: give each host its own fleet.name, or stop the other", h.Name, h.PeerURL, store.ErrConflict)
	}
	return nil
}

// Run beats every heartbeat interval until ctx ends. A failed beat is
// logged and the next one tried at the next tick: the host is down for
// the others only once its beats have failed for the down timeout.
//
// The figures are read beside the beats, each interval, and a beat sends
// the latest: reading them can be slow on a busy host (a `zfs list`
// waits behind the pool's clones), and it must delay the figures, never
// the beat that says the host is alive. For the same reason a beat may
// take up to the down timeout to be written, not just an interval.
func (m *Member) Run(ctx context.Context) {
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		m.refreshFigures(ctx)
	}()
	defer func() { <-refreshed }()

	t := time.NewTicker(m.opts.HeartbeatInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f := m.latest.Load()
		if f == nil { // not registered, and no figures read yet
			continue
		}
		beatCtx, cancel := context.WithTimeout(ctx, max(m.opts.DownTimeout, m.opts.HeartbeatInterval))
		_, err := m.record(beatCtx, *f)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			m.opts.Logger.Warn("fleet: heartbeat failed", "host", m.opts.Name, "err", err)
			failing = true
		case err == nil && failing:
			m.opts.Logger.Info("fleet: heartbeat recorded again", "host", m.opts.Name)
			failing = false
		}
	}
}

// refreshFigures reads the figures every heartbeat interval until ctx
// ends, and at once only if no beat has read them yet.
func (m *Member) refreshFigures(ctx context.Context) {
	t := time.NewTicker(m.opts.HeartbeatInterval)
	defer t.Stop()
	if m.latest.Load() == nil {
		m.refreshFiguresOnce(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.refreshFiguresOnce(ctx)
	}
}

// refreshFiguresOnce reads the figures; a failed read leaves the previous
// ones in place.
func (m *Member) refreshFiguresOnce(ctx context.Context) {
	if f, err := m.readFigures(ctx); err == nil {
		m.latest.Store(&f)
	} else if ctx.Err() == nil {
		m.opts.Logger.Warn("fleet: heartbeat figures not read; the last ones are sent", "host", m.opts.Name, "err", err)
	}
}

type memInfo struct{ total, available int64 }

// readMemInfo reads MemTotal and MemAvailable from a /proc/meminfo file.
func readMemInfo(path string) (memInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return memInfo{}, err
	}
	var mi memInfo
	var seen int
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 2 {
			continue
		}
		var dst *int64
		switch string(fields[0]) {
		case "MemTotal:":
			dst = &mi.total
		case "MemAvailable:":
			dst = &mi.available
		default:
			continue
		}
		n, err := strconv.ParseInt(string(fields[1]), 10, 64)
		if err != nil || n < 0 {
			return memInfo{}, fmt.Errorf("%s: bad %s", path, fields[0])
		}
		if len(fields) > 2 && string(fields[2]) == "kB" {
			n *= 1024
		}
		*dst = n
		seen++
	}
	if seen != 2 {
		return memInfo{}, fmt.Errorf("%s: no MemTotal and MemAvailable", path)
	}
	return mi, nil
}
