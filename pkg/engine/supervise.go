package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	lookedAt   time.Time   // the last look at a live postmaster (see hung)
	quiet      quietSince  // what that postmaster did since it last showed it was awake
	unanswered int         // connection attempts in a row that got no answer
	diskWaits  int         // deaths in a row while the disk was full
	diskStop   bool        // marked stopped for the full disk
	startFull  bool        // the last restart failed for want of space
	exitPID    int         // the postmaster whose end is watched (0: none)
	stopExit   func()      // forgets that watch
	due        bool        // queued for the next tick's check
}

// rounds is the supervisor's schedule (under Engine.mu): the instances
// whose check is due at the next tick (their postmaster ended, or a
// restart waits), and a ring of every watched instance that each tick
// walks a slice of (SuperviseBatch).
type rounds struct {
	due    []int64
	ring   []int64
	ringAt map[int64]int // index in ring
	next   int           // where in ring the next slice starts
	probes int           // hang probes left to this tick (ProbesPerTick)
	busy   int           // due checks under way
}

// maxDueBusy bounds the due checks under way: a host on which hundreds of
// postmasters die at once (the OOM killer, an operator's pkill) restarts
// them a few dozen at a time.
const maxDueBusy = 32

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

// watch has the supervisor look after a running instance; its first
// check, at the next tick, starts watching its postmaster's end.
func (e *Engine) watch(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.watchLocked(id)
}

func (e *Engine) watchLocked(id int64) *watch {
	w := e.watched[id]
	if w != nil {
		return w
	}
	w = &watch{}
	e.watched[id] = w
	r := &e.rounds
	if r.ringAt == nil {
		r.ringAt = map[int64]int{}
	}
	r.ringAt[id] = len(r.ring)
	r.ring = append(r.ring, id)
	e.markDueLocked(id)
	return w
}

func (e *Engine) unwatch(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w := e.watched[id]
	if w == nil {
		return
	}
	if w.stopExit != nil {
		w.stopExit()
	}
	delete(e.watched, id)
	// Out of the ring: the last id takes its place.
	r := &e.rounds
	i := r.ringAt[id]
	last := len(r.ring) - 1
	r.ring[i] = r.ring[last]
	r.ringAt[r.ring[i]] = i
	r.ring = r.ring[:last]
	delete(r.ringAt, id)
	// A due entry stays in the queue; the tick skips it.
}

// markDue has the next tick check the instance.
func (e *Engine) markDue(id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.markDueLocked(id)
}

func (e *Engine) markDueLocked(id int64) {
	if w := e.watched[id]; w != nil && !w.due {
		w.due = true
		e.rounds.due = append(e.rounds.due, id)
	}
}

// batch is what a tick checks: the due instances (oldest first, as many
// as keep maxDueBusy under way), then the next SuperviseBatch of the
// ring. Its size does not grow with the instances watched.
func (e *Engine) batch() (due, round []int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := &e.rounds
	for len(r.due) > 0 && r.busy+len(due) < maxDueBusy {
		id := r.due[0]
		r.due = r.due[1:]
		if w := e.watched[id]; w != nil && w.due {
			w.due = false
			due = append(due, id)
		}
	}
	if len(r.due) == 0 {
		r.due = nil // let the array go
	}
	r.probes = e.opts.ProbesPerTick
	for k := 0; k < min(e.opts.SuperviseBatch, len(r.ring)); k++ {
		if r.next >= len(r.ring) {
			r.next = 0
		}
		id := r.ring[r.next]
		r.next++
		if !slices.Contains(due, id) {
			round = append(round, id)
		}
	}
	return due, round
}

