package engine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/store"
)

// A source is a server that sindri makes images of by itself: each
// refresh is a pull (CreateImage with the source's url, then
// FinaliseImage, as a source_url pull is), recorded as the source's, and
// then the source's ready images beyond its keep that no instance uses
// are destroyed (retention). Refreshes run when the schedule says
// (RunSources), or when asked (RefreshSource).
//
// Crash safety: a refresh records the image it is making
// (refreshing_image_id) before it pulls. A refresh that a crash cut short
// is found at the next start (repairRefreshes): a ready image is recorded
// as the refresh's result, anything else is destroyed and the refresh
// tried again at once. An image of a source that no refresh claims and
// that is not ready (a crash between its record and the claim) is
// destroyed by retention.

// Defaults of the source options.
const (
	DefaultSourceTick    = 5 * time.Second
	DefaultRetryMin      = 30 * time.Second
	DefaultRetryMax      = time.Hour
	DefaultSourceKeep    = 3
	maxSourceKeep        = 1000
	sourceNameMaxLength  = 63
	sourceRefreshTimeout = PullTimeout + 2*time.Hour // the pull, the script, the scrub
)

var sourceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// SourceRequest is a new source.
type SourceRequest struct {
	Name                string
	URL                 string
	Mode                store.SourceMode // "" is basebackup
	Schedule            string
	AnonymisationScript string
	Keep                int // 0 is DefaultSourceKeep
}

// SourcePatch changes a source; nil leaves a field as it is. URL, when
// set, replaces the whole url, its password included.
type SourcePatch struct {
	Name                *string
	URL                 *string
	Mode                *store.SourceMode
	Schedule            *string
	AnonymisationScript *string
	Keep                *int
}

// refreshRuns are the refreshes this process runs, by source id.
type refreshRuns struct {
	mu      sync.Mutex
	running map[int64]chan struct{} // closed when the refresh ends
	wg      sync.WaitGroup
}

// start claims source id's refresh for this process; false if one runs.
func (r *refreshRuns) start(id int64) (done func(), ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running == nil {
		r.running = map[int64]chan struct{}{}
	}
	if r.running[id] != nil {
		return nil, false
	}
	ch := make(chan struct{})
	r.running[id] = ch
	r.wg.Add(1)
	return func() {
		r.mu.Lock()
		delete(r.running, id)
		r.mu.Unlock()
		close(ch)
		r.wg.Done()
	}, true
}

func (r *refreshRuns) isRunning(id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running[id] != nil
}

// WaitRefreshes waits for the refreshes, and the passes over replica
// mode's standbys, under way in this process.
func (e *Engine) WaitRefreshes() {
	e.refreshes.wg.Wait()
	e.standbys.wg.Wait()
}

func checkSourceName(name string) error {
	if !sourceName.MatchString(name) {
		return fmt.Errorf("%w: source name %q must be 1 to %d letters, digits, '.', '_' or '-', starting with a letter or a digit", ErrInvalid, name, sourceNameMaxLength)
	}
	return nil
}

func checkSourceMode(m store.SourceMode) error {
	switch m {
	case store.SourceBasebackup, store.SourceReplica:
		return nil
	}
	return fmt.Errorf("%w: mode %q is not a source mode: give basebackup or replica", ErrInvalid, m)
}

func checkKeep(keep int) error {
	if keep < 1 || keep > maxSourceKeep {
		return fmt.Errorf("%w: keep must be between 1 and %d, not %d", ErrInvalid, maxSourceKeep, keep)
	}
	return nil
}

// sourceURL checks a source's url (see parseSource) and returns it
// without its password.
func sourceURL(url string) (string, error) {
	if strings.TrimSpace(url) == "" {
		return "", fmt.Errorf("%w: attribute url is required: the source server's libpq URL, such as postgres://replicator:password@db.example.com:5432/postgres", ErrInvalid)
	}
	src, err := parseSource(url)
	if err != nil {
		return "", fmt.Errorf("%w: url is not a PostgreSQL connection string; give a URL such as postgres://replicator:password@db.example.com:5432/postgres, or key=value settings", ErrInvalid)
	}
	return src.ConnString, nil
}

