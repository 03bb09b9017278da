package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sindri-db/sindri/pkg/safefile"
	"github.com/sindri-db/sindri/pkg/store"
)

// VolumeRecordFile is the file in the root of each volume that says whose
// it is: the installation (the metadata database's id), the instance or
// image, and when that was created. Reconcile touches a volume only when
// its record agrees with the store, so that a wrong database_url, a
// fresh database or an older dump never gets a volume destroyed. An
// image's record is written before it is frozen, so a clone starts with
// its image's record until its own replaces it.
const VolumeRecordFile = "sindri_volume.json"

const (
	recordInstance = "instance"
	recordImage    = "image"
)

type volumeRecord struct {
	Installation string    `json:"installation"`
	Kind         string    `json:"kind"`
	ID           int64     `json:"id"`
	CreatedAt    time.Time `json:"created_at"`
	// Made: the instance's creation (or reset) on this volume finished.
	// A store that says it is still being created is older than the
	// volume.
	Made bool `json:"made,omitempty"`
}

func (r volumeRecord) String() string {
	return fmt.Sprintf("%s %d created %s of installation %s", r.Kind, r.ID, r.CreatedAt.UTC().Format(time.RFC3339Nano), r.Installation)
}

// is tells whether the record names exactly this installation, kind, id
// and creation time.
func (r volumeRecord) is(installation, kind string, id int64, created time.Time) bool {
	return r.Installation == installation && r.Kind == kind && r.ID == id && r.CreatedAt.Equal(created)
}

// maxVolumeRecord bounds what is read: the file is in a directory that
// the postgres user (and a superuser client, when allowed) can write.
const maxVolumeRecord = 4096

// readVolumeRecord reads the record in dir; ok is false when there is none
// (a volume made before records were kept, or an upload volume being
// filled) or it is empty. A link is never followed, and a record that is not a regular
// file or does not parse is an error.
func readVolumeRecord(dir string) (rec volumeRecord, ok bool, err error) {
	path := filepath.Join(dir, VolumeRecordFile)
	f, err := safefile.OpenRegular(path)
	var notRegular *safefile.NotRegularError
	switch {
	case errors.Is(err, os.ErrNotExist):
		return rec, false, nil
	case errors.As(err, &notRegular):
		return rec, false, fmt.Errorf("%s is not a regular file", path)
	case err != nil:
		return rec, false, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxVolumeRecord+1))
	if err != nil {
		return rec, false, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxVolumeRecord {
		return rec, false, fmt.Errorf("%s is larger than %d bytes", path, maxVolumeRecord)
	}
	if len(data) == 0 {
		return rec, false, nil // written just before a crash: see writeVolumeRecord
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.Installation == "" || rec.ID <= 0 {
		return rec, false, fmt.Errorf("%s is not a volume record", path)
	}
	return rec, true, nil
}

// writeVolumeRecord replaces the record in dir: a new file renamed over
// whatever had the name (a rename replaces a link, never its target). It
// is not synced (that would add milliseconds to each creation): a crash
// may leave the record before, which errs towards keeping the volume (an
// image's record, or none, is never proof that a volume is abandoned), or
// an empty file (BTRFS flushes a file renamed over another, not a new
// one), which counts as no record.
func writeVolumeRecord(dir string, rec volumeRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, VolumeRecordFile)
	tmp := path + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	f, err := safefile.CreateNew(tmp, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// A directory of that name (an upload may hold anything) would refuse
	// the rename.
	if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
		if err := os.RemoveAll(path); err != nil {
			return err
		}
	}
	return os.Rename(tmp, path)
}

// installationID is the metadata database's id, read once.
func (e *Engine) installationID(ctx context.Context) (string, error) {
	e.mu.Lock()
	id := e.installation
	e.mu.Unlock()
	if id != "" {
		return id, nil
	}
	id, err := e.opts.Store.InstallationID(ctx)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	e.installation = id
	e.mu.Unlock()
	return id, nil
}

