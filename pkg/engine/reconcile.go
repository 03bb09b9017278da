package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	now := time.Now()
	e.mu.Lock()
	w := e.watched[id]
	if w == nil {
		e.mu.Unlock()
		return
	}
	// The next postmaster starts with a clean record of probes.
	w.unanswered = 0
	if w.restartAt.IsZero() { // a death not seen before
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
	crashes := len(w.crashes)
	wait := now.Before(w.restartAt)
	if !wait {
		w.restartAt = time.Time{}
	}
	e.mu.Unlock()

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
	e.log.Warn("engine: postmaster died; restarting", "instance_id", id, "crashes_in_window", crashes)
	if err := postgres.KillLeftovers(ctx, dataDir); err != nil {
		e.log.Error("engine: clearing the dead postmaster's processes", "instance_id", id, "err", err)
		return
	}
	inst, err := e.opts.Store.GetInstance(ctx, id)
	if err != nil {
		e.log.Error("engine: restarting", "instance_id", id, "err", err)
		return
	}
	if err := e.start(ctx, inst, false); err != nil {
		e.log.Error("engine: restart failed", "instance_id", id, "err", err)
	}
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
	conn, err := pgx.Connect(attempt, postgres.SocketURL(e.socketDir(id), inst.Port, "postgres", "postgres"))
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
//   - an instance still "creating" that nobody is creating (the process that
//     was died) is undone, and one "destroying" is finished;
//   - a running instance gets its postmaster started when it is not alive,
//     and adopted (same pid, no restart) when it is;
//   - an instance whose volume is gone is marked failed, and a failed one
//     gives up its port;
//   - a volume no instance references is removed once it has been seen so
//     for OrphanGrace, its postmaster stopped first.
func (e *Engine) Reconcile(ctx context.Context) error {
	instances, err := e.opts.Store.ListInstances(ctx, "")
	if err != nil {
		return err
	}
	entries, err := e.opts.Storage.List(ctx)
	if err != nil {
		return err
	}
	volumes := map[string]storage.Entry{}
	for _, v := range entries {
		volumes[v.Name] = v
	}
	referenced := map[string]bool{}
	var errs []error
	first := e.reconciled.CompareAndSwap(false, true)
	for _, listed := range instances {
		referenced[InstanceVolume(listed.ID)] = true
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
		case inst.Status == store.InstanceCreating && !first && e.now().Sub(inst.CreatedAt) < e.opts.StartTimeout+time.Minute:
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
	errs = append(errs, e.finishImageDestroys(ctx))
	e.removeOrphans(ctx, entries, referenced)
	errs = append(errs, e.reconcileBackups(ctx, entries))
	return errors.Join(errs...)
}

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

// reconcileImages marks failed the images a crash left finalising (no
// finalise runs before the first reconcile), stopping the private
// postmaster it may have left, so that done can be tried again; marks
// failed a ready image whose volume is gone; removes what is left of a
// ready image's upload; and opens the upload directories of pending and
// failed images to the upload account.
func (e *Engine) reconcileImages(ctx context.Context, volumes map[string]storage.Entry) error {
	images, err := e.opts.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, img := range images {
		if _, ok := volumes[ImageVolume(img.ID)]; img.Status == store.ImageReady && !ok {
			// A destroy cut short after the volume went, or a lost disk.
			e.log.Error("engine: a ready image has no volume; marking it failed", "image_id", img.ID)
			errs = append(errs, e.opts.Store.SetImageStatus(ctx, img.ID, store.ImageFailed,
				"its frozen data is gone (a destroy cut short?); destroy the image"))
			continue
		}
		if img.Status == store.ImageReady {
			// A start cut short between the record and the removal, or an
			// image from before uploads were removed.
			errs = append(errs, e.removeUpload(img.ID))
			continue
		}
		if img.Status == store.ImagePending || img.Status == store.ImageFailed {
			errs = append(errs, e.openUploadDir(img.ID)) // made before scp uploads were on
			continue
		}
		if img.Status != store.ImageFinalising {
			continue
		}
		e.log.Warn("engine: a finalise was cut short; marking the image failed", "image_id", img.ID)
		if err := e.stopVolume(ctx, UploadVolume(img.ID)); err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, e.opts.Store.SetImageStatus(ctx, img.ID, store.ImageFailed,
			"finalising was interrupted by a restart of sindrid; POST /images/{id}/done again"),
			e.openUploadDir(img.ID))
	}
	return errors.Join(errs...)
}

func (e *Engine) reconcileOne(ctx context.Context, inst store.Instance, volumes map[string]storage.Entry) error {
	name := InstanceVolume(inst.ID)
	vol, hasVolume := volumes[name]
	switch inst.Status {
	case store.InstanceCreating:
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
			if hasVolume {
				if err := postgres.Stop(ctx, vol.Path, 10*time.Second); err != nil {
					return err
				}
			}
			e.log.Info("engine: freeing the port of a failed instance", "instance_id", inst.ID, "port", inst.Port)
			return e.opts.Store.ReleasePort(ctx, inst.ID)
		}
		return nil
	case store.InstanceRunning:
	default:
		return nil
	}
	if !hasVolume {
		e.unwatch(inst.ID)
		e.log.Error("engine: the volume of a running instance is gone", "instance_id", inst.ID)
		return e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceFailed, "its volume "+name+" is gone")
	}
	if st, err := postgres.Status(vol.Path); err == nil && st.Alive {
		if st.PID != inst.PID {
			if err := e.opts.Store.SetInstancePID(ctx, inst.ID, st.PID); err != nil {
				return err
			}
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
		msg := fmt.Sprintf("starting postgres: %v", err)
		e.unwatch(inst.ID)
		return errors.Join(err, e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceFailed, msg))
	}
	e.watch(inst.ID)
	return nil
}

func (e *Engine) removeOrphans(ctx context.Context, entries []storage.Entry, referenced map[string]bool) {
	now := time.Now()
	seen := map[string]bool{}
	for _, v := range entries {
		if _, ok := instanceIDOf(v.Name); !ok || v.Kind != storage.KindVolume || referenced[v.Name] {
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