// CreateSource records a source. Its first refresh is at once for an
// interval schedule, at the next matching time for a cron one.
func (e *Engine) CreateSource(ctx context.Context, req SourceRequest) (store.Source, error) {
	if req.Mode == "" {
		req.Mode = store.SourceBasebackup
	}
	if req.Keep == 0 {
		req.Keep = DefaultSourceKeep
	}
	if err := checkSourceName(req.Name); err != nil {
		return store.Source{}, err
	}
	redacted, err := sourceURL(req.URL)
	if err != nil {
		return store.Source{}, err
	}
	if err := checkSourceMode(req.Mode); err != nil {
		return store.Source{}, err
	}
	sched, err := ParseSchedule(req.Schedule)
	if err != nil {
		return store.Source{}, err
	}
	if err := checkKeep(req.Keep); err != nil {
		return store.Source{}, err
	}
	src, err := e.opts.Store.CreateSource(ctx, store.SourceInput{
		Name: req.Name, URL: req.URL, URLRedacted: redacted, Mode: req.Mode, Schedule: strings.TrimSpace(req.Schedule),
		AnonymisationScript: req.AnonymisationScript, Keep: req.Keep, NextRefreshAt: sched.First(e.now()),
	})
	if errors.Is(err, store.ErrConflict) {
		return store.Source{}, refuse(ErrConflict, "there is already a source named %q", req.Name)
	}
	if err != nil {
		return store.Source{}, err
	}
	e.log.Info("engine: source created", "source_id", src.ID, "source", src.Name, "url", redacted, "schedule", src.Schedule)
	e.audit(ctx, "create_source", "source", src.ID, "ok", "")
	return src, nil
}

// UpdateSource changes source id. A new schedule counts from now.
func (e *Engine) UpdateSource(ctx context.Context, id int64, p SourcePatch) (store.Source, error) {
	unlock := e.sourceLocks.Lock(id)
	defer unlock()
	src, err := e.getSource(ctx, id)
	if err != nil {
		return src, err
	}
	in := store.SourceInput{Name: src.Name, URLRedacted: src.URLRedacted, Mode: src.Mode, Schedule: src.Schedule,
		AnonymisationScript: src.AnonymisationScript, Keep: src.Keep, NextRefreshAt: src.NextRefreshAt}
	if p.Name != nil {
		if err := checkSourceName(*p.Name); err != nil {
			return src, err
		}
		in.Name = *p.Name
	}
	if p.URL != nil {
		if in.URLRedacted, err = sourceURL(*p.URL); err != nil {
			return src, err
		}
		in.URL = *p.URL
	}
	if p.Mode != nil {
		if err := checkSourceMode(*p.Mode); err != nil {
			return src, err
		}
		in.Mode = *p.Mode
	}
	if p.Schedule != nil {
		sched, err := ParseSchedule(*p.Schedule)
		if err != nil {
			return src, err
		}
		in.Schedule = strings.TrimSpace(*p.Schedule)
		if in.Schedule != src.Schedule {
			in.NextRefreshAt = sched.Next(e.now())
		}
	}
	if p.AnonymisationScript != nil {
		in.AnonymisationScript = *p.AnonymisationScript
	}
	if p.Keep != nil {
		if err := checkKeep(*p.Keep); err != nil {
			return src, err
		}
		in.Keep = *p.Keep
	}
	updated, err := e.opts.Store.UpdateSource(ctx, id, in)
	if errors.Is(err, store.ErrConflict) {
		return src, refuse(ErrConflict, "there is already a source named %q", in.Name)
	}
	if err != nil {
		return src, err
	}
	if p.URL != nil || updated.Mode != src.Mode {
		// Another server, or no replica any more: the standby goes, and
		// replica mode makes a new one at its next pass.
		e.dropStandby(ctx, id)
	}
	e.audit(ctx, "update_source", "source", id, "ok", "")
	return updated, nil
}

// DeleteSource deletes source id; its images stay, as images of no
// source. A source is not deleted while it refreshes.
func (e *Engine) DeleteSource(ctx context.Context, id int64) error {
	unlock := e.sourceLocks.Lock(id)
	defer unlock()
	src, err := e.getSource(ctx, id)
	if err != nil {
		return err
	}
	if src.Status == store.SourceRefreshing || e.refreshes.isRunning(id) {
		return refuse(ErrConflict, "source %q is refreshing (image %d); delete it once the refresh is over", src.Name, src.RefreshingImageID)
	}
	if err := e.opts.Store.DeleteSource(ctx, id); err != nil {
		return err
	}
	e.dropStandby(ctx, id) // what replica mode kept, if anything
	e.audit(ctx, "delete_source", "source", id, "ok", "")
	return nil
}

func (e *Engine) getSource(ctx context.Context, id int64) (store.Source, error) {
	src, err := e.opts.Store.GetSource(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return src, refuse(ErrNotFound, "there is no source %d", id)
	}
	return src, err
}

