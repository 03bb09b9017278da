package api

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

func init() {
	RegisterClass(engine.ErrBackupNotDone, http.StatusConflict, "backup_not_done", "Backup not done")
	RegisterClass(engine.ErrBackupRunning, http.StatusConflict, "backup_running", "A backup is being written")
	RegisterClass(engine.ErrNotBackupReady, http.StatusConflict, "instance_busy", "Instance cannot be backed up now")
}

// Backup is the backups resource: an archive of an instance's or an
// image's data directory.
type Backup struct {
	ID         int64     `jsonapi:"primary,backups"`
	InstanceID int64     `jsonapi:"attr,instance_id,omitempty"`
	ImageID    int64     `jsonapi:"attr,image_id,omitempty"`
	Status     string    `jsonapi:"attr,status"`
	Error      string    `jsonapi:"attr,error,omitempty"`
	SizeBytes  int64     `jsonapi:"attr,size_bytes"`
	SHA256     string    `jsonapi:"attr,sha256,omitempty"`
	CreatedAt  time.Time `jsonapi:"attr,created_at,iso8601"`
	UpdatedAt  time.Time `jsonapi:"attr,updated_at,iso8601"`
}

func backupResource(b store.Backup) *Backup {
	return &Backup{
		ID: b.ID, InstanceID: b.InstanceID, ImageID: b.ImageID, Status: string(b.Status), Error: b.Error,
		SizeBytes: b.SizeBytes, SHA256: b.SHA256, CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt,
	}
}

func (h *Handlers) registerBackups(s *Server) {
	r := s.Router()
	r.HandleFunc("/backups", h.listBackups).Methods(http.MethodGet)
	r.HandleFunc("/backups", h.createBackup).Methods(http.MethodPost)
	r.HandleFunc("/backups/{id}", h.getBackup).Methods(http.MethodGet)
	r.HandleFunc("/backups/{id}", h.deleteBackup).Methods(http.MethodDelete)
	r.HandleFunc("/backups/{id}/download", h.downloadBackup).Methods(http.MethodGet, http.MethodHead)
}

// backupByPath reads the backup named in the path; another user's backup
// is a 404, as their instances are.
func (h *Handlers) backupByPath(r *http.Request) (store.Backup, error) {
	id, err := PathID(r, "id")
	if err != nil {
		return store.Backup{}, err
	}
	b, err := h.Store.GetBackup(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !principal(r).CanAccess(b.Owner)) {
		return store.Backup{}, NotFound(fmt.Sprintf("there is no backup %d", id))
	}
	return b, err
}

func (h *Handlers) listBackups(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	filter := store.BackupFilter{Owner: p.Owner()}
	if p.Upload {
		filter.Owner = ""
	}
	backups, err := h.Store.ListBackups(r.Context(), filter)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	out := make([]*Backup, 0, len(backups))
	for _, b := range backups {
		out = append(out, backupResource(b))
	}
	WriteResources(w, http.StatusOK, out)
}

func (h *Handlers) getBackup(w http.ResponseWriter, r *http.Request) {
	b, err := h.backupByPath(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusOK, backupResource(b))
}

// createBackup answers 202 once the snapshot is taken: the backup holds
// the data as it was then, and is written on in the background.
func (h *Handlers) createBackup(w http.ResponseWriter, r *http.Request) {
	var attrs struct {
		InstanceID *ID `json:"instance_id"`
		ImageID    *ID `json:"image_id"`
	}
	if _, err := DecodeResource(w, r, "backups", &attrs); err != nil {
		WriteError(w, r, err)
		return
	}
	if (attrs.InstanceID == nil) == (attrs.ImageID == nil) {
		WriteError(w, r, BadRequest("give exactly one of instance_id (an instance of yours) and image_id (a ready image)"))
		return
	}
	req := engine.BackupRequest{Owner: principal(r).Owner()}
	var notFound error
	if attrs.InstanceID != nil {
		req.InstanceID = int64(*attrs.InstanceID)
		notFound = NotFound(fmt.Sprintf("there is no instance %d", req.InstanceID))
		inst, err := h.Store.GetInstance(r.Context(), req.InstanceID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && !principal(r).CanAccess(inst.Owner)) {
			WriteError(w, r, notFound)
			return
		} else if err != nil {
			WriteError(w, r, err)
			return
		}
	} else {
		// Images are everybody's to see, so another user gets a 403, not
		// a 404: a backup of an image carries all of its files, what the
		// image's instances would never show them included.
		if !principal(r).Upload {
			WriteError(w, r, Forbidden("only the upload user (the shared secret) may back up an image; back up an instance of yours instead"))
			return
		}
		req.ImageID = int64(*attrs.ImageID)
		notFound = NotFound(fmt.Sprintf("there is no image %d", req.ImageID))
	}
	b, err := h.Engine.CreateBackup(actorContext(r), req)
	if errors.Is(err, engine.ErrNotFound) {
		err = notFound
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusAccepted, backupResource(b))
}

// downloadBackup streams a finished backup's archive, with Range support
// (a broken download can resume) and its SHA-256 in Repr-Digest.
func (h *Handlers) downloadBackup(w http.ResponseWriter, r *http.Request) {
	b, err := h.backupByPath(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	f, b, err := h.Engine.OpenBackup(r.Context(), b.ID)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/zstd")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="sindri-backup-%d.tar.zst"`, b.ID))
	if sum, err := hex.DecodeString(b.SHA256); err == nil {
		w.Header().Set("Repr-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(sum)+":")
	}
	w.Header().Set("ETag", `"`+b.SHA256+`"`)
	ServeContent(w, r, "", b.UpdatedAt, f)
}

func (h *Handlers) deleteBackup(w http.ResponseWriter, r *http.Request) {
	b, err := h.backupByPath(r)
	if err == nil {
		err = h.Engine.DeleteBackup(actorContext(r), b.ID)
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
