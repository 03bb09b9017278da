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
type Member struct{ opts Options }

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
	o := m.opts
	c, err := o.Capacity(ctx)
	if err != nil {
		return store.Host{}, fmt.Errorf("fleet: heartbeat: storage capacity: %w", err)
	}
	hb := store.Heartbeat{
		Name: o.Name, PeerURL: o.PeerURL, PublicHostname: o.PublicHostname, StorageDriver: o.StorageDriver,
		TotalBytes: c.TotalBytes, FreeBytes: c.FreeBytes, MaxInstances: o.MaxInstances,
	}
	if o.Reserve != nil {
		hb.ReserveBytes = o.Reserve(c.TotalBytes)
	}
	if mem, err := readMemInfo(o.MemInfo); err != nil {
		o.Logger.Warn("fleet: heartbeat without memory figures", "err", err)
	} else {
		hb.MemoryTotalBytes, hb.MemoryAvailableBytes = mem.total, mem.available
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
// logged and the next one tried on time: the host is down for the others
// only once its beats have failed for the down timeout.
func (m *Member) Run(ctx context.Context) {
	t := time.NewTicker(m.opts.HeartbeatInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		beatCtx, cancel := context.WithTimeout(ctx, m.opts.HeartbeatInterval)
		_, err := m.Beat(beatCtx)
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
