package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/safefile"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// Reconcile makes store, volumes and postmasters agree:
//   - whatever the store says, operation children (pg_basebackup, psql)
//     and private postmasters of finalises that no live sindrid runs are
//     ended, and the socket directories and upload files they leave are
//     swept (see sweep);
//   - a store that does not account for most volumes (see takeCensus) is
//     reported, in Status and as ErrStoreMismatch, and nothing more is
//     done: no volume is touched until they agree;
//   - an instance still "creating" that nobody is creating (the process that
//     was died) is undone, and one "destroying" is finished;
//   - a running instance gets its postmaster started when it is not alive,
//     and adopted (same pid, no restart) when it is;
//   - an instance whose volume is gone is marked failed, and a failed one
//     gives up its port;
//   - a volume whose instance's record went (its tombstone in the store,
//     its own record naming that instance) is removed once it has been
//     seen so for OrphanGrace, its postmaster stopped first; an
//     unreferenced volume that cannot be shown abandoned so is kept, and
//     reported.
func (e *Engine) Reconcile(ctx context.Context) error {
	// Volumes first: a volume seen then has its record in the store by
	// the time the store is read (records are made before volumes, and
	// go after them).
	entries, err := e.opts.Storage.List(ctx)
	if err != nil {
		return err
	}
	// Without certificates and keys: each instance is read again, whole,
	// under its lock. In a fleet, this host's only: another host's
	// instances have no volume here, and are that host's to reconcile.
	instances, err := e.opts.Store.HostInstanceSummaries(ctx)
	if err != nil {
		return err
	}
	images, err := e.opts.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	c, err := e.takeCensus(ctx, entries, instances, images)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.storeProblems = c.problems
	e.mu.Unlock()
	e.storeMismatch.Store(c.mismatch)
	sweepErr := e.sweep(ctx, entries)
	if c.mismatch {
		e.log.Error("engine: the metadata store does not match the volumes; nothing is removed or started until they agree",
			"accounted_for", c.accounted, "unaccounted_for", len(c.unaccounted), "volumes", strings.Join(c.unaccounted, ","))
		return errors.Join(fmt.Errorf("%w: %s", ErrStoreMismatch, c.problems[0]), sweepErr)
	}

	volumes := map[string]storage.Entry{}
	for _, v := range entries {
		volumes[v.Name] = v
	}
	errs := []error{sweepErr}
	first := e.reconciled.CompareAndSwap(false, true)
	// The first reconcile undoes every creation, unless this process has
	// begun some meanwhile (a first reconcile held back by a mismatch).
	undoAll := first && !e.creationBegun.Load()
	for _, listed := range instances {
		unlock, ok := e.locks.TryLock(listed.ID)
		if !ok {
			continue // an operation is under way on it
		}
		if e.steady(ctx, listed, volumes) {
			unlock()
			continue
		}
		// Read again under the lock: an operation may have finished since
		// the list was made.
		inst, err := e.opts.Store.GetInstance(ctx, listed.ID)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			errs = append(errs, err)
		case inst.Status == store.InstanceCreating && !undoAll && e.now().Sub(inst.CreatedAt) < e.opts.StartTimeout+time.Minute:
			// Possibly being created by this process, between its record
			// and its lock; the first reconcile after a start undoes every
			// creation, later ones only those older than any could take.
		default:
			if err := e.reconcileOne(ctx, inst, volumes); err != nil {
				errs = append(errs, fmt.Errorf("instance %d: %w", inst.ID, err))
			}
		}
		unlock()
	}
	if first {
		errs = append(errs, e.reconcileImages(ctx, volumes))
	}
	errs = append(errs, e.finishImageDestroys(ctx), e.publishReserve(ctx))
	e.removeOrphans(ctx, entries, c.abandoned)
	errs = append(errs, e.reconcileBackups(ctx, entries))
	errs = append(errs, e.sweepInstanceSocketDirs(ctx, volumes))
	errs = append(errs, e.keepIDsAhead(ctx, c))
	if _, err := e.opts.Store.PruneTombstones(ctx, e.now().Add(-tombstoneKeep), c.instanceVolumeIDs); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tombstoneKeep is how long an instance's tombstone outlives its volume.
