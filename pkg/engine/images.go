package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

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
	// SourceID, when set, is the source whose refresh makes the image.
	SourceID int64
	// InstanceID, when set, names a running instance whose data becomes
	// the image (a branch; see branches.go).
	InstanceID int64
}

// CreateImage records a pending image and makes its upload directory and
// its empty upload volume.
func (e *Engine) CreateImage(ctx context.Context, req ImageRequest) (store.Image, error) {
	if req.InstanceID != 0 {
		return e.createBranch(ctx, req)
	}
	var redacted string
	if req.SourceURL != "" {
		src, err := parseSource(req.SourceURL)
		if err != nil {
			return store.Image{}, err
		}
		redacted = src.ConnString
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
		SourceID: req.SourceID,
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

func (e *Engine) getImage(ctx context.Context, id int64) (store.Image, error) {
	img, err := e.opts.Store.GetImage(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return img, fmt.Errorf("%w: image %d", ErrNotFound, id)
	}
	return img, err
}

func (e *Engine) getImageOr(ctx context.Context, id int64, fallback store.Image) store.Image {
	if img, err := e.opts.Store.GetImage(ctx, id); err == nil {
		return img
	}
	return fallback
}

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
		if err := e.imageDestroyRefusal(id, of, force); err != nil {
			return err
		}
		if err := e.opts.Store.SetImageStatus(ctx, id, store.ImageDestroying, ""); err != nil {
			return err
		}
		if e.inFleet() {
			// Another host may have placed an instance of it between the
			// read and the mark, which placements wait on: read again.
			if of, err = e.instancesOf(ctx, id); err == nil {
				err = e.imageDestroyRefusal(id, of, force)
			}
			if err != nil {
				return errors.Join(err, e.opts.Store.SetImageStatus(context.WithoutCancel(ctx), id, img.Status, img.Error))
			}
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

// imageDestroyRefusal refuses the destroy of image id while it has
// instances, unless force; in a fleet, force too while one lives on
// another host, which alone destroys it (this host would refuse, and the
// image would stay destroying).
func (e *Engine) imageDestroyRefusal(id int64, of []store.Instance, force bool) error {
	if len(of) > 0 && !force {
		return fmt.Errorf("%w: image %d has %d instance(s)", ErrImageHasInstances, id, len(of))
	}
	for _, inst := range of {
		if err := e.onThisHost(inst); err != nil {
			return fmt.Errorf("%w: image %d has instance %d on host %q: destroy the image's instances there first (DELETE /instances/%d through any host), then the image",
				ErrImageHasInstances, id, inst.ID, inst.Host, inst.ID)
		}
	}
	return nil
}

// instancesOf returns image imageID's instances, without their
// certificates and keys: retention asks at every pass of the sources, for
// each image it would retire.
func (e *Engine) instancesOf(ctx context.Context, imageID int64) ([]store.Instance, error) {
	instances, err := e.opts.Store.ListInstanceSummaries(ctx, "")
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
	e.destroyBranchSnapshot(ctx, id)
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
