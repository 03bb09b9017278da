package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/sindri-db/sindri/pkg/ingest"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// finaliseRun is one finalise of an image that callers wait on together.
type finaliseRun struct {
	done chan struct{}
	img  store.Image
	err  error
}

// FinaliseImage prepares the uploaded data directory and freezes it into
// the image. It is idempotent: a ready image returns at once, and a call
// while one runs waits for that one. The work is detached from ctx: a
// caller that goes away does not stop it.
func (e *Engine) FinaliseImage(ctx context.Context, id int64) (store.Image, error) {
	img, err := e.getImage(ctx, id)
	if err != nil {
		return img, err
	}
	if img.Status == store.ImageReady {
		return img, nil
	}
	e.mu.Lock()
	run := e.finalising[id]
	if run == nil {
		run = &finaliseRun{done: make(chan struct{})}
		e.finalising[id] = run
		go func() {
			run.img, run.err = e.finalise(context.WithoutCancel(ctx), id)
			e.mu.Lock()
			delete(e.finalising, id)
			e.mu.Unlock()
			close(run.done)
		}()
	}
	e.mu.Unlock()
	select {
	case <-run.done:
		return run.img, run.err
	case <-ctx.Done():
		return store.Image{}, ctx.Err()
	}
}

func (e *Engine) finalise(ctx context.Context, id int64) (store.Image, error) {
	unlock := e.imageLocks.Lock(id)
	defer unlock()
	img, err := e.getImage(ctx, id)
	if err != nil || img.Status == store.ImageReady {
		return img, err
	}
	if img.Status == store.ImageDestroying {
		return img, fmt.Errorf("%w: image %d is being destroyed", ErrImageNotPending, id)
	}
	if err := e.CheckDiskReserve(ctx, 0, "finalising an image"); err != nil {
		// The image stays as it was, saying why, until space is freed.
		// When the reason cannot be written (on a full disk the embedded
		// metadata database cannot write either), the refusal stands
		// alone: the store's message is logged, not told to the client.
		if serr := e.opts.Store.SetImageStatus(ctx, id, img.Status, err.Error()); serr != nil {
			e.log.Error("engine: recording a finalise refused at the disk reserve", "image_id", id, "err", serr)
			return img, err
		}
		e.auditFailure(ctx, "finalise_image", "image", id, err)
		return e.getImageOr(ctx, id, img), err
	}
	if err := e.opts.Store.SetImageStatus(ctx, id, store.ImageFinalising, ""); err != nil {
		return img, err
	}
	started := time.Now()
	// From here on the upload account can no longer write the upload. It
	// is removed once the outcome is recorded, ready or failed: a retry
	// after a failure takes a new upload, into the directory handed back.
	// The extraction or the pull stops at the disk reserve.
	var pgVersion string
	var size int64
	var anonymised bool
	guarded, stopGuard := e.guardReserve(ctx, "finalising an image")
	err = e.closeUploadDir(id)
	if err == nil {
		pgVersion, size, err = e.prepare(guarded, img, &anonymised)
	}
	full := reserveCause(guarded)
	stopGuard()
	if err != nil {
		if full != nil {
			err = full // prepare removed what it had extracted or pulled
		}
		msg := err.Error()
		e.log.Error("engine: finalising failed", "image_id", id, "err", msg)
		if e.hasUpload(id) {
			msg += "; " + retryAdvice(img)
		}
		if serr := e.opts.Store.SetImageStatus(ctx, id, store.ImageFailed, msg); serr != nil {
			return img, errors.Join(err, serr)
		}
		if rerr := e.removeUpload(id); rerr != nil {
			e.log.Error("engine: removing the upload of a failed image", "image_id", id, "err", rerr)
		}
		if oerr := e.openUploadDir(id); oerr != nil {
			e.log.Error("engine: giving the upload directory back to the upload account", "image_id", id, "err", oerr)
		}
		e.audit(ctx, "finalise_image", "image", id, "failed", msg)
		if full != nil {
			return e.getImageOr(ctx, id, img), full
		}
		return e.getImageOr(ctx, id, img), fmt.Errorf("%w: %s", ErrFinaliseFailed, msg)
	}
	if err := e.opts.Store.MarkImageReady(ctx, id, pgVersion, size, anonymised); err != nil {
		return img, err
	}
	if err := e.removeUpload(id); err != nil {
		// Reconcile removes it at the next start.
		e.log.Error("engine: removing the upload of a ready image", "image_id", id, "err", err)
	}
	e.log.Info("engine: image ready", "image_id", id, "pg_version", pgVersion, "size_bytes", size,
		"anonymised", anonymised, "duration_ms", time.Since(started).Milliseconds())
	e.audit(ctx, "finalise_image", "image", id, "ok", "")
	return e.getImageOr(ctx, id, img), nil
}