// RefreshSource starts a refresh of source id now, in the background, and
// returns the source refreshing. A refresh under way is left to finish:
// the source is returned as it is.
func (e *Engine) RefreshSource(ctx context.Context, id int64) (store.Source, error) {
	src, err := e.getSource(ctx, id)
	if err != nil {
		return src, err
	}
	started := make(chan struct{})
	go e.refresh(context.WithoutCancel(ctx), id, started)
	select {
	case <-started:
	case <-ctx.Done():
		return src, ctx.Err()
	}
	return e.getSource(ctx, id)
}

// refresh makes a new image of source id, unless a refresh of it runs
// already; started is closed once the refresh is recorded (or found
// running, or failed to begin).
func (e *Engine) refresh(ctx context.Context, id int64, started chan struct{}) {
	signal := sync.OnceFunc(func() {
		if started != nil {
			close(started)
		}
	})
	defer signal()
	done, ok := e.refreshes.start(id)
	if !ok {
		return
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, sourceRefreshTimeout)
	defer cancel()
	begun := e.now()

	unlock := e.sourceLocks.Lock(id)
	src, err := e.getSource(ctx, id)
	if err != nil || src.Status == store.SourceRefreshing {
		// Gone, or a refresh a crash cut short, which repairRefreshes
		// finishes or undoes first.
		unlock()
		return
	}
	name := fmt.Sprintf("%s-%s", src.Name, begun.UTC().Format("20060102T150405Z"))
	var img store.Image
	if src.Mode == store.SourceReplica {
		img, err = e.snapshotStandby(ctx, src, name, begun)
	} else {
		var url string
		if url, err = e.opts.Store.SourceURL(ctx, id); err == nil {
			img, err = e.CreateImage(ctx, ImageRequest{
				Name: name, BackedUpAt: begun, AnonymisationScript: src.AnonymisationScript, SourceURL: url, SourceID: id,
			})
		}
	}
	if err == nil {
		err = e.opts.Store.BeginSourceRefresh(ctx, id, img.ID)
	}
	unlock()
	if err != nil {
		e.failRefresh(ctx, src, img.ID, err)
		signal()
		return
	}
	e.log.Info("engine: refreshing a source", "source_id", id, "source", src.Name, "image_id", img.ID)
	signal()

	ready, err := e.FinaliseImage(ctx, img.ID)
	if err != nil {
		if ready.Error != "" && !errors.Is(err, ErrNoDiskSpace) {
			// the image's own reason, without its advice to the upload user
			err = errors.New(strings.TrimSuffix(ready.Error, "; "+retryAdvice(ready)))
		}
		e.failRefresh(ctx, src, img.ID, err)
		return
	}
	e.finishRefresh(ctx, id, ready)
}

// finishRefresh records a refresh whose image is ready, and applies the
// source's retention.
func (e *Engine) finishRefresh(ctx context.Context, id int64, img store.Image) {
	unlock := e.sourceLocks.Lock(id)
	defer unlock()
	src, err := e.getSource(ctx, id)
	if err != nil {
		e.log.Error("engine: recording a refresh", "source_id", id, "image_id", img.ID, "err", err)
		return
	}
	sched, _ := ParseSchedule(src.Schedule) // checked when it was set
	now := e.now()
	if err := e.opts.Store.FinishSourceRefresh(ctx, id, img.ID, now, sched.Next(now)); err != nil {
		e.log.Error("engine: recording a refresh", "source_id", id, "image_id", img.ID, "err", err)
		return
	}
	e.log.Info("engine: source refreshed", "source_id", id, "source", src.Name, "image_id", img.ID)
	e.audit(ctx, "refresh_source", "source", id, "ok", fmt.Sprintf("image %d", img.ID))
	e.retainNow(ctx, src)
}

