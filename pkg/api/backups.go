package api

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

func backupResource(b store.Backup) *resource.Backup {
	return &resource.Backup{
		ID: b.ID, InstanceID: b.InstanceID, ImageID: b.ImageID, Status: string(b.Status), Error: b.Error,
		SizeBytes: b.SizeBytes, SHA256: b.SHA256, CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt,
	}
}

func (h *Handlers) listBackups(w http.ResponseWriter, r *http.Request) error {
	backups, err := h.Backups.List(r.Context(), actor(r))
	if err != nil {
		return err
	}
	out := make([]*resource.Backup, 0, len(backups))
	for _, b := range backups {
		out = append(out, backupResource(b))
	}
	WriteResources(w, http.StatusOK, out)
	return nil
}

func (h *Handlers) getBackup(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	b, err := h.Backups.Get(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, backupResource(b))
	return nil
}

// createBackup answers 202 once the snapshot is taken: the backup holds
// the data as it was then, and is written on in the background.
func (h *Handlers) createBackup(w http.ResponseWriter, r *http.Request) error {
	var attrs struct {
		InstanceID *ID `json:"instance_id"`
		ImageID    *ID `json:"image_id"`
	}
	if _, err := DecodeResource(w, r, "backups", &attrs); err != nil {
		return err
	}
	if (attrs.InstanceID == nil) == (attrs.ImageID == nil) {
		return BadRequest("give exactly one of instance_id (an instance of yours) and image_id (a ready image)")
	}
	var src engine.BackupSource
	if attrs.InstanceID != nil {
		src.InstanceID = int64(*attrs.InstanceID)
	} else {
		src.ImageID = int64(*attrs.ImageID)
	}
	b, err := h.Backups.Create(r.Context(), actor(r), src)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusAccepted, backupResource(b))
	return nil
}

// downloadBackup streams a finished backup's archive, with Range support
// (a broken download can resume) and its SHA-256 in Repr-Digest.
func (h *Handlers) downloadBackup(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	f, b, err := h.Backups.Open(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/zstd")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="sindri-backup-%d.tar.zst"`, b.ID))
	if sum, err := hex.DecodeString(b.SHA256); err == nil {
		w.Header().Set("Repr-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(sum)+":")
	}
	w.Header().Set("ETag", `"`+b.SHA256+`"`)
	ServeContent(w, r, "", b.UpdatedAt, f)
	return nil
}

func (h *Handlers) deleteBackup(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	if err := h.Backups.Delete(r.Context(), actor(r), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
