package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sindri-db/sindri/pkg/ingest"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// More classified errors of the engine.
var (
	ErrImageHasInstances = errors.New("image has instances")
	ErrImageNotPending   = errors.New("image no longer accepts uploads")
	ErrFinaliseFailed    = errors.New("finalising the image failed")
	ErrUploadInterrupted = errors.New("the upload was interrupted")
)

// UploadVolume names the writable volume an image's data is prepared in
// before it is frozen.
func UploadVolume(id int64) string { return "upload-" + strconv.FormatInt(id, 10) }

// UploadFile is the name of the tarball that PUT /images/{id}/upload
// writes into the image's upload directory; scp may add others.
const UploadFile = "upload.tar"

// UploadTempPrefix starts the name of the file an HTTP upload is received
// into before it becomes UploadFile; one left by a crash is swept.
const UploadTempPrefix = ".upload-"

// ImageRequest is what a caller asks for when creating an image.
type ImageRequest struct {
	Name                string
	BackedUpAt          time.Time
	AnonymisationScript string
	// SourceURL, when set, is a libpq connection string (postgres:// URL
	// or key=value) of a running server that finalising pulls the data
	// from with pg_basebackup instead of taking an uploaded tarball.
	SourceURL string
	// BackupID, when set, names a finished backup whose archive becomes
	// the image's upload: a restore.
	BackupID int64
}

func (e *Engine) uploadDir(id int64) string {
	return filepath.Join(e.opts.UploadsDir, strconv.FormatInt(id, 10))
}

// CreateImage records a pending image and makes its upload directory and
// its empty upload volume.
func (e *Engine) CreateImage(ctx context.Context, req ImageRequest) (store.Image, error) {
	var redacted string
	if req.SourceURL != "" {
		src, err := parseSource(req.SourceURL)
		if err != nil {
			return store.Image{}, err
		}
		redacted = src.connString
	}
	switch {
	case req.SourceURL != "":
		if err := e.CheckDiskReserve(ctx, 0, "a pull from a source server"); err != nil {
			return store.Image{}, err
		}
	case req.BackupID != 0:
		if err := e.CheckDiskReserve(ctx, 0, "a restore"); err != nil {
			return store.Image{}, err
		}
	}
	var backup *os.File // the archive a restore takes, opened before anything is recorded
	var userWritten bool
	if req.BackupID != 0 {
		if req.SourceURL != "" {
			return store.Image{}, fmt.Errorf("%w: give source_url or backup_id, not both", ErrInvalid)
		}
		var b store.Backup
		var err error
		if backup, b, err = e.OpenBackup(ctx, req.BackupID); err != nil {
			return store.Image{}, err
		}
		defer backup.Close()
		if err := scriptAllowedOn(b, req.AnonymisationScript); err != nil {
			return store.Image{}, err
		}
		userWritten = b.UserWritten
	}
	img, err := e.opts.Store.CreateImage(ctx, store.ImageInput{
		Name: req.Name, BackedUpAt: req.BackedUpAt, AnonymisationScript: req.AnonymisationScript,
		SourceURL: req.SourceURL, SourceURLRedacted: redacted, BackupID: req.BackupID, UserWritten: userWritten,
	})
	if err != nil {
		return store.Image{}, err
	}
	unlock := e.imageLocks.Lock(img.ID)
	defer unlock()
	if err := os.MkdirAll(e.uploadDir(img.ID), 0o750); err != nil {
		return store.Image{}, err
	}
	if backup != nil {
		if err := linkBackup(backup, e.uploadDir(img.ID)); err != nil {
			return store.Image{}, errors.Join(err, e.opts.Store.SetImageStatus(ctx, img.ID, store.ImageFailed, "restoring backup: "+err.Error()))
		}
	}
	if err := e.openUploadDir(img.ID); err != nil {
		return store.Image{}, err
	}
	vol, err := e.opts.Storage.Create(ctx, UploadVolume(img.ID))
	if err != nil && !errors.Is(err, storage.ErrExists) {
		return store.Image{}, err
	}
	if err == nil {
		if err := e.recordImageVolume(ctx, vol.Path, img); err != nil {
			return store.Image{}, err
		}
	}
	e.audit(ctx, "create_image", "image", img.ID, "ok", "")
	return img, nil
}

