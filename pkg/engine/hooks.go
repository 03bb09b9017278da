package engine

import "time"

// hooks are the points where the package's own tests act on an operation
// under way: a crash test kills the process at a step of a creation or an
// image destroy, a backup test holds a backup between its snapshot and its
// archive, a benchmark leaves out the scrub. Options.hooks is unexported
// and only export_test.go sets it, so no production code can run one; the
// zero value does nothing.
type hooks struct {
	// step is called as CreateInstance passes each of CreateSteps, and
	// DestroyImage each of ImageDestroySteps, once the step is done.
	step func(name string, id int64)
	// backupSnapshotted is called by a backup's writer between the
	// snapshot and the archive.
	backupSnapshotted func(backupID int64)
	// skipScrub leaves out the scrub after an anonymisation script (the
	// image is then not marked anonymised), to measure what it costs.
	skipScrub bool
	// tick is called at each supervisor pass with the number of due and
	// of round checks it started.
	tick func(due, round int)
}

// CreateSteps are CreateInstance's steps in order, for crash tests.
var CreateSteps = []string{"recorded", "credentials", "port", "cloned", "configured", "started", "accepting", "ready"}

// ImageDestroySteps are DestroyImage's steps after its intent is
// recorded, for crash tests.
var ImageDestroySteps = []string{"image-destroy-recorded", "image-instances-destroyed"}

// step marks that an operation passed the named step of CreateSteps or
// ImageDestroySteps.
func (e *Engine) step(name string, id int64) {
	e.log.Debug("engine: step", "step", name, "id", id)
	if e.opts.hooks.step != nil {
		e.opts.hooks.step(name, id)
	}
}

// backupSnapshotted marks that a backup's snapshot is taken and its
// archive about to be written.
func (e *Engine) backupSnapshotted(id int64) {
	if e.opts.hooks.backupSnapshotted != nil {
		e.opts.hooks.backupSnapshotted(id)
	}
}

// tickHook reports a supervisor tick's batch.
func (e *Engine) tickHook(due, round int) {
	if e.opts.hooks.tick != nil {
		e.opts.hooks.tick(due, round)
	}
}

// createSteps names the steps of one instance's first start (a creation
// or a reset) as they end, for the tests' hooks and, on a creation, for
// ObserveCreateStep: how long each took since the previous one.
type createSteps struct {
	e       *Engine
	id      int64
	observe bool
	last    time.Time
}

func (e *Engine) createSteps(id int64, observe bool) *createSteps {
	return &createSteps{e: e, id: id, observe: observe && e.opts.ObserveCreateStep != nil, last: time.Now()}
}

// step records that the named step is done. A nil receiver (a start that
// is not a first one) records nothing.
func (s *createSteps) step(name string) {
	if s == nil {
		return
	}
	s.e.step(name, s.id)
	if s.observe {
		now := time.Now()
		s.e.opts.ObserveCreateStep(name, now.Sub(s.last))
		s.last = now
	}
}
