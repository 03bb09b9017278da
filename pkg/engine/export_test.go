package engine

import (
	"context"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/store"
)

// WithStepHook is opts with step called at each of CreateSteps and
// ImageDestroySteps (see hooks): a crash test kills the process there.
func WithStepHook(opts Options, step func(name string, id int64)) Options {
	opts.hooks.step = step
	return opts
}

// WithBackupSnapshotted is opts with f called by each backup's writer
// between its snapshot and its archive: tests hold a backup there.
func WithBackupSnapshotted(opts Options, f func(backupID int64)) Options {
	opts.hooks.backupSnapshotted = f
	return opts
}

// WithoutScrub is opts with the scrub after an anonymisation script left
// out, for the benchmark that measures what the scrub costs; images
// finalised so are not marked anonymised.
func WithoutScrub(opts Options) Options {
	opts.hooks.skipScrub = true
	return opts
}

// WithTickHook is opts with f called at each supervisor pass with the
// number of due and of round checks it started.
func WithTickHook(opts Options, f func(due, round int)) Options {
	opts.hooks.tick = f
	return opts
}

// RecordImageVolume writes image img's volume record into dir, as a
// finalise does before the freeze.
func (e *Engine) RecordImageVolume(ctx context.Context, dir string, img store.Image) error {
	return e.recordImageVolume(ctx, dir, img)
}

// Look is what the supervisor concludes of a look at a postmaster.
type Look = look

const (
	LookAsk    = lookAsk
	LookAwake  = lookAwake
	LookAsleep = lookAsleep
)

// PostmasterWakes bounds how long an idle postmaster sleeps, for the
// supervisor.
const PostmasterWakes = postmasterWakes

// JudgeLook is the supervisor's conclusion of a look at postmaster pid,
// whose activity was then when it last showed it was awake, at at.
func JudgeLook(pid int, then postgres.Activity, at time.Time, lookPID int, now postgres.Activity, known bool, when time.Time) Look {
	return quietSince{pid: pid, activity: then, at: at}.judge(lookPID, now, known, when)
}