// retryAdvice says, after a failed finalise removed the upload, how to
// try again.
func retryAdvice(img store.Image) string {
	switch {
	case img.BackupID != 0:
		return fmt.Sprintf("the restored archive was removed from image %d: restore backup %d again as a new image", img.ID, img.BackupID)
	case img.FromInstanceID != 0:
		return fmt.Sprintf("branch instance %d again", img.FromInstanceID)
	case img.FromSnapshot:
		return "refresh the source again"
	case img.HasSourceURL:
		return fmt.Sprintf("the uploaded tarball was removed: POST /images/%d/done pulls from the source server again", img.ID)
	}
	return fmt.Sprintf("the upload was removed: upload the data directory again (PUT /images/%d/upload, or scp), then POST /images/%d/done", img.ID, img.ID)
}

// prepare turns the upload into a clean data directory and freezes it:
// a fresh upload volume, the archive extracted into it, the postmaster's
// leftovers removed, a private start in which role draupnir gets read and
// write on every database, the anonymisation script and the scrub (see
// preparePrivately), a checkpoint and a clean shutdown (so that clones start
// without crash recovery), the cumulative statistics forgotten
// (ForgetStatistics), the files a start writes laid out apart from the
// relation files (LayOutForClones), then the freeze. It sets *anonymised
// when a script ran and the scrub finished. The caller removes the upload
// afterwards.
func (e *Engine) prepare(ctx context.Context, img store.Image, anonymised *bool) (pgVersion string, size int64, err error) {
	// An image made from a source server pulls its data with
	// pg_basebackup, unless a tarball was uploaded for it after all.
	archive, err := e.findArchive(img.ID)
	if err != nil && !img.HasSourceURL && !img.FromSnapshot {
		return "", 0, err
	}
	if err == nil {
		defer archive.Close()
	}
	if err != nil || img.FromSnapshot { // an image of a snapshot takes its snapshot's data only
		archive = nil
	}
	// Start afresh: what an earlier try left (its pg_basebackup or psql
	// and its private postmaster, if sindrid died during it; an image
	// frozen just before a crash) goes, unless it is not this image's.
	if err := e.endStrayOperations(ctx, ImageVolume(img.ID)); err != nil {
		return "", 0, err
	}
	volName := UploadVolume(img.ID)
	for _, name := range []string{volName, ImageVolume(img.ID)} {
		if vol, err := e.opts.Storage.Get(ctx, name); err == nil {
			if err := e.checkImageVolume(ctx, vol.Path, img); err != nil {
				return "", 0, err
			}
		}
		if err := e.stopVolume(ctx, name); err != nil {
			return "", 0, err
		}
		if err := e.opts.Storage.Destroy(ctx, name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return "", 0, err
		}
	}
	vol, err := e.opts.Storage.Create(ctx, volName)
	if err != nil {
		return "", 0, err
	}
	defer func() {
		if err != nil { // nothing half-made stays: the next finalise starts afresh
			e.discardVolumes(context.WithoutCancel(ctx), img.ID)
		}
	}()
	if archive != nil {
		if err := e.extract(ctx, archive, vol.Path); err != nil {
			return "", 0, err
		}
	} else if img.FromSnapshot {
		if err := e.copySnapshot(ctx, img, vol.Path); err != nil {
			return "", 0, err
		}
	} else if sourceURL, err := e.opts.Store.ImageSourceURL(ctx, img.ID); err != nil {
		return "", 0, err
	} else if err := e.pullBaseBackup(ctx, img.ID, sourceURL, vol.Path); err != nil {
		return "", 0, err
	}
	if err := ingest.HoistDataDir(vol.Path); err != nil {
		return "", 0, err
	}
	pgVersion, err = postgres.MajorVersion(vol.Path)
	if err != nil {
		return "", 0, err
	}
	binDir, err := postgres.BinDir(e.opts.BinPattern, pgVersion)
	if err != nil {
		return "", 0, err
	}
	if err := postgres.CheckBackupHasWAL(vol.Path); err != nil {
		return "", 0, err
	}
	// The private start recovers and opens, never waits as a standby.
	postgres.RemoveStartLeftovers(vol.Path)
	if err := e.opts.Owner.Chown(vol.Path, true); err != nil {
		return "", 0, err
	}
	if err := os.Chmod(vol.Path, 0o700); err != nil {
		return "", 0, err
	}
	if *anonymised, err = e.preparePrivately(ctx, img, vol.Path, binDir); err != nil {
		return "", 0, err
	}
	if err := postgres.ForgetStatistics(vol.Path); err != nil {
		return "", 0, err
	}
	if err := postgres.LayOutForClones(vol.Path); err != nil {
		return "", 0, err
	}
	size, err = dirSize(vol.Path)
	if err != nil {
		return "", 0, err
	}
	// Clones start with it, until their own replaces it.
	if err := e.recordImageVolume(ctx, vol.Path, img); err != nil {
		return "", 0, err
	}
	if _, err := e.opts.Storage.Freeze(ctx, volName, ImageVolume(img.ID)); err != nil {
		return "", 0, err
	}
	return pgVersion, size, nil
}