const tombstoneKeep = 7 * 24 * time.Hour

// finishImageDestroys finishes the destroys of images marked destroying
// that no operation is working on: a destroy cut short by a crash, or one
// that failed part way.
func (e *Engine) finishImageDestroys(ctx context.Context) error {
	images, err := e.opts.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, img := range images {
		if img.Status != store.ImageDestroying {
			continue
		}
		unlock, ok := e.imageLocks.TryLock(img.ID)
		if !ok {
			continue
		}
		// Read again under the lock: a destroy may have ended meanwhile,
		// or given the image back after a refusal.
		if now, err := e.opts.Store.GetImage(ctx, img.ID); err != nil || now.Status != store.ImageDestroying {
			unlock()
			continue
		}
		e.log.Warn("engine: finishing the destroy of an image", "image_id", img.ID)
		if err := e.finishImageDestroy(WithActor(ctx, "reconcile"), img.ID); err != nil {
			errs = append(errs, fmt.Errorf("image %d: %w", img.ID, err))
		} else {
			e.audit(WithActor(ctx, "reconcile"), "destroy_image", "image", img.ID, "ok", "finished after a cut-short destroy")
		}
		unlock()
	}
	return errors.Join(errs...)
}

// reconcileImages marks failed the images a crash left finalising (not
// finalised by this process, which holds their lock), stopping the private
// postmaster it may have left and removing its volumes, so that done can
// be tried again; marks failed a ready image whose volume is gone; removes
// what is left of a ready image's upload; and opens the upload directories
// of pending and failed images to the upload account.
func (e *Engine) reconcileImages(ctx context.Context, volumes map[string]storage.Entry) error {
	images, err := e.opts.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	// In a fleet, an image is this host's to reconcile when it holds a
	// copy of it: one made here, or received.
	var copies map[int64]store.ImageCopyStatus
	if host := e.opts.Store.FleetHost(); host != "" {
		if copies, err = e.opts.Store.HostImageCopies(ctx, host); err != nil {
			return err
		}
	}
	var errs []error
	for _, img := range images {
		if _, held := copies[img.ID]; copies != nil && !held {
			continue
		}
		unlock, ok := e.imageLocks.TryLock(img.ID)
		if !ok {
			continue // a finalise, destroy or backup of this process holds it
		}
		errs = append(errs, e.reconcileImage(ctx, img, volumes))
		unlock()
	}
	return errors.Join(errs...)
}

// gone tells whether storage has no entry of that name now.
func (e *Engine) gone(ctx context.Context, name string) bool {
	_, err := e.opts.Storage.Get(ctx, name)
	return errors.Is(err, storage.ErrNotFound)
}

func (e *Engine) reconcileImage(ctx context.Context, img store.Image, volumes map[string]storage.Entry) error {
	e.mu.Lock()
	run := e.finalising[img.ID]
	e.mu.Unlock()
	if run != nil {
		return nil // this process's finalise, about to take the lock
	}
	img, err := e.opts.Store.GetImage(ctx, img.ID) // again, under the lock
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, ok := volumes[ImageVolume(img.ID)]; img.Status == store.ImageReady && !ok && e.gone(ctx, ImageVolume(img.ID)) {
		// A destroy cut short after the volume went, or a lost disk.
		if host := e.opts.Store.FleetHost(); host != "" {
			// This host's copy is lost, not the image: the others' stand.
			e.log.Error("engine: this host's copy of a ready image has no volume; marking the copy failed", "image_id", img.ID, "host", host)
			return e.opts.Store.SetImageCopy(ctx, img.ID, host, store.CopyFailed,
				"its frozen data is gone from this host (a destroy cut short, or a lost disk)")
		}
		e.log.Error("engine: a ready image has no volume; marking it failed", "image_id", img.ID)
		return e.opts.Store.SetImageStatus(ctx, img.ID, store.ImageFailed,
			"its frozen data is gone (a destroy cut short?); destroy the image")
	}
	if img.Status == store.ImageReady {
		// A start cut short between the record and the removal, or an
		// image from before uploads were removed.
		return e.removeUpload(img.ID)
	}
	if img.Status == store.ImagePending || img.Status == store.ImageFailed {
		return e.openUploadDir(img.ID) // made before scp uploads were on
	}
	if img.Status != store.ImageFinalising {
		return nil
	}
	e.log.Warn("engine: a finalise was cut short; marking the image failed", "image_id", img.ID)
	if err := e.stopVolume(ctx, UploadVolume(img.ID)); err != nil {
		return err
	}
	e.discardVolumes(ctx, img.ID) // what it half made
	return errors.Join(e.opts.Store.SetImageStatus(ctx, img.ID, store.ImageFailed,
		"finalising was interrupted by a restart of sindrid; POST /images/{id}/done again"),
		e.openUploadDir(img.ID))
}

