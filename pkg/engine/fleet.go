package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/sindri-db/sindri/pkg/store"
)

// ErrOtherHost: the instance lives on another host of the fleet, which
// alone acts on its volume and postmaster: the request is that host's.
// It comes with ErrConflict.
var ErrOtherHost = errors.New("the instance lives on another host of the fleet")

// onThisHost refuses, in a fleet, an instance of another host: its volume
// is not here, and destroying or resetting it from here would delete its
// record while its postmaster runs there.
func (e *Engine) onThisHost(inst store.Instance) error {
	if host := e.opts.Store.FleetHost(); host != "" && inst.Host != host {
		return fmt.Errorf("%w: %w: instance %d lives on host %q, not on this host (%s); ask that host", ErrConflict, ErrOtherHost, inst.ID, inst.Host, host)
	}
	return nil
}

// downHosts reads which hosts of the fleet are down: no heartbeat within
// DownTimeout, as the metadata database's clock sees it.
func (e *Engine) downHosts(ctx context.Context) (map[string]bool, error) {
	hosts, err := e.opts.Store.ListHosts(ctx, e.opts.DownTimeout)
	if err != nil {
		return nil, err
	}
	down := map[string]bool{}
	for _, h := range hosts {
		if h.State == store.HostDown {
			down[h.Name] = true
		}
	}
	return down, nil
}

// present makes instances read as the API shows them in a fleet: each
// with its host's public hostname, and "unavailable" while that host is
// down. The hosts are read once, whatever the number of instances; on a
// single host nothing is read and nothing changes.
func (e *Engine) present(ctx context.Context, insts []store.Instance) error {
	if e.opts.Store.FleetHost() == "" {
		return nil
	}
	var hosts []store.Host
	if len(insts) == 1 {
		if insts[0].Host == "" {
			return nil
		}
		h, err := e.opts.Store.GetHost(ctx, insts[0].Host, e.opts.DownTimeout)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err == nil {
			hosts = []store.Host{h}
		}
	} else if len(insts) > 1 {
		var err error
		if hosts, err = e.opts.Store.ListHosts(ctx, e.opts.DownTimeout); err != nil {
			return err
		}
	}
	byName := make(map[string]*store.Host, len(hosts))
	for i := range hosts {
		byName[hosts[i].Name] = &hosts[i]
	}
	for i := range insts {
		h := byName[insts[i].Host]
		if h == nil {
			continue // a single host's record that no host adopted
		}
		insts[i].Hostname = h.PublicHostname
		if h.State == store.HostDown {
			insts[i].Status = store.InstanceUnavailable
		}
	}
	return nil
}
