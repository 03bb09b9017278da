package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// watch is the supervisor's record of a running instance.
type watch struct {
	crashes    []time.Time // deaths within the crash window
	restartAt  time.Time   // when a death seen is due for its restart
	path       string      // the data directory, once looked up
	probedAt   time.Time   // the last connection attempt to a live postmaster
	unanswered int         // connection attempts in a row that got no answer
	diskWaits  int         // deaths in a row while the disk was full
	diskStop   bool        // marked stopped for the full disk
	startFull  bool        // the last restart failed for want of space
}

// watchedPath is the data directory of a watched instance, looked up in
// storage once rather than at every tick.
func (e *Engine) watchedPath(ctx context.Context, id int64) (string, error) {
	e.mu.Lock()
	w := e.watched[id]
	path := ""
	if w != nil {
		path = w.path
	}
	e.mu.Unlock()
	if w == nil {
		return "", fmt.Errorf("instance %d is not watched", id)
	}
	if path != "" {
		return path, nil
	}
	vol, err := e.opts.Storage.Get(ctx, InstanceVolume(id))
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	w.path = vol.Path
	e.mu.Unlock()
	return vol.Path, nil
}

func (e *Engine) watch(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.watched[id] == nil {
		e.watched[id] = &watch{}
	}
}

func (e *Engine) unwatch(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.watched, id)
}

// Run supervises running instances every SupervisePeriod, destroys expired
// instances every expiryEvery and reconciles every reconcileEvery, until
// ctx ends. The three run side by side: an expiry that waits for a slow
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
	every(e.opts.SupervisePeriod, func() { e.supervise(ctx) })
	every(expiryEvery, func() {
		if _, err := e.DestroyExpired(ctx); err != nil {
			e.log.Error("engine: destroying expired instances", "err", err)
		}
		if _, err := e.DeleteExpiredBackups(ctx); err != nil {
			e.log.Error("engine: deleting expired backups", "err", err)
		}
	})
	every(reconcileEvery, func() {
		if err := e.Reconcile(ctx); err != nil {
			e.log.Error("engine: reconcile", "err", err)
		}
	})
	wg.Wait()
}

// supervise restarts dead postmasters of running instances, with backoff,
// and marks an instance failed when it crashed MaxCrashes times within
// CrashWindow.
func (e *Engine) supervise(ctx context.Context) {
	e.mu.Lock()
	ids := make([]int64, 0, len(e.watched))
	for id := range e.watched {
		ids = append(ids, id)
	}
	e.mu.Unlock()
	for _, id := range ids {
		unlock, ok := e.locks.TryLock(id)
		if !ok {
			continue // an operation is under way on it
		}
		go func() {
			defer unlock()
			e.superviseOne(ctx, id)
		}()
	}
}

func (e *Engine) superviseOne(ctx context.Context, id int64) {
	dataDir, err := e.watchedPath(ctx, id)
	if err != nil {
		e.log.Error("engine: supervising", "instance_id", id, "err", err)
		return
	}
	if st, err := postgres.Status(dataDir); err == nil && st.Alive {
		if !e.hung(ctx, id) {
			return
		}
		// A process that exists but never answers (stopped, wedged) is
		// as good as dead: kill it and let the restart below count it.
		// The probe took a while: make sure the pid is still this
		// instance's postmaster before killing it.
		if again, err := postgres.Status(dataDir); err != nil || !again.Alive || again.PID != st.PID {
			return
		}
		e.log.Error("engine: postmaster alive but not answering; killing it", "instance_id", id, "pid", st.PID,
			"attempts", e.opts.MaxUnanswered)
		if err := postgres.Kill(ctx, st.PID); err != nil {
			e.log.Error("engine: killing a hung postmaster", "instance_id", id, "err", err)
			return
		}
	}
	e.mu.Lock()
	w := e.watched[id]
	if w == nil {
		e.mu.Unlock()
		return
	}
	// The next postmaster starts with a clean record of probes.
	w.unanswered = 0
	newDeath, startFull := w.restartAt.IsZero(), w.startFull
	e.mu.Unlock()
	// A postmaster that died because the disk is full (Postgres stops at
	// a failed WAL write, and cannot start again without space) is not
	// crashing: it waits, stopped, with backoff, and comes back once space
	// is freed, instead of being marked failed and losing its port.
	var full bool
	var capacity storage.Capacity
	if newDeath {
		full, capacity = e.diskFull(ctx)
		full = full || startFull
	}
	now := time.Now()
	e.mu.Lock()
	if w = e.watched[id]; w == nil {
		e.mu.Unlock()
		return
	}
	if newDeath && w.restartAt.IsZero() { // a death not seen before
		if full {
			w.diskWaits++
			w.restartAt = now.Add(min(time.Second<<min(w.diskWaits-1, 10), e.opts.DiskRetryMax))
		} else {
			w.diskWaits = 0
			recent := w.crashes[:0]
			for _, t := range w.crashes {
				if now.Sub(t) < e.opts.CrashWindow {
					recent = append(recent, t)
				}
			}
			w.crashes = append(recent, now)
			// The first restart is at once; then after 1 s, 2 s, 4 s, ...
			var delay time.Duration
			if n := len(w.crashes); n > 1 {
				delay = time.Second << min(n-2, 5)
			}
			w.restartAt = now.Add(delay)
		}
	}
	crashes := len(w.crashes)
	wait := now.Before(w.restartAt)
	if !wait {
		w.restartAt = time.Time{}
	}
	markStopped := full && !w.diskStop
	if markStopped {
		w.diskStop = true
	}
	waitingForDisk := w.diskStop
	e.mu.Unlock()

	if markStopped {
		e.log.Error("engine: postmaster stopped with the disk full; restarting it once space is freed", "instance_id", id,
			"free_bytes", capacity.FreeBytes)
		if err := e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceStopped, e.diskStopMessage(capacity, dataDir)); err != nil {
			e.log.Error("engine: marking instance stopped", "instance_id", id, "err", err)
		}
	}
	if crashes >= e.opts.MaxCrashes {
		e.unwatch(id)
		msg := fmt.Sprintf("postgres crashed %d times within %s; last log lines:\n%s", crashes, e.opts.CrashWindow, postgres.LogTail(dataDir, 20))
		e.log.Error("engine: instance failed", "instance_id", id, "crashes", crashes)
		if err := e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceFailed, msg); err != nil {
			e.log.Error("engine: marking instance failed", "instance_id", id, "err", err)
		}
		return
	}
	if wait {
		return
	}
	if waitingForDisk {
		e.log.Info("engine: starting postgres again after the disk was full", "instance_id", id)
	} else {
		e.log.Warn("engine: postmaster died; restarting", "instance_id", id, "crashes_in_window", crashes)
	}
	if err := postgres.KillLeftovers(ctx, dataDir); err != nil {
		e.log.Error("engine: clearing the dead postmaster's processes", "instance_id", id, "err", err)
		return
	}
	inst, err := e.opts.Store.GetInstance(ctx, id)
	if err != nil {
		e.log.Error("engine: restarting", "instance_id", id, "err", err)
		return
	}
	err = e.start(ctx, inst, false)
	e.mu.Lock()
	wasStopped := false
	if w := e.watched[id]; w != nil {
		w.startFull = errors.Is(err, syscall.ENOSPC)
		wasStopped = w.diskStop
		if err == nil {
			w.diskStop, w.diskWaits = false, 0
		}
	}
	e.mu.Unlock()
	if err != nil {
		level := slog.LevelError
		if wasStopped {
			level = slog.LevelInfo // expected until space is freed
		}
		e.log.Log(ctx, level, "engine: restart failed", "instance_id", id, "err", err)
		return
	}
	if wasStopped || inst.Status == store.InstanceStopped {
		e.log.Info("engine: instance running again after the disk was full", "instance_id", id)
		if err := e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceRunning, ""); err != nil {
			e.log.Error("engine: marking instance running", "instance_id", id, "err", err)
		}
	}
}