// steady tells whether instance listed, whose lock the caller holds, is
// already as reconcileOne would leave a running instance, without reading
// its row again: listed running, its volume listed and recording it,
// made, and the supervisor watching for the end of the postmaster the
// listing names, which has not come. An operation that finished since
// the listing (a destroy, a reset, a crash and restart) leaves one of
// these untrue, and the instance is read again and reconciled; on a full
// host the steady ones are nearly all of them, and a reconcile then reads
// no instance's row, pid file or /proc entry.
func (e *Engine) steady(ctx context.Context, listed store.Instance, volumes map[string]storage.Entry) bool {
	if listed.Status != store.InstanceRunning || listed.PID == 0 {
		return false
	}
	// The supervisor watches the end of the listed postmaster, which has
	// not come: no need to read its pid file and /proc.
	e.mu.Lock()
	w := e.watched[listed.ID]
	alive := w != nil && w.exitPID == listed.PID && w.stopExit != nil
	e.mu.Unlock()
	vol, hasVolume := volumes[InstanceVolume(listed.ID)]
	if !alive || !hasVolume {
		return false
	}
	installation, err := e.installationID(ctx)
	if err != nil {
		return false
	}
	rec, ok, err := readVolumeRecord(vol.Path)
	if err != nil || !ok || !rec.Made || !rec.is(installation, recordInstance, listed.ID, listed.CreatedAt) {
		return false
	}
	return true
}

