package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// BackupRequest names what to back up: exactly one of an instance and an
// image.
type BackupRequest struct {
	InstanceID int64
	ImageID    int64
	Owner      string
}

// backupRun is a backup being written, which DeleteBackup can stop.
type backupRun struct {
	source string // the volume or image it reads
	cancel context.CancelFunc
	done   chan struct{}
}

// CreateBackup takes a consistent copy of a running instance or a ready
// image without stopping anything: a snapshot of its volume, taken under
// its lock before this returns, so the backup holds the data as it was at
// the call. The snapshot is then written as a tar.zst into BackupsDir in
// the background, detached from ctx; the backup is running until it is
// done (with its size and SHA-256) or failed.
func (e *Engine) CreateBackup(ctx context.Context, req BackupRequest) (store.Backup, error) {
	if (req.InstanceID == 0) == (req.ImageID == 0) {
		return store.Backup{}, fmt.Errorf("%w: name exactly one of instance_id and image_id", ErrInvalid)
	}
	if err := os.MkdirAll(e.opts.BackupsDir, 0o700); err != nil {
		return store.Backup{}, err
	}
	// Shared with other backups, exclusive to reconcile: a backup between
	// its record and its registration must not look abandoned.
	e.backupMu.RLock()
	defer e.backupMu.RUnlock()
	source, userWritten, unlock, err := e.lockBackupSource(ctx, req)
	if err != nil {
		return store.Backup{}, err
	}
	defer unlock()
	capacity, err := e.capacity(ctx)
	if err != nil {
		return store.Backup{}, err
	}
	if err := e.reserveRefusal(capacity, 0, "a new backup refused"); err != nil {
		e.auditBackupRefusal(ctx, req, err)
		return store.Backup{}, err
	}
	// Counted in the insert's transaction, as instances are.
	b, err := e.opts.Store.CreateBackup(ctx, store.BackupInput{
		InstanceID: req.InstanceID, ImageID: req.ImageID, Owner: req.Owner, UserWritten: userWritten,
		Quota: e.backupQuota(req.Owner, capacity),
	})
	if err != nil {
		err = e.quotaRefusal(ctx, err)
		if errors.Is(err, ErrQuotaExceeded) {
			e.auditBackupRefusal(ctx, req, err)
		}
		return b, err
	}
	snap, err := e.opts.Storage.Snapshot(ctx, source, BackupVolume(b.ID))
	if err != nil {
		msg := fmt.Sprintf("snapshotting %s: %v", source, err)
		e.failBackup(ctx, b.ID, msg)
		return b, fmt.Errorf("backup %d: %s", b.ID, msg)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	run := &backupRun{source: source, cancel: cancel, done: make(chan struct{})}
	e.mu.Lock()
	e.backups[b.ID] = run
	e.mu.Unlock()
	go func() {
		defer close(run.done)
		defer cancel()
		e.backupSnapshotted(b.ID)
		e.writeBackup(runCtx, b.ID, snap)
		e.mu.Lock()
		delete(e.backups, b.ID)
		e.mu.Unlock()
	}()
	e.log.Info("engine: backup started", "backup_id", b.ID, "source", source)
	return b, nil
}

// lockBackupSource checks that the source can be backed up and holds its
// lock; it returns the source's storage name, whether its data may hold
// what an instance's user wrote, and the lock's release.
func (e *Engine) lockBackupSource(ctx context.Context, req BackupRequest) (string, bool, func(), error) {
	if req.ImageID != 0 {
		unlock := e.imageLocks.Lock(req.ImageID)
		img, err := e.getImage(ctx, req.ImageID)
		if err == nil && img.Status != store.ImageReady {
			err = fmt.Errorf("%w: image %d is %s; only a ready image can be backed up", ErrImageNotReady, img.ID, img.Status)
		}
		if err != nil {
			unlock()
			return "", false, nil, err
		}
		if vol, err := e.opts.Storage.Get(ctx, ImageVolume(img.ID)); err == nil {
			if err := e.checkImageVolume(ctx, vol.Path, img); err != nil {
				unlock()
				return "", false, nil, err
			}
		}
		return ImageVolume(img.ID), img.UserWritten, unlock, nil
	}
	unlock := e.locks.Lock(req.InstanceID)
	inst, err := e.GetInstance(ctx, req.InstanceID)
	if err == nil {
		switch inst.Status {
		case store.InstanceRunning, store.InstanceStopped, store.InstanceFailed:
		default:
			err = fmt.Errorf("%w: instance %d is %s; try again once it is running", ErrNotBackupReady, inst.ID, inst.Status)
		}
	}
	if err == nil {
		var why string
		if why, err = e.notItsVolume(ctx, inst.ID); err == nil && why != "" {
			err = fmt.Errorf("%w: %s", ErrNotItsVolume, why)
		}
	}
	if err != nil {
		unlock()
		return "", false, nil, err
	}
	if inst.Status == store.InstanceRunning {
		e.flushWAL(ctx, inst)
	}
	return InstanceVolume(inst.ID), true, unlock, nil
}

// flushWAL makes every commit so far durable before a snapshot: clones
// commit with synchronous_commit off, so the last commits' WAL may still
// be in Postgres's buffers, where a snapshot cannot see it. Should it
// fail, the snapshot is still consistent, only without those last
// commits.
func (e *Engine) flushWAL(ctx context.Context, inst store.Instance) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.cluster(inst, "").FlushWAL(c); err != nil {
		e.log.Warn("engine: flushing WAL before a backup's snapshot", "instance_id", inst.ID, "err", err)
	}
}