// extract writes the archive into the upload volume at dir, within the
// free space less extractReserve, and closes it.
func (e *Engine) extract(ctx context.Context, archive *os.File, dir string) error {
	defer archive.Close()
	capacity, err := e.opts.Storage.Capacity(ctx)
	if err != nil {
		return err
	}
	reserve := extractReserve(capacity.TotalBytes)
	limits := ingest.Limits{MaxBytes: capacity.FreeBytes - reserve, MaxEntries: ingest.DefaultMaxEntries}
	if limits.MaxBytes <= 0 {
		return fmt.Errorf("%w: the filesystem has %s free, less than the %s kept for the instances; free some (destroy instances, images or backups) and finalise again",
			ingest.ErrTooLarge, humanize.IBytes(uint64(max(capacity.FreeBytes, 0))), humanize.IBytes(uint64(reserve)))
	}
	_, err = ingest.Extract(ctx, archive, dir, limits)
	if errors.Is(err, ingest.ErrTooLarge) {
		err = fmt.Errorf("%w (the filesystem has %s free, of which %s is kept for the instances)",
			err, humanize.IBytes(uint64(capacity.FreeBytes)), humanize.IBytes(uint64(reserve)))
	}
	if err != nil {
		return fmt.Errorf("extracting %s: %w", filepath.Base(archive.Name()), err)
	}
	return nil
}

// extractReserve is the disk an extraction leaves free, of a filesystem
// of total bytes, for the instances to write into: 5 %, and at least
// 1 GiB (a quarter of a filesystem under 4 GiB). It bounds what an archive
// may claim whatever limits.disk_reserve says; the configured reserve is
// enforced beside it while the extraction runs (guardReserve), with its
// own 503 naming it.
func extractReserve(total int64) int64 {
	return max(total/20, min(1<<30, total/4))
}

// discardVolumes destroys what a failed finalise of image id made: its
// upload volume (stopping a postmaster left on it) and an image volume a
// freeze may have left.
func (e *Engine) discardVolumes(ctx context.Context, id int64) {
	for _, name := range []string{UploadVolume(id), ImageVolume(id)} {
		err := e.stopVolume(ctx, name)
		if err == nil {
			err = e.opts.Storage.Destroy(ctx, name)
		}
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			e.log.Error("engine: removing what a failed finalise left", "image_id", id, "volume", name, "err", err)
		}
	}
}

func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			total += info.Size()
		}
		return nil
	})
	return total, err
}

// ScrubTimeout bounds the scrub after an anonymisation script: refreshing
// the materialized views, ANALYZE and VACUUM FULL of every database, then
// the new WAL.
const ScrubTimeout = 4 * time.Hour

// scriptTimeout bounds an anonymisation script.
const scriptTimeout = time.Hour