func (e *Engine) reconcileOne(ctx context.Context, inst store.Instance, volumes map[string]storage.Entry) error {
	name := InstanceVolume(inst.ID)
	vol, hasVolume := volumes[name]
	if !hasVolume {
		// Made since the list, perhaps: ask again, under the lock.
		got, err := e.opts.Storage.Get(ctx, name)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		vol, hasVolume = got, err == nil
	}
	var notIts string
	if hasVolume && (inst.Status == store.InstanceFailed || inst.Status == store.InstanceRunning) {
		var err error
		// inst was read under the lock, vol listed or looked up since.
		if notIts, err = e.volumeNotIts(ctx, vol, inst); err != nil {
			return err
		}
	}
	switch inst.Status {
	case store.InstanceCreating:
		if hasVolume {
			if made, err := e.madeAlready(ctx, vol.Path, inst); err != nil {
				return err
			} else if made {
				return fmt.Errorf("it is recorded creating, but its volume %s says its creation finished: the metadata store is older than the volume (a restored dump?); it is left as it is", name)
			}
		}
		e.log.Warn("engine: undoing an instance creation cut short", "instance_id", inst.ID)
		return e.teardown(ctx, inst.ID)
	case store.InstanceDestroying:
		e.log.Warn("engine: finishing an instance destruction cut short", "instance_id", inst.ID)
		return e.teardown(ctx, inst.ID)
	case store.InstanceResetting:
		e.log.Warn("engine: finishing an instance reset cut short", "instance_id", inst.ID)
		if err := e.reclone(ctx, inst); err != nil {
			return errors.Join(err, e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceFailed, "reset failed: "+err.Error()))
		}
		return nil
	case store.InstanceFailed:
		if inst.Port != 0 {
			if hasVolume && notIts == "" {
				if err := postgres.Stop(ctx, vol.Path, 10*time.Second); err != nil {
					return err
				}
			}
			e.log.Info("engine: freeing the port of a failed instance", "instance_id", inst.ID, "port", inst.Port)
			return e.opts.Store.ReleasePort(ctx, inst.ID)
		}
		return nil
	case store.InstanceRunning, store.InstanceStopped: // stopped: for the full disk, to start again
	default:
		return nil
	}
	if !hasVolume {
		e.unwatch(inst.ID)
		e.log.Error("engine: the volume of a running instance is gone", "instance_id", inst.ID)
		return e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceFailed, "its volume "+name+" is gone")
	}
	if notIts != "" {
		e.unwatch(inst.ID)
		e.log.Error("engine: the volume of a running instance is not its own; it is neither started nor stopped",
			"instance_id", inst.ID, "why", notIts)
		return e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceFailed,
			"its volume "+name+" belongs to something else ("+notIts+"): a restored older metadata dump? It is left as it is")
	}
	if st, err := postgres.Status(vol.Path); err == nil && st.Alive {
		// One made before volumes kept records gets its own.
		if err := e.claimInstanceVolume(ctx, vol.Path, inst); err != nil {
			return err
		}
		if st.PID != inst.PID {
			if err := e.opts.Store.SetInstancePID(ctx, inst.ID, st.PID); err != nil {
				return err
			}
		}
		if inst.Status == store.InstanceStopped {
			if err := e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceRunning, ""); err != nil {
				return err
			}
			e.clearDiskStop(inst.ID)
		}
		e.mu.Lock()
		_, known := e.watched[inst.ID]
		e.mu.Unlock()
		if !known {
			e.log.Info("engine: adopted a running instance", "instance_id", inst.ID, "pid", st.PID, "port", inst.Port)
		}
		e.watch(inst.ID)
		return nil
	}
	e.log.Info("engine: starting an instance whose postmaster is not running", "instance_id", inst.ID)
	if err := e.start(ctx, inst, nil); err != nil {
		if full, c := e.diskFull(ctx); full || errors.Is(err, safefile.ErrNoSpace) {
			// Not its fault: the supervisor starts it once space is freed.
			e.log.Error("engine: cannot start an instance with the disk full; waiting for space", "instance_id", inst.ID, "err", err)
			e.watchStoppedForDisk(inst.ID)
			if inst.Status == store.InstanceStopped {
				return nil
			}
			return e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceStopped, e.diskStopMessage(c, vol.Path))
		}
		msg := fmt.Sprintf("starting postgres: %v", err)
		e.unwatch(inst.ID)
		return errors.Join(err, e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceFailed, msg))
	}
	if inst.Status == store.InstanceStopped {
		if err := e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceRunning, ""); err != nil {
			return err
		}
		e.clearDiskStop(inst.ID)
	}
	e.watch(inst.ID)
	return nil
}

// removeOrphans removes the abandoned volumes (see takeCensus) once each
// has been seen so for OrphanGrace, its postmaster stopped first.
func (e *Engine) removeOrphans(ctx context.Context, entries []storage.Entry, abandoned map[string]bool) {
	now := time.Now()
	seen := map[string]bool{}
	for _, v := range entries {
		if !abandoned[v.Name] {
			continue
		}
		seen[v.Name] = true
		e.mu.Lock()
		first, ok := e.orphans[v.Name]
		if !ok {
			first = now
			e.orphans[v.Name] = now
		}
		e.mu.Unlock()
		if now.Sub(first) < e.opts.OrphanGrace {
			continue
		}
		e.log.Warn("engine: removing a volume no instance references", "volume", v.Name, "unreferenced_for", now.Sub(first).String())
		if err := e.stopVolume(ctx, v.Name); err != nil {
			e.log.Error("engine: removing an orphan volume", "volume", v.Name, "err", err)
			continue
		}
		if err := e.opts.Storage.Destroy(ctx, v.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			e.log.Error("engine: removing an orphan volume", "volume", v.Name, "err", err)
			continue
		}
		if id, ok := instanceIDOf(v.Name); ok {
			if err := os.RemoveAll(e.socketDir(id)); err != nil {
				e.log.Error("engine: removing an orphan volume's socket directory", "volume", v.Name, "err", err)
			}
		}
		seen[v.Name] = false
	}
	e.mu.Lock()
	for name := range e.orphans {
		if !seen[name] {
			delete(e.orphans, name)
		}
	}
	e.mu.Unlock()
}