// diskFull tells whether the storage filesystem is full enough that a
// postmaster's death is its doing: its free space is under the disk
// reserve, or under 1% of it when there is no reserve.
func (e *Engine) diskFull(ctx context.Context) (bool, storage.Capacity) {
	c, err := e.opts.Storage.Capacity(ctx)
	if err != nil {
		return false, c
	}
	floor := max(e.opts.Limits.DiskReserve.Of(c.TotalBytes), c.TotalBytes/100)
	return c.FreeBytes < floor, c
}

// diskStopMessage is the error of an instance stopped for the full disk.
func (e *Engine) diskStopMessage(c storage.Capacity, dataDir string) string {
	return fmt.Sprintf("postgres stopped while the disk was full (%s of %s free): sindri starts it again once space is freed (destroy instances, delete backups), trying at least every %s; last log lines:\n%s",
		size(c.FreeBytes), size(c.TotalBytes), e.opts.DiskRetryMax, postgres.LogTail(dataDir, 5))
}

// hung tells whether a live postmaster has failed MaxUnanswered connection
// attempts in a row, one every ProbeEvery. Any answer, even a refusal such
// as "the database system is starting up", counts as answering: only
// silence until ProbeTimeout does not.
func (e *Engine) hung(ctx context.Context, id int64) bool {
	e.mu.Lock()
	w := e.watched[id]
	if w == nil || time.Since(w.probedAt) < e.opts.ProbeEvery {
		e.mu.Unlock()
		return false
	}
	w.probedAt = time.Now()
	e.mu.Unlock()

	inst, err := e.opts.Store.GetInstance(ctx, id)
	if err != nil {
		return false
	}
	attempt, cancel := context.WithTimeout(ctx, e.opts.ProbeTimeout)
	defer cancel()
	conn, err := pgx.Connect(attempt, postgres.SuperuserURL(e.socketDir(id), inst.Port, "postgres"))
	var pgErr *pgconn.PgError
	// Only silence counts against it: an error that comes at once (no
	// socket, a refused or full queue) is not a hang.
	answered := err == nil || errors.As(err, &pgErr) || attempt.Err() == nil
	if conn != nil {
		conn.Close(ctx)
	}
	if ctx.Err() != nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if answered {
		w.unanswered = 0
		return false
	}
	w.unanswered++
	e.log.Warn("engine: postmaster did not answer", "instance_id", id, "attempt", w.unanswered, "err", err)
	if w.unanswered < e.opts.MaxUnanswered {
		return false
	}
	w.unanswered = 0
	return true
}

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
	instances, err := e.opts.Store.ListInstances(ctx, "")
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
	var errs []error
	for _, img := range images {
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
		if notIts, err = e.notItsVolume(ctx, inst.ID); err != nil {
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
	if err := e.start(ctx, inst, false); err != nil {
		if full, c := e.diskFull(ctx); full || errors.Is(err, syscall.ENOSPC) {
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

// clearDiskStop forgets that an instance, running again, was stopped for
// the full disk.
func (e *Engine) clearDiskStop(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if w := e.watched[id]; w != nil {
		w.diskStop, w.startFull, w.diskWaits = false, false, 0
	}
}

// watchStoppedForDisk has the supervisor start an instance, stopped for
// the full disk, once space is freed.
func (e *Engine) watchStoppedForDisk(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w := e.watched[id]
	if w == nil {
		w = &watch{}
		e.watched[id] = w
	}
	w.diskStop, w.startFull = true, true
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