// auditBackupRefusal records a backup that a limit refused, against what
// it was to back up.
func (e *Engine) auditBackupRefusal(ctx context.Context, req BackupRequest, err error) {
	if req.ImageID != 0 {
		e.auditFailure(ctx, "create_backup", "image", req.ImageID, err)
		return
	}
	e.auditFailure(ctx, "create_backup", "instance", req.InstanceID, err)
}

func (e *Engine) failBackup(ctx context.Context, id int64, msg string) {
	e.log.Error("engine: backup failed", "backup_id", id, "err", msg)
	if err := e.opts.Store.SetBackupStatus(ctx, id, store.BackupFailed, msg); err != nil && !errors.Is(err, store.ErrNotFound) {
		e.log.Error("engine: recording a failed backup", "backup_id", id, "err", err)
	}
	e.audit(ctx, "create_backup", "backup", id, "failed", msg)
}

// GetBackup returns one backup.
func (e *Engine) GetBackup(ctx context.Context, id int64) (store.Backup, error) {
	b, err := e.opts.Store.GetBackup(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return b, fmt.Errorf("%w: backup %d", ErrNotFound, id)
	}
	return b, err
}

// OpenBackup opens a finished backup's archive for reading.
func (e *Engine) OpenBackup(ctx context.Context, id int64) (*os.File, store.Backup, error) {
	b, err := e.GetBackup(ctx, id)
	if err != nil {
		return nil, b, err
	}
	if b.Status != store.BackupDone {
		return nil, b, fmt.Errorf("%w: backup %d is %s", ErrBackupNotDone, id, b.Status)
	}
	f, err := openRegular(e.backupPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, b, fmt.Errorf("%w: backup %d's archive is missing from %s; delete the backup and take it again", ErrBackupNotDone, id, e.opts.BackupsDir)
	}
	return f, b, err
}