// preparePrivately starts the data directory on a private socket only,
// removes the settings per database and role that sindri does not keep,
// sets up role draupnir, rolls back the source's prepared transactions,
// runs the anonymisation script and the scrub after it (without a script,
// VACUUM (FREEZE, ANALYZE) of every database instead), checkpoints and
// shuts down cleanly; with a script, the scrub then gives it a new WAL
// and removes the files that repeat values (postgres/scrub.go says what
// the scrub removes, and why in that order). It tells whether the data
// was anonymised: a script ran and the scrub finished.
func (e *Engine) preparePrivately(ctx context.Context, img store.Image, dataDir, binDir string) (bool, error) {
	sock := filepath.Join(e.opts.RunDir, "image-"+strconv.FormatInt(img.ID, 10))
	if err := os.MkdirAll(sock, 0o700); err != nil {
		return false, err
	}
	defer os.RemoveAll(sock)
	if err := e.opts.Owner.Chown(sock, false); err != nil {
		return false, err
	}
	c := &postgres.Cluster{
		BinDir: binDir, DataDir: dataDir, SocketDir: sock, Owner: e.opts.Owner,
		Port: 5432, // only names the socket file
		Settings: postgres.Settings{ListenAddresses: "", SharedBuffers: e.opts.SharedBuffers,
			ClusterName: ImageVolume(img.ID), Clone: true},
	}
	// Enough prepared transactions to recover those the source left.
	prepared, err := c.PreparedTransactionsSetting(ctx)
	if err != nil {
		return false, err
	}
	c.Settings.PreparedTransactions = prepared
	if err := c.Configure(); err != nil {
		return false, err
	}
	p, err := c.Start()
	if err != nil {
		return false, err
	}
	defer postgres.StopAll(context.WithoutCancel(ctx), dataDir, time.Minute)
	// A backup that needs WAL replay recovers to consistency here; the
	// wait allows for it.
	ready, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	if err := c.WaitReady(ready, p); err != nil {
		return false, err
	}
	removed, err := c.GrantClientRole(ctx)
	if len(removed) > 0 {
		e.log.Info("engine: removed settings per database and role that sindri does not keep", "image_id", img.ID, "settings", strings.Join(removed, ", "))
	}
	if err != nil {
		return false, err
	}
	// The source's work in flight goes before the script runs.
	if err := c.RollBackPrepared(ctx); err != nil {
		return false, fmt.Errorf("rolling back the source's prepared transactions: %w", err)
	}
	script := img.AnonymisationScript != ""
	scrub := script && !e.opts.hooks.skipScrub
	if script {
		name, err := e.operationName(ctx, "anonymise", ImageVolume(img.ID))
		if err != nil {
			return false, err
		}
		scriptCtx, cancel := context.WithTimeout(ctx, scriptTimeout)
		err = c.RunScript(scriptCtx, img.AnonymisationScript, name)
		cancel()
		if err != nil {
			return false, fmt.Errorf("the anonymisation script failed: %w", err)
		}
	}
	if scrub {
		scrubCtx, cancel := context.WithTimeout(ctx, ScrubTimeout)
		err := c.ScrubDatabases(scrubCtx, func(db string, took time.Duration) {
			e.log.Info("engine: database scrubbed", "image_id", img.ID, "database", db, "duration_ms", took.Milliseconds())
		})
		cancel()
		if err != nil {
			return false, fmt.Errorf("scrubbing after the anonymisation script: %w", err)
		}
	}
	if !scrub {
		// The scrub's VACUUM (FULL, FREEZE) does this with an anonymised
		// image. ANALYZE would run the data's index expressions: not the
		// code an instance's user may have written.
		freezeCtx, cancel := context.WithTimeout(ctx, ScrubTimeout)
		err := c.FreezeDatabases(freezeCtx, !img.UserWritten, func(db string, took time.Duration) {
			e.log.Info("engine: database frozen and analysed", "image_id", img.ID, "database", db, "duration_ms", took.Milliseconds())
		})
		cancel()
		if err != nil {
			return false, fmt.Errorf("freezing the image's rows: %w", err)
		}
	}
	if err := c.Checkpoint(ctx); err != nil {
		return false, err
	}
	if err := c.Stop(ctx, time.Minute); err != nil {
		return false, err
	}
	if !scrub {
		return false, nil
	}
	started := time.Now()
	if err := c.ScrubFiles(ctx); err != nil {
		return false, fmt.Errorf("scrubbing after the anonymisation script: %w", err)
	}
	e.log.Info("engine: new WAL and files scrubbed", "image_id", img.ID, "duration_ms", time.Since(started).Milliseconds())
	return true, nil
}
