package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// ExpiryFor turns a requested TTL (0: the default) into an expiry time,
// nil meaning never.
func (e *Engine) ExpiryFor(ttl time.Duration) (*time.Time, error) {
	if ttl < 0 {
		return nil, fmt.Errorf("%w: ttl %s is negative", ErrInvalid, ttl)
	}
	if ttl == 0 {
		ttl = e.opts.DefaultTTL
	}
	if e.opts.MaxTTL > 0 && ttl > e.opts.MaxTTL {
		return nil, fmt.Errorf("%w: ttl %s, maximum %s", ErrTTLTooLong, ttl, e.opts.MaxTTL)
	}
	if ttl == 0 {
		return nil, nil
	}
	at := e.now().Add(ttl).UTC().Truncate(time.Second)
	return &at, nil
}

// UpdateInstance changes an instance's expiry and protection; nil leaves
// either as it is. An expiry beyond now + MaxTTL is refused.
func (e *Engine) UpdateInstance(ctx context.Context, id int64, expiresAt *time.Time, protected *bool) (store.Instance, error) {
	unlock := e.locks.Lock(id)
	defer unlock()
	inst, err := e.GetInstance(ctx, id)
	if err != nil {
		return store.Instance{}, err
	}
	if expiresAt != nil && !expiresAt.IsZero() {
		if expiresAt.Before(e.now()) {
			return store.Instance{}, fmt.Errorf("%w: expires_at %s is in the past", ErrInvalid, expiresAt.UTC().Format(time.RFC3339))
		}
		if e.opts.MaxTTL > 0 && expiresAt.After(e.now().Add(e.opts.MaxTTL)) {
			return store.Instance{}, fmt.Errorf("%w: expires_at %s is more than %s away", ErrTTLTooLong, expiresAt.UTC().Format(time.RFC3339), e.opts.MaxTTL)
		}
	}
	if expiresAt != nil && expiresAt.IsZero() && e.opts.MaxTTL > 0 {
		return store.Instance{}, fmt.Errorf("%w: an instance cannot live forever while the maximum lifetime is %s (protect it instead)", ErrTTLTooLong, e.opts.MaxTTL)
	}
	// A protected instance never expires: the owner's protected ones are
	// counted in the update's transaction.
	if err := e.opts.Store.SetInstanceExpiryWithin(ctx, id, expiresAt, protected, e.instanceQuota(inst.Owner).Protected); err != nil {
		err = e.quotaRefusal(ctx, err)
		if errors.Is(err, ErrQuotaExceeded) {
			e.auditFailure(ctx, "update_instance", "instance", id, err)
		}
		return store.Instance{}, err
	}
	e.audit(ctx, "update_instance", "instance", id, "ok", "")
	return e.GetInstance(ctx, id)
}

// ResetInstance throws away an instance's changes: its volume is cloned
// again from the image and Postgres started on it, with the same id, port
// and credentials. A reset cut short is finished by Reconcile.
func (e *Engine) ResetInstance(ctx context.Context, id int64) (store.Instance, error) {
	unlock := e.locks.Lock(id)
	defer unlock()
	inst, err := e.GetInstance(ctx, id)
	if err != nil {
		return inst, err
	}
	if err := e.onThisHost(inst); err != nil {
		return inst, err
	}
	if inst.Status == store.InstanceCreating || inst.Status == store.InstanceDestroying {
		return inst, fmt.Errorf("%w: instance %d is %s", ErrInvalid, id, inst.Status)
	}
	if e.backupPins(InstanceVolume(id)) {
		err := fmt.Errorf("%w: a backup of instance %d is being written; reset it once the backup is done", ErrBackupRunning, id)
		e.auditFailure(ctx, "reset_instance", "instance", id, err)
		return inst, err
	}
	if branch, err := e.branchPins(ctx, id); err != nil {
		return inst, err
	} else if branch != 0 {
		err := refuse(ErrConflict, "image %d, a branch of instance %d, is still being copied from its snapshot, which holds the instance's volume; reset the instance once the branch is ready (or destroyed)", branch, id)
		e.auditFailure(ctx, "reset_instance", "instance", id, err)
		return inst, err
	}
	if err := e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceResetting, ""); err != nil {
		return inst, err
	}
	if err := e.reclone(ctx, inst); err != nil {
		msg := fmt.Sprintf("reset failed: %v", err)
		e.audit(context.WithoutCancel(ctx), "reset_instance", "instance", id, "failed", msg)
		return inst, errors.Join(err, e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceFailed, msg))
	}
	e.audit(ctx, "reset_instance", "instance", id, "ok", "")
	return e.GetInstance(ctx, id)
}

// reclone replaces the instance's volume with a fresh clone and starts it.
func (e *Engine) reclone(ctx context.Context, inst store.Instance) error {
	e.unwatch(inst.ID)
	name := InstanceVolume(inst.ID)
	if why, err := e.notItsVolume(ctx, inst.ID); err != nil {
		return err
	} else if why != "" {
		return fmt.Errorf("%w: %s; it is kept as it is", ErrNotItsVolume, why)
	}
	if err := e.stopVolume(ctx, name); err != nil {
		return err
	}
	if err := e.opts.Storage.Destroy(ctx, name); errors.Is(err, storage.ErrHasClones) {
		return fmt.Errorf("%w: a backup of instance %d is being written; reset it once the backup is done", ErrBackupRunning, inst.ID)
	} else if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	vol, err := e.opts.Storage.Clone(ctx, ImageVolume(inst.ImageID), name)
	if err != nil {
		return err
	}
	if err := e.takeFreshClone(ctx, vol.Path, inst); err != nil {
		return err
	}
	if inst.Port == 0 { // a failed instance gave its port up
		port, err := e.allocatePort(ctx, inst.ID)
		if err != nil {
			return err
		}
		inst.Port = port
	}
	if err := e.start(ctx, inst, e.createSteps(inst.ID, false)); err != nil {
		return err
	}
	if err := e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceRunning, ""); err != nil {
		return err
	}
	e.watch(inst.ID)
	inst.Status = store.InstanceRunning
	if err := e.recordInstanceVolume(ctx, vol.Path, inst, true); err != nil {
		e.log.Error("engine: recording a reset instance made in its volume", "instance_id", inst.ID, "err", err)
	}
	return nil
}

// DestroyExpired destroys the instances past their expiry that are not
// protected, and returns how many it destroyed.
func (e *Engine) DestroyExpired(ctx context.Context) (int, error) {
	if e.storeMismatch.Load() {
		return 0, fmt.Errorf("%w: no instance is destroyed for its expiry until they agree", ErrStoreMismatch)
	}
	expired, err := e.opts.Store.ExpiredInstances(ctx, e.now())
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, inst := range expired {
		e.log.Info("engine: instance expired", "instance_id", inst.ID, "expires_at", inst.ExpiresAt)
		err := e.DestroyInstance(WithActor(ctx, "expiry"), inst.ID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, fmt.Errorf("instance %d: %w", inst.ID, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