// DeleteBackup deletes a backup's archive and record; one being written
// is stopped first. The image or instance it was taken of is not touched.
func (e *Engine) DeleteBackup(ctx context.Context, id int64) error {
	if _, err := e.GetBackup(ctx, id); err != nil {
		return err
	}
	e.mu.Lock()
	run := e.backups[id]
	e.mu.Unlock()
	if run != nil {
		run.cancel()
		<-run.done
	}
	for _, path := range []string{e.backupPath(id), e.backupTempPath(id)} {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := e.opts.Storage.Destroy(ctx, BackupVolume(id)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	if err := e.opts.Store.DeleteBackup(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	e.audit(ctx, "delete_backup", "backup", id, "ok", "")
	return nil
}

// holds tells whether a backup's archive is this host's: in a fleet, the
// host that wrote it alone reconciles and expires it; a single host holds
// every backup.
func (e *Engine) holds(b store.Backup) bool {
	host := e.opts.Store.FleetHost()
	return host == "" || b.Host == host
}

// DeleteExpiredBackups deletes the finished backups (done or failed) older
// than BackupMaxAge, with their archives, and returns how many; nothing
// when BackupMaxAge is 0. A running backup is never one of them.
func (e *Engine) DeleteExpiredBackups(ctx context.Context) (int, error) {
	if e.opts.BackupMaxAge <= 0 {
		return 0, nil
	}
	if e.storeMismatch.Load() {
		return 0, fmt.Errorf("%w: no backup is deleted for its age until they agree", ErrStoreMismatch)
	}
	backups, err := e.opts.Store.ListBackups(ctx, store.BackupFilter{})
	if err != nil {
		return 0, err
	}
	cutoff := e.now().Add(-e.opts.BackupMaxAge)
	ctx = WithActor(ctx, "expiry")
	var errs []error
	n := 0
	for _, b := range backups {
		if b.Status == store.BackupRunning || !b.CreatedAt.Before(cutoff) || !e.holds(b) {
			continue
		}
		e.log.Info("engine: backup expired", "backup_id", b.ID, "created_at", b.CreatedAt)
		if err := e.DeleteBackup(ctx, b.ID); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, fmt.Errorf("backup %d: %w", b.ID, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// linkBackup puts a finished backup's archive, opened by OpenBackup, into
// an image's upload directory, as if it had been uploaded: a hard link
// where the filesystem allows, a copy where not.
func linkBackup(src *os.File, dir string) error {
	dst := filepath.Join(dir, UploadFile)
	os.Remove(dst)
	if err := os.Link(src.Name(), dst); err == nil {
		return nil
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

// backupPins tells whether a backup being written pins the volume: its
// snapshot does, until the backup is written, on a driver whose snapshots
// pin their source (storage.Capabilities).
func (e *Engine) backupPins(volume string) bool {
	if !e.opts.Storage.Capabilities().SnapshotPinsSource {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, run := range e.backups {
		if run.source == volume {
			return true
		}
	}
	return false
}

// backupReads tells whether a backup's snapshot lists image as its origin,
// as on a driver whose snapshots pin their source, where it then pins the
// image.
func (e *Engine) backupReads(ctx context.Context, image string) bool {
	entries, err := e.opts.Storage.List(ctx)
	if err != nil {
		return false
	}
	for _, entry := range entries {
		if _, ok := backupIDOf(entry.Name); ok && entry.Origin == image {
			return true
		}
	}
	return false
}

// reconcileBackups marks failed the backups no run of this process is
// writing (sindrid stopped during them), unless their whole archive is in
// place, which makes them done, and removes the partial files and
// snapshots nothing is writing from.
func (e *Engine) reconcileBackups(ctx context.Context, entries []storage.Entry) error {
	e.backupMu.Lock()
	defer e.backupMu.Unlock()
	e.mu.Lock()
	running := map[int64]bool{}
	for id := range e.backups {
		running[id] = true
	}
	e.mu.Unlock()
	backups, err := e.opts.Store.ListBackups(ctx, store.BackupFilter{})
	if err != nil {
		return err
	}
	var errs []error
	for _, b := range backups {
		if b.Status != store.BackupRunning || running[b.ID] || !e.holds(b) {
			continue
		}
		// An archive in place is whole (it is renamed there once synced):
		// sindrid stopped before recording it, or the store is an older
		// dump taken while it was written. It is kept, not thrown away.
		if size, sum, err := checkArchive(e.backupPath(b.ID)); err == nil {
			e.log.Warn("engine: a backup recorded running has its whole archive; recording it done", "backup_id", b.ID, "size_bytes", size)
			errs = append(errs, e.opts.Store.SetBackupDone(ctx, b.ID, e.backupPath(b.ID), size, sum))
			continue
		}
		msg := "sindrid stopped while the backup was being written; take it again"
		if err := e.opts.Store.SetBackupStatus(ctx, b.ID, store.BackupFailed, msg); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
		// Its archive too, in case sindrid stopped between the rename and
		// the record.
		for _, path := range []string{e.backupTempPath(b.ID), e.backupPath(b.ID)} {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	for _, entry := range entries {
		if id, ok := backupIDOf(entry.Name); ok && entry.Kind == storage.KindImage && !running[id] {
			e.log.Warn("engine: removing the snapshot of a backup that is no longer being written", "snapshot", entry.Name)
			if err := e.opts.Storage.Destroy(ctx, entry.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
