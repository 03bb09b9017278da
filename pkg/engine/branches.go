package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// A branch is an image of an instance's data as it is now, made without
// stopping the instance: CreateImage with InstanceID snapshots the
// instance's volume (after flushing its WAL, under its lock, as a backup
// does) into BranchVolume before it returns; finalising copies the
// snapshot into the upload volume (reflinks where the filesystem has
// them), destroys the snapshot, and prepares the copy like any upload: a
// private start that recovers it, the grants, a clean shutdown, the
// freeze. The branch belongs to the instance's owner: only they and the
// upload user see it.

// BranchVolume names the snapshot of an instance a branch is copied from
// while it is finalised.
func BranchVolume(id int64) string { return "branch-" + strconv.FormatInt(id, 10) }

// CopyTimeout bounds the copy of a branch's snapshot.
const CopyTimeout = 2 * time.Hour

// createBranch records image of instance req.InstanceID and snapshots
// the instance; the caller finalises it.
func (e *Engine) createBranch(ctx context.Context, req ImageRequest) (store.Image, error) {
	if req.SourceURL != "" || req.BackupID != 0 {
		return store.Image{}, fmt.Errorf("%w: give one of instance_id, source_url and backup_id", ErrInvalid)
	}
	if req.AnonymisationScript != "" {
		return store.Image{}, fmt.Errorf("%w: a branch of an instance takes no anonymisation_script: the script runs as superuser, and the instance's users could have planted triggers, functions or operators that it would fire. Branch without it (the branch is then not anonymised)", ErrInvalid)
	}
	if err := e.CheckDiskReserve(ctx, 0, "a branch of an instance"); err != nil {
		return store.Image{}, err
	}
	source, _, unlock, err := e.lockBackupSource(ctx, BackupRequest{InstanceID: req.InstanceID})
	if err != nil {
		return store.Image{}, err
	}
	defer unlock()
	inst, err := e.GetInstance(ctx, req.InstanceID)
	if err != nil {
		return store.Image{}, err
	}
	if req.BackedUpAt.IsZero() {
		req.BackedUpAt = e.now()
	}
	// The owner's branches are counted in the insert's transaction: a
	// refusal leaves nothing behind (no row, no snapshot), and concurrent
	// branches cannot pass the limit together.
	img, err := e.opts.Store.CreateImage(ctx, store.ImageInput{
		Name: req.Name, BackedUpAt: req.BackedUpAt, UserWritten: true, Owner: inst.Owner, FromInstanceID: inst.ID, FromSnapshot: true,
		BranchQuota: e.branchQuota(inst.Owner),
	})
	if err != nil {
		err = e.quotaRefusal(ctx, err)
		if errors.Is(err, ErrQuotaExceeded) {
			e.auditFailure(ctx, "create_image", "instance", inst.ID, err)
		}
		return store.Image{}, err
	}
	unlockImage := e.imageLocks.Lock(img.ID)
	defer unlockImage()
	if _, err := e.opts.Storage.Snapshot(ctx, source, BranchVolume(img.ID)); err != nil {
		msg := fmt.Sprintf("snapshotting instance %d: %v", inst.ID, err)
		return store.Image{}, errors.Join(fmt.Errorf("branch of instance %d: %s", inst.ID, msg),
			e.opts.Store.SetImageStatus(ctx, img.ID, store.ImageFailed, msg))
	}
	if err := os.MkdirAll(e.uploadDir(img.ID), 0o750); err != nil {
		return store.Image{}, err
	}
	e.log.Info("engine: instance snapshotted for a branch", "image_id", img.ID, "instance_id", inst.ID)
	e.audit(ctx, "create_image", "image", img.ID, "ok", fmt.Sprintf("branch of instance %d", inst.ID))
	return img, nil
}

// copySnapshot fills the upload volume at dir with the snapshot the image
// was recorded with (of an instance, or of a source's standby), then
// destroys the snapshot (which, where snapshots pin their source, holds
// the instance's or the standby's volume).
func (e *Engine) copySnapshot(ctx context.Context, img store.Image, dir string) error {
	of := fmt.Sprintf("instance %d", img.FromInstanceID)
	if img.FromInstanceID == 0 {
		of = fmt.Sprintf("source %d's standby", img.SourceID)
	}
	snap, err := e.opts.Storage.Get(ctx, BranchVolume(img.ID))
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("the snapshot of %s that this image is made of is gone (an earlier try used it up): make the image again", of)
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, CopyTimeout)
	defer cancel()
	started := time.Now()
	if err := postgres.CopyDataDir(ctx, snap.Path, dir); err != nil {
		return fmt.Errorf("copying the snapshot of %s: %w", of, err)
	}
	e.log.Info("engine: snapshot copied", "image_id", img.ID, "of", of, "duration_ms", time.Since(started).Milliseconds())
	e.destroyBranchSnapshot(ctx, img.ID)
	return nil
}

// destroyBranchSnapshot removes what a branch's snapshot left, if any.
func (e *Engine) destroyBranchSnapshot(ctx context.Context, id int64) {
	if err := e.opts.Storage.Destroy(context.WithoutCancel(ctx), BranchVolume(id)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		e.log.Error("engine: destroying a branch's snapshot", "image_id", id, "err", err)
	}
}

// seesImage tells whether a may see img: a branch is its owner's and the
// upload user's, any other image everybody's.
func (a Actor) seesImage(img store.Image) bool {
	return img.Owner == "" || a.owns(img.Owner)
}

// mayChangeImage: the upload user changes every image, a branch's owner
// finalises and destroys their branch.
func (a Actor) mayChangeImage(img store.Image) error {
	if img.Owner != "" && a.owns(img.Owner) {
		return nil
	}
	return a.mayChangeImages()
}

// branchPins returns the branch of instance id whose snapshot still holds
// the instance's volume, where snapshots pin their source
// (storage.Capabilities.SnapshotPinsSource, as on ZFS): until the branch
// is copied (or destroyed) the volume cannot be destroyed, so a reset
// would stop the instance and then fail. 0 when there is none.
func (e *Engine) branchPins(ctx context.Context, id int64) (int64, error) {
	if !e.opts.Storage.Capabilities().SnapshotPinsSource {
		return 0, nil
	}
	images, err := e.opts.Store.ListImages(ctx)
	if err != nil {
		return 0, err
	}
	for _, img := range images {
		if img.FromInstanceID != id {
			continue
		}
		if _, err := e.opts.Storage.Get(ctx, BranchVolume(img.ID)); err == nil {
			return img.ID, nil
		} else if !errors.Is(err, storage.ErrNotFound) {
			return 0, err
		}
	}
	return 0, nil
}
