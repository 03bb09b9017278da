package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sindri-db/sindri/pkg/store"
)

// In a fleet, a creation is placed before it is built: the host asked
// records the instance on the host with the most headroom
// (store.PlaceInstance, one statement for the whole fleet, the owner's
// quota counted in it), and that host builds it. When the chosen host is
// another, the host asked has it built there through Peers (the API's
// peer route POST /fleet/instances/{id}/create) and answers with the
// instance as it was made; when that host fails or cannot be reached,
// the placed row is deleted, so that nothing is left half-made and the
// owner's quota is not held by it.

// InstancePeers builds an instance placed on another host of the fleet.
type InstancePeers interface {
	// CreateOn has instance inst, recorded on host inst.Host, built there,
	// returning once it runs. An error the host answered with is returned
	// as it is (its refusal stands for this request's); a host that
	// cannot be reached, or fails, is ErrHostUnavailable.
	CreateOn(ctx context.Context, inst store.Instance) error
}

func (e *Engine) inFleet() bool { return e.opts.Store.FleetHost() != "" }

// placedElsewhere tells whether inst was placed on another host.
func (e *Engine) placedElsewhere(inst store.Instance) bool {
	return inst.Host != "" && inst.Host != e.opts.Store.FleetHost()
}

// placeInstance records a new instance on the fleet's host with the most
// headroom.
func (e *Engine) placeInstance(ctx context.Context, in store.InstanceInput) (store.Instance, error) {
	inst, err := e.opts.Store.PlaceInstance(ctx, in, e.opts.DownTimeout)
	switch {
	case errors.Is(err, store.ErrNoHost):
		err = refuse(ErrNoHost, "no host of the fleet can take an instance of image %d now: none is active, holds a ready copy of it, "+
			"has free disk above its reserve and room under its fleet.max_instances; try again later", in.ImageID)
		e.auditFailure(ctx, "create_instance", "image", in.ImageID, err)
	case err != nil:
		err = e.quotaRefusal(ctx, err)
		if errors.Is(err, ErrQuotaExceeded) {
			e.auditFailure(ctx, "create_instance", "image", in.ImageID, err)
		}
	default:
		e.log.Info("engine: instance placed", "instance_id", inst.ID, "image_id", inst.ImageID, "host", inst.Host)
	}
	return inst, err
}

// checkPlacedReserve checks this host's disk reserve for an instance
// placed on it, deleting the placed row when the reserve refuses it.
func (e *Engine) checkPlacedReserve(ctx context.Context, inst store.Instance) error {
	err := e.CheckDiskReserve(ctx, 0, "a new instance")
	if err == nil {
		return nil
	}
	e.auditFailure(ctx, "create_instance", "image", inst.ImageID, err)
	if ferr := e.forget(context.WithoutCancel(ctx), inst.ID); ferr != nil {
		e.log.Error("engine: deleting an instance placed on a host whose reserve refused it", "instance_id", inst.ID, "err", ferr)
	}
	return err
}

// createElsewhere has an instance placed on another host built there and
// returns it as recorded once it runs. If the host fails or cannot be
// reached, the placed row is deleted (the host undoes what it began: its
// request is cancelled with this one).
func (e *Engine) createElsewhere(ctx context.Context, inst store.Instance) (store.Instance, error) {
	var err error
	if e.opts.Peers == nil {
		err = fmt.Errorf("%w: this host cannot reach its peers (no peer client)", ErrHostUnavailable)
	} else {
		// Bounded as reconcile bounds a creation: past it, the host's
		// reconcile takes the row for abandoned.
		peerCtx, cancel := context.WithTimeout(ctx, e.opts.StartTimeout+time.Minute)
		err = e.opts.Peers.CreateOn(peerCtx, inst)
		cancel()
	}
	if err != nil {
		e.log.Error("engine: creation on another host failed; deleting the placed instance", "instance_id", inst.ID, "host", inst.Host, "err", err)
		if ferr := e.forget(context.WithoutCancel(ctx), inst.ID); ferr != nil {
			e.log.Error("engine: deleting an instance placed on a host that failed", "instance_id", inst.ID, "err", ferr)
			if errors.Is(ferr, store.ErrUnavailable) {
				e.undoLater(inst.ID, e.forget)
			}
		}
		e.auditFailure(ctx, "create_instance", "instance", inst.ID, err)
		return store.Instance{}, err
	}
	made, err := e.GetInstance(ctx, inst.ID)
	if err != nil {
		return store.Instance{}, err
	}
	return made, nil
}

// CreatePlacedInstance builds instance id, placed on this host by another
// host of the fleet (the peer route), as CreateInstance builds one it
// placed itself. An instance placed elsewhere, or past its creation, is
// ErrConflict: it is built once.
func (e *Engine) CreatePlacedInstance(ctx context.Context, id int64) (store.Instance, error) {
	unlock := e.locks.Lock(id)
	defer unlock()
	inst, err := e.GetInstance(ctx, id)
	if err != nil {
		return store.Instance{}, err
	}
	switch {
	case !e.inFleet() || inst.Host != e.opts.Store.FleetHost():
		return store.Instance{}, fmt.Errorf("%w: instance %d is placed on host %q, not this one", ErrConflict, id, inst.Host)
	case inst.Status != store.InstanceCreating || inst.Port != 0:
		return store.Instance{}, fmt.Errorf("%w: instance %d is already being built (%s)", ErrConflict, id, inst.Status)
	}
	if err := e.checkPlacedReserve(ctx, inst); err != nil {
		return store.Instance{}, err
	}
	return e.createLocked(ctx, inst)
}

// CreatePlaced builds instance id, which another host of the fleet placed
// on this one (CreatePlacedInstance). No actor: the host that placed it
// checked the owner's right and quota; only the fleet's hosts reach it.
//
// Unlike a client's creation, it is cut short (and undone) when the
// request's context ends: the placing host gave up on it, and deletes
// the placed row.
func (s InstanceService) CreatePlaced(ctx context.Context, id int64) (store.Instance, error) {
	placed, err := s.e.opts.Store.GetInstance(ctx, id)
	if err != nil {
		return store.Instance{}, classify(err)
	}
	inst, err := s.e.CreatePlacedInstance(WithActor(ctx, placed.Owner), id)
	if err != nil {
		return store.Instance{}, classify(err)
	}
	return seeInstance(inst), nil
}

// SetPeers sets Options.Peers, for a caller that makes the peers' client
// once the engine exists; call it before the engine serves.
func (e *Engine) SetPeers(p InstancePeers) { e.opts.Peers = p }
