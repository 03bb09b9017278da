package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/safefile"
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
		w.startFull = errors.Is(err, safefile.ErrNoSpace)
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
// silence until ProbeTimeout does not (postgres.Cluster.Answers).
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
	answered, err := e.cluster(inst, "").Answers(attempt)
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