// failRefresh records why a refresh failed, destroys the image it was
// making (nothing half-made stays), and schedules the retry: after a
// backoff that doubles with each failure in a row (RetryMin to
// RetryMax), or at the next scheduled time if that is sooner.
func (e *Engine) failRefresh(ctx context.Context, src store.Source, imageID int64, cause error) {
	ctx = context.WithoutCancel(ctx)
	msg := cause.Error()
	e.log.Error("engine: refreshing a source failed", "source_id", src.ID, "source", src.Name, "image_id", imageID, "err", msg)
	if imageID != 0 {
		if err := e.DestroyImage(ctx, imageID, false); err != nil && !errors.Is(err, ErrNotFound) {
			e.log.Error("engine: destroying a failed refresh's image", "source_id", src.ID, "image_id", imageID, "err", err)
		}
	}
	unlock := e.sourceLocks.Lock(src.ID)
	defer unlock()
	now, err := e.getSource(ctx, src.ID)
	if err != nil {
		return // deleted meanwhile
	}
	backoff := e.retryMin() << min(now.Failures, 20)
	if backoff > e.retryMax() || backoff <= 0 {
		backoff = e.retryMax()
	}
	next := e.now().Add(backoff)
	sched, _ := ParseSchedule(now.Schedule)
	if at := sched.Next(e.now()); at != nil && at.Before(next) {
		next = *at
	}
	if err := e.opts.Store.FailSourceRefresh(ctx, src.ID, msg, &next); err != nil {
		e.log.Error("engine: recording a failed refresh", "source_id", src.ID, "err", err)
	}
	e.audit(ctx, "refresh_source", "source", src.ID, "failed", msg)
}

func (e *Engine) retryMin() time.Duration {
	if e.opts.SourceRetryMin > 0 {
		return e.opts.SourceRetryMin
	}
	return DefaultRetryMin
}

func (e *Engine) retryMax() time.Duration {
	if e.opts.SourceRetryMax > 0 {
		return e.opts.SourceRetryMax
	}
	return DefaultRetryMax
}

// retain destroys src's ready images beyond its keep (the newest keep
// stay) that no instance uses: one in use goes at the first pass after
// its last instance went. An image of src that is not ready and that no
// refresh is making (a crash left it) goes too.
func (e *Engine) retain(ctx context.Context, src store.Source) {
	// Under the source's lock, which a refresh holds from its claim until
	// its image is recorded as the refresh's: an image not yet claimed is
	// never taken for one a crash left.
	unlock := e.sourceLocks.Lock(src.ID)
	defer unlock()
	now, err := e.getSource(ctx, src.ID)
	if err != nil || now.Status == store.SourceRefreshing || e.refreshes.isRunning(src.ID) {
		return // gone, or its images are being made: the refresh retains when it ends
	}
	e.retainNow(ctx, now)
}

// retainNow is retain for a source whose refresh, if any, is over.
func (e *Engine) retainNow(ctx context.Context, src store.Source) {
	images, err := e.opts.Store.ListImagesOfSource(ctx, src.ID)
	if err != nil {
		e.log.Error("engine: listing a source's images", "source_id", src.ID, "err", err)
		return
	}
	kept := 0
	for _, img := range images {
		switch img.Status {
		case store.ImageReady:
			kept++
			if kept <= src.Keep {
				continue
			}
			of, err := e.instancesOf(ctx, img.ID)
			if err != nil || len(of) > 0 {
				continue // in use: it goes once its last instance has
			}
		case store.ImageDestroying:
			continue // reconcile finishes it
		}
		err := e.DestroyImage(WithActor(ctx, "retention"), img.ID, false)
		switch {
		case err == nil:
			e.log.Info("engine: image retired by its source's retention", "source_id", src.ID, "image_id", img.ID, "keep", src.Keep)
		case errors.Is(err, ErrImageHasInstances), errors.Is(err, ErrNotFound), errors.Is(err, ErrBackupRunning):
			// an instance or a backup came meanwhile: the next pass
		default:
			e.log.Error("engine: retiring an image", "source_id", src.ID, "image_id", img.ID, "err", err)
		}
	}
}

// repairRefreshes finishes or undoes the refreshes a crash cut short:
// sources recorded refreshing that no refresh of this process runs. A
// ready image is the refresh's result; anything else is destroyed, and
// the source refreshed again at once.
func (e *Engine) repairRefreshes(ctx context.Context) {
	sources, err := e.opts.Store.ListSources(ctx)
	if err != nil {
		e.log.Error("engine: listing sources", "err", err)
		return
	}
	ctx = WithActor(ctx, "reconcile")
	for _, src := range sources {
		if src.Status != store.SourceRefreshing || e.refreshes.isRunning(src.ID) || !e.runsSource(src) {
			continue
		}
		img, err := e.opts.Store.GetImage(ctx, src.RefreshingImageID)
		if err == nil && img.Status == store.ImageReady {
			e.log.Warn("engine: a refresh was cut short after its image was ready; recording it", "source_id", src.ID, "image_id", img.ID)
			e.finishRefresh(ctx, src.ID, img)
			continue
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			e.log.Error("engine: repairing a refresh", "source_id", src.ID, "err", err)
			continue
		}
		e.log.Warn("engine: a refresh was cut short by a restart; undoing it and refreshing again", "source_id", src.ID, "image_id", src.RefreshingImageID)
		id := src.RefreshingImageID
		if errors.Is(err, store.ErrNotFound) {
			id = 0
		}
		e.failRefresh(ctx, src, id, errors.New("the refresh was interrupted by a restart of sindrid; it is tried again"))
		now := e.now()
		if err := e.opts.Store.ScheduleSourceRefresh(ctx, src.ID, &now); err != nil {
			e.log.Error("engine: rescheduling a refresh", "source_id", src.ID, "err", err)
		}
	}
}