// scriptAllowedOn refuses an anonymisation script on a restore of a backup
// whose data an instance's user could have written: the script runs as
// superuser, and every trigger, rule, function or operator the user
// planted for it would run so too. Such a restore is made without a
// script, and is not anonymised.
func scriptAllowedOn(b store.Backup, script string) error {
	if script == "" || !b.UserWritten {
		return nil
	}
	of := fmt.Sprintf("is of instance %d", b.InstanceID)
	if b.InstanceID == 0 {
		of = fmt.Sprintf("is of image %d, which was restored from an instance's backup", b.ImageID)
	}
	return fmt.Errorf("%w: backup %d %s: its users could have planted triggers, functions or operators that an anonymisation script, run as superuser, would fire. Restore it without anonymisation_script (the image is then not anonymised), or anonymise a data directory that came from outside sindri's instances", ErrInvalid, b.ID, of)
}

// UploadImage streams body into the image's upload directory, replacing
// an earlier upload. Only a pending or failed image takes uploads.
func (e *Engine) UploadImage(ctx context.Context, id int64, body io.Reader) (int64, error) {
	if err := e.acceptsUpload(ctx, id); err != nil {
		return 0, err
	}
	if err := e.CheckDiskReserve(ctx, 0, "an upload"); err != nil {
		return 0, err
	}
	dir := e.uploadDir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	// Received without the image's lock (a slow upload must not hold up
	// the image), then checked again and put in place under it.
	tmp, err := os.CreateTemp(dir, UploadTempPrefix+"*")
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	e.uploading[tmp.Name()] = true
	e.mu.Unlock()
	defer func() {
		os.Remove(tmp.Name())
		e.mu.Lock()
		delete(e.uploading, tmp.Name())
		e.mu.Unlock()
	}()
	dst := &writeErr{w: e.guardWriter(ctx, tmp, "an upload")}
	n, err := io.Copy(dst, body)
	if err != nil {
		tmp.Close()
		if dst.err != nil {
			// Our side failed (ENOSPC, EIO…): keep the errno in the
			// chain so that it is classified (no disk space is a 503).
			return n, fmt.Errorf("image %d: writing the upload after %d bytes: %w", id, n, err)
		}
		// The client's side: it went away or sent a broken body.
		return n, fmt.Errorf("%w after %d bytes: %w", ErrUploadInterrupted, n, err)
	}
	if err := tmp.Close(); err != nil {
		return n, err
	}
	unlock := e.imageLocks.Lock(id)
	defer unlock()
	if err := e.acceptsUpload(ctx, id); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, UploadFile)); errors.Is(err, fs.ErrNotExist) {
		// A finalise that ended while this was received removed it with
		// the rest of the upload.
		return 0, fmt.Errorf("%w: image %d was finalised while this upload was received, which removed it; upload again", ErrImageNotPending, id)
	} else if err != nil {
		return n, err
	}
	e.log.Info("engine: image upload received", "image_id", id, "bytes", n)
	return n, nil
}

// writeErr is an io.Writer that remembers its writer's error, so that a
// failed copy can tell a failed write from a failed read.
type writeErr struct {
	w   io.Writer
	err error
}

func (w *writeErr) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

// acceptsUpload tells whether the image takes an upload: pending or failed.
func (e *Engine) acceptsUpload(ctx context.Context, id int64) error {
	img, err := e.getImage(ctx, id)
	if err != nil {
		return err
	}
	if img.Status != store.ImagePending && img.Status != store.ImageFailed {
		return fmt.Errorf("%w: image %d is %s", ErrImageNotPending, id, img.Status)
	}
	return nil
}

func (e *Engine) getImage(ctx context.Context, id int64) (store.Image, error) {
	img, err := e.opts.Store.GetImage(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return img, fmt.Errorf("%w: image %d", ErrNotFound, id)
	}
	return img, err
}

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
	case img.HasSourceURL:
		return fmt.Sprintf("the uploaded tarball was removed: POST /images/%d/done pulls from the source server again", img.ID)
	}
	return fmt.Sprintf("the upload was removed: upload the data directory again (PUT /images/%d/upload, or scp), then POST /images/%d/done", img.ID, img.ID)
}

