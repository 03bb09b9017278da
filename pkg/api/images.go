package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// imageStatus is an image's status in the contract's words, which have no
// destroying: an image on its way out is failed, and says why.
func imageStatus(img store.Image) (status, errText string) {
	if img.Status == store.ImageDestroying {
		return string(store.ImageFailed), "the image is being destroyed"
	}
	return string(img.Status), img.Error
}

// imageResource renders an image as the service gave it (for the actor).
func imageResource(img store.Image) *resource.Image {
	status, errText := imageStatus(img)
	return &resource.Image{
		ID: img.ID, Name: img.Name, BackedUpAt: img.BackedUpAt, Ready: img.Status == store.ImageReady,
		Status: status, Error: errText, PGVersion: img.PGVersion, SizeBytes: img.SizeBytes,
		BackupID: img.BackupID, Anonymised: img.Anonymised, SourceID: img.SourceID, Owner: img.Owner,
		InstanceID: img.FromInstanceID, Hosts: img.Hosts, CreatedAt: img.CreatedAt, UpdatedAt: img.UpdatedAt,
	}
}

func (h *Handlers) listImages(w http.ResponseWriter, r *http.Request) error {
	var images []store.Image
	var err error
	if q := r.URL.Query(); q.Has("source") {
		if q.Get("source") == "" {
			return BadRequest("source must name a source, as in /images?source=prod")
		}
		images, err = h.Images.ListOfSource(r.Context(), actor(r), q.Get("source"))
	} else {
		images, err = h.Images.List(r.Context(), actor(r))
	}
	if err != nil {
		return err
	}
	out := make([]*resource.Image, 0, len(images))
	for _, img := range images {
		out = append(out, imageResource(img))
	}
	WriteResources(w, http.StatusOK, out)
	return nil
}

func (h *Handlers) getImage(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	img, err := h.Images.Get(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, imageResource(img))
	return nil
}

func (h *Handlers) createImage(w http.ResponseWriter, r *http.Request) error {
	var attrs struct {
		BackedUpAt          *time.Time `json:"backed_up_at"`
		AnonymisationScript string     `json:"anonymisation_script"`
		Name                string     `json:"name"`
		SourceURL           string     `json:"source_url"`
		BackupID            *ID        `json:"backup_id"`
		InstanceID          *ID        `json:"instance_id"`
	}
	if _, err := DecodeResource(w, r, "images", &attrs); err != nil {
		return err
	}
	req := engine.ImageRequest{Name: attrs.Name, AnonymisationScript: attrs.AnonymisationScript, SourceURL: attrs.SourceURL}
	if attrs.BackedUpAt != nil {
		req.BackedUpAt = *attrs.BackedUpAt
	}
	if attrs.BackupID != nil {
		req.BackupID = int64(*attrs.BackupID)
	}
	if attrs.InstanceID != nil {
		req.InstanceID = int64(*attrs.InstanceID)
	}
	img, err := h.Images.Create(r.Context(), actor(r), req)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusCreated, imageResource(img))
	return nil
}

func (h *Handlers) uploadImage(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	img, err := h.Images.Upload(r.Context(), actor(r), id, r.Body, r.ContentLength)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, imageResource(img))
	return nil
}

func (h *Handlers) finaliseImage(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	img, err := h.Images.Finalise(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, imageResource(img))
	return nil
}

func (h *Handlers) destroyImage(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		if force, err = strconv.ParseBool(v); err != nil {
			return BadRequest(fmt.Sprintf("force must be true or false, not %q", v))
		}
	}
	if err := h.Images.Destroy(r.Context(), actor(r), id, force); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
