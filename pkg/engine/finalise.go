package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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
		if serr := e.opts.Store.SetImageStatus(ctx, id, img.Status, err.Error()); serr != nil {
			return img, errors.Join(err, serr)
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
// scrub.go), a checkpoint and a clean shutdown (so that clones start
// without crash recovery), then the freeze. It sets *anonymised when a
// script ran and the scrub finished. The caller removes the upload
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
	if err := checkBackupHasWAL(vol.Path); err != nil {
		return "", 0, err
	}
	// The postmaster's leftovers, and the signal files that would make the
	// private start a standby of the original (pg_basebackup -R) instead
	// of recovering to consistency and opening.
	for _, leftover := range []string{"postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal", "recovery.conf"} {
		os.Remove(filepath.Join(vol.Path, leftover))
	}
	if err := e.opts.Owner.Chown(vol.Path, true); err != nil {
		return "", 0, err
	}
	if err := os.Chmod(vol.Path, 0o700); err != nil {
		return "", 0, err
	}
	if *anonymised, err = e.preparePrivately(ctx, img, vol.Path, binDir); err != nil {
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

// walSegment is the name of a WAL segment file in pg_wal.
var walSegment = regexp.MustCompile(`^[0-9A-F]{24}$`)

// checkBackupHasWAL refuses an online backup (one with backup_label)
// whose pg_wal holds no WAL segment: it cannot recover to consistency.
// pg_basebackup -Ft puts the WAL in pg_wal.tar unless given -X fetch.
func checkBackupHasWAL(dataDir string) error {
	if _, err := os.Lstat(filepath.Join(dataDir, "backup_label")); err != nil {
		return nil
	}
	entries, _ := os.ReadDir(filepath.Join(dataDir, "pg_wal"))
	for _, de := range entries {
		if de.Type().IsRegular() && walSegment.MatchString(de.Name()) {
			return nil
		}
	}
	return errors.New("the upload is an online backup (it has backup_label) without the WAL it needs: pg_wal/ holds no WAL segment. pg_basebackup -Ft writes the WAL to pg_wal.tar unless it is given -X fetch: take the backup with -X fetch, or put the files of pg_wal.tar into pg_wal/ of the data directory and upload that")
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

// preparePrivately starts the data directory on a private socket only,
// sets up role draupnir, runs the anonymisation script and the scrub
// after it, checkpoints and shuts down cleanly; with a script, the scrub
// then gives it a new WAL. It tells whether the data was anonymised: a
// script ran and the scrub finished.
func (e *Engine) preparePrivately(ctx context.Context, img store.Image, dataDir, binDir string) (bool, error) {
	sock := filepath.Join(e.opts.RunDir, "image-"+strconv.FormatInt(img.ID, 10))
	if err := os.MkdirAll(sock, 0o700); err != nil {
		return false, err
	}
	defer os.RemoveAll(sock)
	if err := e.opts.Owner.Chown(sock, false); err != nil {
		return false, err
	}
	const port = 5432 // only names the socket file
	prepared, err := postgres.PreparedTransactionsSetting(ctx, binDir, dataDir)
	if err != nil {
		return false, err
	}
	settings := postgres.Settings{Port: port, ListenAddresses: "", SocketDir: sock,
		SharedBuffers: e.opts.SharedBuffers, ClusterName: ImageVolume(img.ID), Clone: true,
		PreparedTransactions: prepared}
	if err := postgres.Configure(dataDir, settings, e.opts.Owner); err != nil {
		return false, err
	}
	p, err := postgres.Start(binDir, dataDir, settings, e.opts.Owner)
	if err != nil {
		return false, err
	}
	defer postgres.StopAll(context.WithoutCancel(ctx), dataDir, time.Minute)
	// A backup that needs WAL replay recovers to consistency here; the
	// wait allows for it.
	ready, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	if err := postgres.WaitReady(ready, p, dataDir, sock, port, "postgres"); err != nil {
		return false, err
	}
	url := postgres.SuperuserURL(sock, port, "postgres")
	if err := e.removeRoleSettings(ctx, img.ID, url); err != nil {
		return false, err
	}
	if err := grantClientRole(ctx, url); err != nil {
		return false, err
	}
	// The source's prepared transactions are its work in flight: they
	// would hold their locks and row versions through the script, and no
	// clone (max_prepared_transactions = 0) could start with them.
	if err := rollBackPrepared(ctx, url); err != nil {
		return false, fmt.Errorf("rolling back the source's prepared transactions: %w", err)
	}
	script := img.AnonymisationScript != ""
	scrub := script && !e.opts.hooks.skipScrub
	if script {
		if err := e.anonymise(ctx, img.ID, binDir, sock, port, img.AnonymisationScript); err != nil {
			return false, err
		}
	}
	if scrub {
		scrubCtx, cancel := context.WithTimeout(ctx, ScrubTimeout)
		err := e.scrubDatabases(scrubCtx, img.ID, url)
		cancel()
		if err != nil {
			return false, fmt.Errorf("scrubbing after the anonymisation script: %w", err)
		}
	}
	conn, err := privateConn(ctx, url, "")
	if err != nil {
		return false, err
	}
	_, err = conn.Exec(ctx, "CHECKPOINT")
	conn.Close(ctx)
	if err != nil {
		return false, err
	}
	if err := postgres.Stop(ctx, dataDir, time.Minute); err != nil {
		return false, err
	}
	if !scrub {
		return false, nil
	}
	started := time.Now()
	if err := e.scrubFiles(ctx, binDir, dataDir); err != nil {
		return false, fmt.Errorf("scrubbing after the anonymisation script: %w", err)
	}
	e.log.Info("engine: new WAL and files scrubbed", "image_id", img.ID, "duration_ms", time.Since(started).Milliseconds())
	return true, nil
}