// supervise restarts dead postmasters of running instances, with backoff,
// and marks an instance failed when it crashed MaxCrashes times within
// CrashWindow. Its work per tick is bounded: it learns of a postmaster's
// end from the process itself (see watchExit) and checks those at once,
// and walks the other instances a slice per tick, which also probes them
// for a hang and finds what the exit watch could not see.
func (e *Engine) supervise(ctx context.Context) {
	due, round := e.batch()
	var started [2]int // due, round
	defer func() { e.tickHook(started[0], started[1]) }()
	for i, id := range append(due, round...) {
		isDue := i < len(due)
		unlock, ok := e.locks.TryLock(id)
		if !ok {
			// An operation is under way on it (or its last check): a due
			// check waits for the next tick.
			if isDue {
				e.markDue(id)
			}
			continue
		}
		if isDue {
			started[0]++
			e.mu.Lock()
			e.rounds.busy++
			e.mu.Unlock()
		} else {
			started[1]++
		}
		go func() {
			defer unlock()
			if isDue {
				defer func() {
					e.mu.Lock()
					e.rounds.busy--
					e.mu.Unlock()
				}()
			}
			e.superviseOne(ctx, id)
		}()
	}
}

// watchExit watches the end of the instance's postmaster pid, found alive
// working in dataDir, so that the instance's check is due the moment it
// ends, rather than when the round comes to it.
func (e *Engine) watchExit(id int64, pid int, dataDir string) {
	e.mu.Lock()
	w := e.watched[id]
	if w == nil || w.exitPID == pid {
		e.mu.Unlock()
		return
	}
	old := w.stopExit
	w.exitPID, w.stopExit = pid, nil
	e.mu.Unlock()
	if old != nil {
		old()
	}
	stop, err := postgres.OnExit(pid, func() {
		e.mu.Lock()
		if w := e.watched[id]; w != nil && w.exitPID == pid {
			w.exitPID, w.stopExit = 0, nil
		}
		e.mu.Unlock()
		e.markDue(id)
		select {
		case e.exits <- struct{}{}: // the supervisor runs now
		default: // or is about to
		}
	})
	if err != nil {
		e.log.Warn("engine: cannot watch a postmaster's end; the supervisor's round still checks it", "instance_id", id, "pid", pid, "err", err)
		e.mu.Lock()
		if w.exitPID == pid {
			w.exitPID = 0
		}
		e.mu.Unlock()
		return
	}
	e.mu.Lock()
	if e.watched[id] == w && w.exitPID == pid {
		w.stopExit = stop
		stop = nil
	}
	e.mu.Unlock()
	if stop != nil {
		stop()
		return
	}
	// The pid might have been another process's by the time its pidfd was
	// opened: checked again now, the pidfd is this postmaster's if it
	// still is.
	if st, err := postgres.Status(dataDir); err != nil || !st.Alive || st.PID != pid {
		e.markDue(id)
	}
}