// RunSources refreshes the sources whose time has come and applies their
// retention, every SourceTick, until ctx ends; it first repairs the
// refreshes a crash cut short. Call it after the first Reconcile (Run
// does).
func (e *Engine) RunSources(ctx context.Context) {
	e.repairRefreshes(ctx)
	tick := e.opts.SourceTick
	if tick <= 0 {
		tick = DefaultSourceTick
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for pass := 0; ; pass++ {
		// The standbys of no source are looked for at the first pass and
		// every standbySweepEvery after: it lists every volume.
		e.sourcesPass(ctx, pass%standbySweepEvery == 0)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// standbySweepEvery is how many passes of the sources go by between two
// looks for standbys of no source (about a minute at DefaultSourceTick).
const standbySweepEvery = 12

// runsSource tells whether this host keeps the source's standby and runs
// its scheduled refreshes: in a fleet, its host only; a single host runs
// every source.
func (e *Engine) runsSource(src store.Source) bool {
	host := e.opts.Store.FleetHost()
	return host == "" || src.Host == host
}

// sourcesPass starts the due refreshes and applies every source's
// retention; with sweepStandbys, it drops the standbys of no source too.
func (e *Engine) sourcesPass(ctx context.Context, sweepStandbys bool) {
	due, err := e.opts.Store.DueSources(ctx, e.now())
	if err != nil {
		e.log.Error("engine: listing due sources", "err", err)
		return
	}
	sources, err := e.opts.Store.ListSources(ctx)
	if err != nil {
		e.log.Error("engine: listing sources", "err", err)
		return
	}
	// In a fleet, this host's sources only: another's standby and
	// refreshes run there.
	due = slices.DeleteFunc(due, func(src store.Source) bool { return !e.runsSource(src) })
	sources = slices.DeleteFunc(sources, func(src store.Source) bool { return !e.runsSource(src) })
	streaming := map[int64]bool{}
	for _, src := range sources {
		if src.Mode == store.SourceReplica {
			streaming[src.ID] = src.Status == store.SourceStreaming
			e.standbys.wg.Add(1)
			go func() {
				defer e.standbys.wg.Done()
				e.keepStandby(context.WithoutCancel(ctx), src)
			}()
		}
	}
	if sweepStandbys {
		e.dropOrphanStandbys(ctx, streaming)
	}
	for _, src := range due {
		if src.Mode == store.SourceReplica && !streaming[src.ID] && src.Failures == 0 {
			continue // its first refresh waits for its standby to stream
		}
		go e.refresh(WithActor(context.WithoutCancel(ctx), "schedule"), src.ID, nil)
	}
	for _, src := range sources {
		e.retain(ctx, src)
	}
}

// dropOrphanStandbys stops and destroys the standbys of sources that are
// gone or no longer in replica mode (replica: the replica-mode sources
// listed): a crash between a source's delete and its standby's, or a
// standby made while its source was deleted, would otherwise keep a
// postmaster streaming from the source for ever. A standby that a pass
// is looking after is left to the next pass.
func (e *Engine) dropOrphanStandbys(ctx context.Context, replica map[int64]bool) {
	entries, err := e.opts.Storage.List(ctx)
	if err != nil {
		e.log.Error("engine: listing volumes for standbys of no source", "err", err)
		return
	}
	for _, v := range entries {
		digits, ok := strings.CutPrefix(v.Name, standbyPrefix)
		if !ok {
			continue
		}
		id, err := strconv.ParseInt(digits, 10, 64)
		if err != nil || id <= 0 || StandbyVolume(id) != v.Name {
			continue
		}
		if _, ok := replica[id]; ok || !e.standbys.claim(id) {
			continue
		}
		e.log.Warn("engine: dropping the standby of a source that is gone or no longer in replica mode", "source_id", id, "volume", v.Name)
		e.dropStandby(ctx, id)
		e.standbys.release(id)
	}
}