// recordInstanceVolume writes the instance's record into its volume;
// made once its creation or reset has finished.
func (e *Engine) recordInstanceVolume(ctx context.Context, dir string, inst store.Instance, made bool) error {
	installation, err := e.installationID(ctx)
	if err != nil {
		return err
	}
	return writeVolumeRecord(dir, volumeRecord{Installation: installation, Kind: recordInstance, ID: inst.ID, CreatedAt: inst.CreatedAt, Made: made})
}

// claimInstanceVolume checks by its record that the volume at dir is the
// instance's. A volume with no record (made before records were kept) or
// with its image's (a clone whose own record was never written) is given
// the instance's. Any other record is ErrNotItsVolume.
func (e *Engine) claimInstanceVolume(ctx context.Context, dir string, inst store.Instance) error {
	installation, err := e.installationID(ctx)
	if err != nil {
		return err
	}
	rec, ok, err := readVolumeRecord(dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotItsVolume, err)
	}
	made := inst.Status != store.InstanceCreating && inst.Status != store.InstanceResetting
	switch {
	case ok && rec.is(installation, recordInstance, inst.ID, inst.CreatedAt) && (rec.Made || !made):
		return nil
	case ok && rec.is(installation, recordInstance, inst.ID, inst.CreatedAt):
		// Made since (a crash came between the record and the mark).
	case ok && (rec.Installation != installation || rec.Kind != recordImage || rec.ID != inst.ImageID):
		return fmt.Errorf("%w: volume %s records %s, not instance %d created %s of installation %s",
			ErrNotItsVolume, InstanceVolume(inst.ID), rec, inst.ID, inst.CreatedAt.UTC().Format(time.RFC3339Nano), installation)
	}
	return e.recordInstanceVolume(ctx, dir, inst, made)
}

// madeAlready tells whether the volume at dir records that instance
// inst's creation finished: then a store that says it is still being
// created is older than the volume (a restored dump).
func (e *Engine) madeAlready(ctx context.Context, dir string, inst store.Instance) (bool, error) {
	installation, err := e.installationID(ctx)
	if err != nil {
		return false, err
	}
	rec, ok, err := readVolumeRecord(dir)
	if err != nil || !ok {
		return false, nil // not its record: teardown decides
	}
	return rec.Made && rec.is(installation, recordInstance, inst.ID, inst.CreatedAt), nil
}

// checkImageVolume checks, before an image's volume (image-N or
// upload-N) is destroyed, that its record, if any, is the image's.
func (e *Engine) checkImageVolume(ctx context.Context, dir string, img store.Image) error {
	installation, err := e.installationID(ctx)
	if err != nil {
		return err
	}
	rec, ok, err := readVolumeRecord(dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotItsVolume, err)
	}
	if ok && !rec.is(installation, recordImage, img.ID, img.CreatedAt) {
		return fmt.Errorf("%w: %s records %s, not image %d created %s of installation %s",
			ErrNotItsVolume, dir, rec, img.ID, img.CreatedAt.UTC().Format(time.RFC3339Nano), installation)
	}
	return nil
}

// notThisImage tells why the record in dir (a fresh clone's, which is its
// image's) is not image id's of this installation; "" when it is, or
// there is none (an image frozen before records were kept).
func (e *Engine) notThisImage(ctx context.Context, dir string, id int64) (string, error) {
	installation, err := e.installationID(ctx)
	if err != nil {
		return "", err
	}
	rec, ok, err := readVolumeRecord(dir)
	switch {
	case err != nil:
		return err.Error(), nil
	case !ok, rec.Installation == installation && rec.Kind == recordImage && rec.ID == id:
		return "", nil
	}
	return rec.String(), nil
}

// recordImageVolume writes the image's record into an upload volume; the
// image frozen from it keeps it.
func (e *Engine) recordImageVolume(ctx context.Context, dir string, img store.Image) error {
	installation, err := e.installationID(ctx)
	if err != nil {
		return err
	}
	return writeVolumeRecord(dir, volumeRecord{Installation: installation, Kind: recordImage, ID: img.ID, CreatedAt: img.CreatedAt})
}