// hasUpload tells whether the image's upload directory holds anything.
func (e *Engine) hasUpload(id int64) bool {
	entries, _ := os.ReadDir(e.uploadDir(id))
	return len(entries) > 0
}

// removeUpload removes what the image's upload directory holds: the
// archive, anything else scp put there, unfinished HTTP uploads. The
// directory itself stays, root's and closed unless openUploadDir hands it
// back.
func (e *Engine) removeUpload(id int64) error {
	dir := e.uploadDir(id)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, de.Name())))
	}
	return errors.Join(errs...)
}

func (e *Engine) getImageOr(ctx context.Context, id int64, fallback store.Image) store.Image {
	if img, err := e.opts.Store.GetImage(ctx, id); err == nil {
		return img
	}
	return fallback
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
	if err != nil && !img.HasSourceURL {
		return "", 0, err
	}
	if err == nil {
		defer archive.Close()
	} else {
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

// findArchive opens the upload: the HTTP upload, or else the single file
// that scp put into the upload directory. The upload account can write
// that directory, so nothing in it is trusted: a symbolic link (which
// could point at a file only root may read) is never followed, and only a
// regular file is taken.
func (e *Engine) findArchive(id int64) (*os.File, error) {
	dir := e.uploadDir(id)
	if fi, err := os.Lstat(filepath.Join(dir, UploadFile)); err == nil && fi.Mode().IsRegular() {
		return openRegular(filepath.Join(dir, UploadFile))
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var files, ignored []string
	for _, de := range entries {
		switch {
		case strings.HasPrefix(de.Name(), "."):
		case de.Type().IsRegular():
			files = append(files, de.Name())
		case de.Type()&os.ModeSymlink != 0:
			ignored = append(ignored, de.Name()+" (a symbolic link)")
		case de.IsDir():
			ignored = append(ignored, de.Name()+" (a directory)")
		default:
			ignored = append(ignored, de.Name()+" (not a regular file)")
		}
	}
	switch len(files) {
	case 0:
		if len(ignored) > 0 {
			return nil, fmt.Errorf("image %d has no uploaded tarball: only %s, which is not taken; upload the tarball itself as a regular file", id, strings.Join(ignored, ", "))
		}
		return nil, fmt.Errorf("nothing was uploaded for image %d (PUT /images/%d/upload, or scp a tarball into %s)", id, id, dir)
	case 1:
		return openRegular(filepath.Join(dir, files[0]))
	}
	return nil, fmt.Errorf("image %d has %d uploaded files (%s); leave exactly one tarball", id, len(files), strings.Join(files, ", "))
}

// openRegular opens path for reading without following a final symbolic
// link (O_NOFOLLOW) or blocking on a FIFO (O_NONBLOCK), and refuses
// anything but a regular file.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("the upload %s is a symbolic link, which is not followed; upload the tarball itself", filepath.Base(path))
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("the upload %s is not a regular file (%s); upload the tarball itself", filepath.Base(path), fi.Mode().Type())
	}
	return f, nil
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
	scrub := script && !e.opts.skipScrub
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

// removeRoleSettings removes from the data's catalog the settings per
// database and role that sindri does not keep (see
// postgres.RemoveUnsafeRoleSettings), before anything else runs in it.
func (e *Engine) removeRoleSettings(ctx context.Context, id int64, superuserURL string) error {
	conn, err := pgx.Connect(ctx, superuserURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	removed, err := postgres.RemoveUnsafeRoleSettings(ctx, conn)
	if len(removed) > 0 {
		e.log.Info("engine: removed settings per database and role that sindri does not keep", "image_id", id, "settings", strings.Join(removed, ", "))
	}
	return err
}

// grantClientRole creates role draupnir (no login yet: each instance
// gives it one) and, in every database that takes connections, read and
// write on all tables, sequences and schemas, now and for objects the
// owners make later; owners stay as they were.
func grantClientRole(ctx context.Context, superuserURL string) error {
	// With the scrub's settings: search_path pinned to pg_catalog, so that
	// no function or operator the data's owners made is picked instead of
	// the built-in one (a public."!~~"(name, name) would be, for NOT LIKE
	// below), and their triggers and event triggers do not fire.
	conn, err := privateConn(ctx, superuserURL, "")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	role := pgx.Identifier{postgres.ClientRole}.Sanitize()
	if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN CREATE ROLE %s; END IF;
	END$$`, postgres.ClientRole, role)); err != nil {
		return err
	}
	rows, err := conn.Query(ctx, "select datname from pg_database where datallowconn order by datname")
	if err != nil {
		return err
	}
	databases, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, db := range databases {
		dbConn, err := privateConn(ctx, superuserURL, db)
		if err != nil {
			return err
		}
		if untrusted, err := postgres.UntrustedLibraries(ctx, dbConn); err != nil || len(untrusted) > 0 {
			dbConn.Close(ctx)
			if err != nil {
				return err
			}
			return fmt.Errorf("database %s has C functions whose library is not one of the server's own, which sindri does not serve (a client's call would load the file as the postgres OS user): %s; drop them, or install their extension and name its library as $libdir/NAME",
				db, strings.Join(untrusted, "; "))
		}
		err = withoutAlwaysEventTriggers(ctx, dbConn, func() error { return grantInDatabase(ctx, dbConn, role) })
		dbConn.Close(ctx)
		if err != nil {
			return fmt.Errorf("granting %s on database %s: %w", postgres.ClientRole, db, err)
		}
	}
	return nil
}

// withoutAlwaysEventTriggers runs fn with the database's event triggers
// that fire ALWAYS disabled, and enables them again after: sindri's
// sessions run in replica mode (postgres.SessionOptions), where the others
// do not fire, and the data's own code must not run as the superuser
// while sindri's grants do.
func withoutAlwaysEventTriggers(ctx context.Context, conn *pgx.Conn, fn func() error) error {
	rows, err := conn.Query(ctx, "select evtname from pg_catalog.pg_event_trigger where evtenabled = 'A'")
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, name := range names {
		if _, err := conn.Exec(ctx, "ALTER EVENT TRIGGER "+pgx.Identifier{name}.Sanitize()+" DISABLE"); err != nil {
			return err
		}
	}
	err = fn()
	for _, name := range names {
		if _, eerr := conn.Exec(ctx, "ALTER EVENT TRIGGER "+pgx.Identifier{name}.Sanitize()+" ENABLE ALWAYS"); eerr != nil {
			err = errors.Join(err, eerr)
		}
	}
	return err
}

func grantInDatabase(ctx context.Context, conn *pgx.Conn, role string) error {
	rows, err := conn.Query(ctx, `select nspname, pg_get_userbyid(nspowner) from pg_namespace
		where nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
		  and nspname not like 'pg_temp_%' and nspname not like 'pg_toast_temp_%'`)
	if err != nil {
		return err
	}
	type schema struct{ name, owner string }
	schemas, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (schema, error) {
		var s schema
		return s, r.Scan(&s.name, &s.owner)
	})
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("GRANT CONNECT, TEMPORARY, CREATE ON DATABASE %s TO %s",
		pgx.Identifier{conn.Config().Database}.Sanitize(), role)); err != nil {
		return err
	}
	for _, s := range schemas {
		n, owner := pgx.Identifier{s.name}.Sanitize(), pgx.Identifier{s.owner}.Sanitize()
		for _, stmt := range []string{
			"GRANT USAGE, CREATE ON SCHEMA %[1]s TO %[2]s",
			"GRANT ALL ON ALL TABLES IN SCHEMA %[1]s TO %[2]s",
			"GRANT ALL ON ALL SEQUENCES IN SCHEMA %[1]s TO %[2]s",
			"GRANT ALL ON ALL FUNCTIONS IN SCHEMA %[1]s TO %[2]s",
			"ALTER DEFAULT PRIVILEGES FOR ROLE %[3]s IN SCHEMA %[1]s GRANT ALL ON TABLES TO %[2]s",
			"ALTER DEFAULT PRIVILEGES FOR ROLE %[3]s IN SCHEMA %[1]s GRANT ALL ON SEQUENCES TO %[2]s",
		} {
			if _, err := conn.Exec(ctx, fmt.Sprintf(stmt, n, role, owner)); err != nil {
				return err
			}
		}
	}
	return nil
}

// anonymise runs the script with psql as the superuser, stopping at the
// first error (its \c lines switch databases as they would for a person).
func (e *Engine) anonymise(ctx context.Context, imageID int64, binDir, sock string, port int, script string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", sock, "-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PGOPTIONS=-c client_min_messages=warning"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: e.opts.Owner.UID, Gid: e.opts.Owner.GID}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := runOperation(cmd, "anonymise "+ImageVolume(imageID)); err != nil {
		return fmt.Errorf("the anonymisation script failed: %s", strings.TrimSpace(out.String()))
	}
	return nil
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

// ImageDestroySteps are DestroyImage's steps after its intent is
// recorded, for crash tests.
var ImageDestroySteps = []string{"image-destroy-recorded", "image-instances-destroyed"}

// DestroyImage destroys an image, its upload and its record. While it has
// instances it is refused, unless force, which destroys them first. The
// image is marked destroying before anything goes: no instance is cloned
// from it meanwhile, and Reconcile finishes a destroy cut short.
func (e *Engine) DestroyImage(ctx context.Context, id int64, force bool) (err error) {
	unlock := e.imageLocks.Lock(id)
	defer unlock()
	img, err := e.getImage(ctx, id)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			e.auditFailure(ctx, "destroy_image", "image", id, err)
		}
	}()
	if img.Status != store.ImageDestroying {
		of, err := e.instancesOf(ctx, id)
		if err != nil {
			return err
		}
		if len(of) > 0 && !force {
			return fmt.Errorf("%w: image %d has %d instance(s)", ErrImageHasInstances, id, len(of))
		}
		if err := e.opts.Store.SetImageStatus(ctx, id, store.ImageDestroying, ""); err != nil {
			return err
		}
	}
	e.step("image-destroy-recorded", id)
	if err := e.finishImageDestroy(ctx, id); err != nil {
		if errors.Is(err, ErrBackupRunning) {
			// The image's own data did not go (its instances may have,
			// with force): it stays as it was.
			err = errors.Join(err, e.opts.Store.SetImageStatus(context.WithoutCancel(ctx), id, img.Status, img.Error))
		}
		return err
	}
	e.audit(ctx, "destroy_image", "image", id, "ok", "")
	return nil
}

func (e *Engine) instancesOf(ctx context.Context, imageID int64) ([]store.Instance, error) {
	instances, err := e.opts.Store.ListInstances(ctx, "")
	if err != nil {
		return nil, err
	}
	var of []store.Instance
	for _, inst := range instances {
		if inst.ImageID == imageID {
			of = append(of, inst)
		}
	}
	return of, nil
}

// finishImageDestroy destroys what an image marked destroying still has:
// its instances, its volumes, its upload directory, then its record. The
// caller holds the image's lock.
func (e *Engine) finishImageDestroy(ctx context.Context, id int64) error {
	of, err := e.instancesOf(ctx, id)
	if err != nil {
		return err
	}
	for _, inst := range of {
		if err := e.DestroyInstance(ctx, inst.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	e.step("image-instances-destroyed", id)
	img, err := e.getImage(ctx, id)
	if err != nil {
		return err
	}
	for _, name := range []string{ImageVolume(id), UploadVolume(id)} {
		if vol, err := e.opts.Storage.Get(ctx, name); err == nil {
			if err := e.checkImageVolume(ctx, vol.Path, img); err != nil {
				return err
			}
		}
		err := e.opts.Storage.Destroy(ctx, name)
		if errors.Is(err, storage.ErrHasClones) && e.backupReads(ctx, name) {
			return fmt.Errorf("%w: a backup of image %d is being written; destroy it once the backup is done", ErrBackupRunning, id)
		}
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	if err := os.RemoveAll(e.uploadDir(id)); err != nil {
		return err
	}
	if err := e.opts.Store.DeleteImage(ctx, id); errors.Is(err, store.ErrInUse) {
		return fmt.Errorf("%w: an instance of image %d was made meanwhile", ErrImageHasInstances, id)
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// audit records an operation; a failure to record is logged, not fatal.
func (e *Engine) audit(ctx context.Context, action, targetType string, targetID int64, outcome, detail string) {
	err := e.opts.Store.Audit(ctx, store.AuditEntry{
		Actor: actorFrom(ctx), Action: action, TargetType: targetType, TargetID: targetID,
		Outcome: outcome, Detail: detail,
	})
	if err != nil {
		e.log.Error("engine: audit", "action", action, "err", err)
	}
}

// auditFailure records an operation that did not happen: "refused" when
// the engine said no (the state forbids it), "failed" when it went wrong.
func (e *Engine) auditFailure(ctx context.Context, action, targetType string, targetID int64, err error) {
	outcome := "failed"
	if errors.Is(err, ErrImageHasInstances) || errors.Is(err, ErrBackupRunning) || errors.Is(err, ErrInvalid) ||
		errors.Is(err, ErrQuotaExceeded) || errors.Is(err, ErrNoDiskSpace) {
		outcome = "refused"
	}
	e.audit(context.WithoutCancel(ctx), action, targetType, targetID, outcome, err.Error())
}

type actorKey struct{}

// WithActor names who acts for the audit log.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "sindrid"
}

// UploadAccount is the OS account that uploads with scp through sshd,
// which runs sindri-upload-shell for it, confined to the uploads directory.
type UploadAccount struct {
	Name     string
	UID, GID uint32
}

// SetUploadAccount turns scp uploads on: from now on a pending or failed
// image's upload directory is root:<account's group> 0770, writable by the
// account but not its to chmod, and a finalising or ready image's is
// root:root 0750. The uploads directory itself is made root's, mode 0755.
// Every directory above it must be root's, not writable by group or
// others (or another user could put a directory of their own in its
// place) and searchable by others (or the account cannot reach it): what
// is not is returned as a warning.
func (e *Engine) SetUploadAccount(a UploadAccount) (warning string, err error) {
	if a.UID == 0 {
		return "", fmt.Errorf("upload account %q is root", a.Name)
	}
	dir := e.opts.UploadsDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Lchown(dir, 0, 0); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	e.mu.Lock()
	e.uploadAcct = &a
	e.mu.Unlock()
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
			warning = fmt.Sprintf("%s is not root's or is writable by group or others (%s): another user could swap the uploads directory %s for their own", p, fi.Mode().Perm(), dir)
			break
		}
		if fi.Mode().Perm()&0o001 == 0 {
			warning = fmt.Sprintf("%s is not searchable by others (%s): the upload account cannot reach %s", p, fi.Mode().Perm(), dir)
			break
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	return warning, nil
}

// uploadAccount is the account set by SetUploadAccount; none means scp
// uploads are off and upload directories stay root's.
func (e *Engine) uploadAccount() (UploadAccount, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.uploadAcct == nil {
		return UploadAccount{}, false
	}
	return *e.uploadAcct, true
}

// openUploadDir lets the upload account write the image's upload
// directory (pending, or failed and to be uploaded again).
func (e *Engine) openUploadDir(id int64) error {
	a, ok := e.uploadAccount()
	if !ok {
		return nil
	}
	dir := e.uploadDir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if err := os.Lchown(dir, 0, int(a.GID)); err != nil {
		return err
	}
	return os.Chmod(dir, 0o770)
}

// closeUploadDir takes the image's upload directory back from the upload
// account: root:root 0750, so that nothing more can be written into it
// while it is finalised or once it is ready.
func (e *Engine) closeUploadDir(id int64) error {
	if _, ok := e.uploadAccount(); !ok {
		return nil
	}
	dir := e.uploadDir(id)
	if err := os.Lchown(dir, 0, 0); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Chmod(dir, 0o750); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// PullTimeout bounds one pg_basebackup from an image's source server.
const PullTimeout = 4 * time.Hour

// source is a parsed source_url: the connection string handed to
// pg_basebackup, without its password, which goes in PGPASSWORD instead
// (so that it shows in no process list), and is kept out of every message.
type source struct {
	connString string
	password   string
}

// redact removes the source's password from a message, whatever quoted it.
func (s source) redact(msg string) string {
	if s.password == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, s.password, "********")
	if esc := url.QueryEscape(s.password); esc != s.password {
		msg = strings.ReplaceAll(msg, esc, "********")
	}
	if esc := url.PathEscape(s.password); esc != s.password {
		msg = strings.ReplaceAll(msg, esc, "********")
	}
	return msg
}

// RedactSourceURL is a source_url without its password, or "" if it is
// not a connection string: the form kept for the record once the pull is
// over.
func RedactSourceURL(s string) string {
	src, err := parseSource(s)
	if err != nil {
		return ""
	}
	return src.connString
}

// passwordSetting is a password=... setting of a key=value connection
// string: a value unquoted or in single quotes with backslash escapes.
var (
	passwordSetting = regexp.MustCompile(`(^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)`)
	backslashEscape = regexp.MustCompile(`\\(.)`)
)

// parseSource checks a source_url: a postgres:// or postgresql:// URL, or
// a key=value connection string. The error never repeats the text, which
// may hold a password.
func parseSource(s string) (source, error) {
	invalid := fmt.Errorf("%w: source_url is not a PostgreSQL connection string; give a URL such as postgres://user:password@host:5432/postgres, or key=value settings such as host=db.example.com user=replicator", ErrInvalid)
	var src source
	switch {
	case strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://"):
		u, err := url.Parse(s)
		if err != nil {
			return src, invalid
		}
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				src.password = pw
				u.User = url.User(u.User.Username())
			}
		}
		if q := u.Query(); q.Has("password") {
			src.password = q.Get("password")
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		src.connString = u.String()
	case strings.Contains(s, "="):
		for _, m := range passwordSetting.FindAllStringSubmatch(s, -1) {
			v := m[2]
			if strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") && len(v) >= 2 {
				v = v[1 : len(v)-1]
			}
			src.password = backslashEscape.ReplaceAllString(v, "$1")
		}
		src.connString = strings.TrimSpace(passwordSetting.ReplaceAllString(s, "$1"))
	default:
		return src, invalid
	}
	if _, err := pgconn.ParseConfig(s); err != nil {
		return src, invalid
	}
	return src, nil
}

// pullBaseBackup fills the empty data directory dir with pg_basebackup
// (the newest installed major: it reads older servers too) from the
// image's source server, as the postgres OS user, streaming the WAL the
// backup needs so that the private start recovers to consistency.
func (e *Engine) pullBaseBackup(ctx context.Context, imageID int64, sourceURL, dir string) error {
	src, err := parseSource(sourceURL)
	if err != nil {
		return err
	}
	major, err := postgres.NewestMajor(e.opts.BinPattern)
	if err != nil {
		return err
	}
	binDir, err := postgres.BinDir(e.opts.BinPattern, major)
	if err != nil {
		return err
	}
	if err := e.opts.Owner.Chown(dir, false); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, PullTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_basebackup"),
		"-d", src.connString, "-D", dir, "-X", "stream", "--checkpoint=fast", "--no-password")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PGPASSFILE=/dev/null", "PGSERVICEFILE=/dev/null"}
	if src.password != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+src.password)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: e.opts.Owner.UID, Gid: e.opts.Owner.GID}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := time.Now()
	e.log.Info("engine: pulling a base backup", "image_id", imageID, "source", src.connString)
	if err := runOperation(cmd, "pull "+ImageVolume(imageID)); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 4096 {
			msg = "..." + msg[len(msg)-4096:]
		}
		if msg == "" {
			msg = err.Error()
		}
		if ctx.Err() == context.DeadlineExceeded {
			msg = fmt.Sprintf("gave up after %s: %s", PullTimeout, msg)
		}
		return errors.New(src.redact(fmt.Sprintf("pg_basebackup from %s failed: %s", src.connString, msg)))
	}
	e.log.Info("engine: base backup pulled", "source", src.connString, "duration_ms", time.Since(started).Milliseconds())
	return nil
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