func (e *Engine) superviseOne(ctx context.Context, id int64) {
	dataDir, err := e.watchedPath(ctx, id)
	if err != nil {
		e.log.Error("engine: supervising", "instance_id", id, "err", err)
		e.markDue(id)
		return
	}
	if st, err := postgres.Status(dataDir); err == nil && st.Alive {
		e.watchExit(id, st.PID, dataDir)
		if !e.hung(ctx, id, st) {
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
	// The next postmaster starts with a clean record of probes, even if
	// it gets the dead one's pid.
	w.unanswered, w.quiet = 0, quietSince{}
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
		e.markDue(id) // checked again at each tick until due
		return
	}
	if waitingForDisk {
		e.log.Info("engine: starting postgres again after the disk was full", "instance_id", id)
	} else {
		e.log.Warn("engine: postmaster died; restarting", "instance_id", id, "crashes_in_window", crashes)
	}
	if err := postgres.KillLeftovers(ctx, dataDir); err != nil {
		e.log.Error("engine: clearing the dead postmaster's processes", "instance_id", id, "err", err)
		e.markDue(id)
		return
	}
	inst, err := e.opts.Store.GetInstance(ctx, id)
	if err != nil {
		e.log.Error("engine: restarting", "instance_id", id, "err", err)
		e.markDue(id)
		return
	}
	err = e.start(ctx, inst, nil)
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
		e.markDue(id)
		return
	}
	if st, err := postgres.Status(dataDir); err == nil && st.Alive {
		e.watchExit(id, st.PID, dataDir)
	} else {
		e.markDue(id)
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

// postmasterWakes bounds how long an idle postmaster sleeps: its server
// loop wakes at least once a minute, in every major sindri runs.
const postmasterWakes = 70 * time.Second

// quietSince is a postmaster's activity when it last showed it was awake.
type quietSince struct {
	pid      int // 0: none read
	activity postgres.Activity
	at       time.Time
}

// look is what a look at a postmaster's activity concludes.
type look int

const (
	lookAsk    look = iota // ask it for a connection
	lookAwake              // it showed it is awake
	lookAsleep             // it has not run since it last showed it, for less than postmasterWakes
)

// judge concludes a look at postmaster pid, whose activity now is act
// (known false: unreadable), from what it did since it last showed it
// was awake.
func (q quietSince) judge(pid int, act postgres.Activity, known bool, now time.Time) look {
	if !known || q.pid != pid || act.Stalled() {
		return lookAsk
	}
	since := now.Sub(q.at)
	ran := act.Runs > q.activity.Runs
	spun := act.OnCPU-q.activity.OnCPU > since/2
	switch {
	case ran && !spun:
		return lookAwake
	case !ran && since < postmasterWakes:
		return lookAsleep
	}
	return lookAsk
}

// hung tells whether a live postmaster has failed MaxUnanswered connection
// attempts in a row. It looks at each one every ProbeEvery at the most.
// Each connection forks a child of the postmaster (3–30 ms of CPU,
// depending on what page faults cost on the host), so a look asks for
// one only when the postmaster's activity leaves a doubt: the first look
// at it, or when it is stopped, traced or in an uninterruptible sleep
// (postgres.Activity.Stalled), spent more than half the time since it
// last showed it was awake on a CPU (a loop), or has not been on a CPU
// for postmasterWakes. A tick asks at most ProbesPerTick postmasters.
// Any answer counts as answering (postgres.Cluster.Answers, which asks
// for no login): only silence until ProbeTimeout does not.
func (e *Engine) hung(ctx context.Context, id int64, st postgres.ClusterStatus) bool {
	e.mu.Lock()
	w := e.watched[id]
	if w == nil || time.Since(w.lookedAt) < e.opts.ProbeEvery {
		e.mu.Unlock()
		return false
	}
	now := time.Now()
	act, known := postgres.ReadActivity(st.PID)
	switch w.quiet.judge(st.PID, act, known, now) {
	case lookAwake:
		w.lookedAt, w.quiet.activity, w.quiet.at, w.unanswered = now, act, now, 0
		e.mu.Unlock()
		return false
	case lookAsleep:
		w.lookedAt = now
		e.mu.Unlock()
		return false
	}
	if e.rounds.probes <= 0 {
		e.mu.Unlock()
		return false // asked at a later tick
	}
	e.rounds.probes--
	w.lookedAt = now
	if known && w.quiet.pid != st.PID {
		w.quiet = quietSince{pid: st.PID, activity: act, at: now}
	}
	e.mu.Unlock()

	if st.Port <= 0 {
		return false // postmaster.pid does not say yet
	}
	attempt, cancel := context.WithTimeout(ctx, e.opts.ProbeTimeout)
	defer cancel()
	// The port is the postmaster.pid's: no store read per probe.
	probe := postgres.Cluster{SocketDir: e.socketDir(id), Port: st.Port}
	answered, err := probe.Answers(attempt)
	if ctx.Err() != nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if answered {
		w.unanswered = 0
		if act, ok := postgres.ReadActivity(st.PID); ok {
			w.quiet = quietSince{pid: st.PID, activity: act, at: time.Now()}
		}
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
	w := e.watchLocked(id)
	w.diskStop, w.startFull = true, true
	e.markDueLocked(id)
}
