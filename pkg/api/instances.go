package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// contractStatus is an instance status as the contract names them
// (creating, running, stopped, failed): a reset is a creation again, and an
// instance being torn down no longer serves.
func contractStatus(s store.InstanceStatus) string {
	switch s {
	case store.InstanceResetting:
		return string(store.InstanceCreating)
	case store.InstanceDestroying:
		return string(store.InstanceStopped)
	}
	return string(s)
}

func (h *Handlers) instanceResource(inst store.Instance, withCredentials bool) *resource.Instance {
	hostname := h.PublicHostname
	if inst.Hostname != "" { // its fleet host's
		hostname = inst.Hostname
	}
	out := &resource.Instance{
		ID: inst.ID, Hostname: hostname, ImageID: inst.ImageID, Port: inst.Port, Status: contractStatus(inst.Status),
		Error: inst.Error, Username: inst.Username, Password: inst.Password,
		ExpiresAt: inst.ExpiresAt, Protected: inst.Protected, Host: inst.Host, CreatedAt: inst.CreatedAt, UpdatedAt: inst.UpdatedAt,
	}
	out.DatabaseURL = (&url.URL{
		Scheme: "postgres", User: url.UserPassword(inst.Username, inst.Password),
		Host: fmt.Sprintf("%s:%d", hostname, inst.Port), Path: "/postgres", RawQuery: "sslmode=require",
	}).String()
	if withCredentials {
		out.Credentials = &resource.Credentials{ID: inst.ID, CACertificate: inst.CACertificate,
			ClientCertificate: inst.ClientCertificate, ClientKey: inst.ClientKey}
	}
	return out
}

func (h *Handlers) listInstances(w http.ResponseWriter, r *http.Request) error {
	a := actor(r)
	instances, err := h.Instances.List(r.Context(), a)
	if err != nil {
		return err
	}
	writeInstanceFragments(w, http.StatusOK, h.renderedInstances.render(h, a, instances))
	return nil
}

func (h *Handlers) getInstance(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	inst, err := h.Instances.Get(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, h.instanceResource(inst, true))
	return nil
}

func (h *Handlers) createInstance(w http.ResponseWriter, r *http.Request) error {
	var attrs struct {
		ImageID   *ID    `json:"image_id"`
		TTL       string `json:"ttl"`
		Protected bool   `json:"protected"`
	}
	if _, err := DecodeResource(w, r, "instances", &attrs); err != nil {
		var e *Error
		if errors.As(err, &e) && e.Source.Pointer == AttributePointer("image_id") {
			err = e.WithDraupnir(wire.DraupnirBadImageID)
		}
		return err
	}
	if attrs.ImageID == nil {
		e := BadRequest("attribute image_id is required (the id of a ready image, such as \"3\")")
		e.Source.Pointer = AttributePointer("image_id")
		return e.WithDraupnir(wire.DraupnirBadImageID)
	}
	var ttl time.Duration
	if attrs.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(attrs.TTL); err != nil || ttl <= 0 {
			return BadRequest(fmt.Sprintf("ttl %q is not a positive Go duration such as \"30m\" or \"2h\"", attrs.TTL))
		}
	}
	inst, err := h.Instances.Create(r.Context(), actor(r), engine.NewInstance{
		ImageID: int64(*attrs.ImageID), TTL: ttl, Protected: attrs.Protected,
	})
	if errors.Is(err, engine.ErrNotFound) {
		return WithDraupnirError(err, wire.DraupnirImageNotFound)
	}
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusCreated, h.instanceResource(inst, true))
	return nil
}

func (h *Handlers) updateInstance(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	// Another's instance is a 404 before anything about the body.
	if _, err := h.Instances.Get(r.Context(), actor(r), id); err != nil {
		return err
	}
	var attrs struct {
		ExpiresAt *time.Time `json:"expires_at"`
		Protected *bool      `json:"protected"`
	}
	bodyID, err := DecodeResource(w, r, "instances", &attrs)
	if err != nil {
		return err
	}
	if bodyID != "" && bodyID != strconv.FormatInt(id, 10) {
		return Conflict(fmt.Sprintf("the body names instance %s, the URL instance %d", bodyID, id))
	}
	if attrs.ExpiresAt == nil && attrs.Protected == nil {
		return BadRequest("give expires_at or protected (or both)")
	}
	inst, err := h.Instances.Update(r.Context(), actor(r), id, attrs.ExpiresAt, attrs.Protected)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, h.instanceResource(inst, true))
	return nil
}

func (h *Handlers) destroyInstance(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	if err := h.Instances.Destroy(r.Context(), actor(r), id); err != nil {
		return err
	}
	h.renderedInstances.forget(id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handlers) resetInstance(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	inst, err := h.Instances.Reset(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, h.instanceResource(inst, true))
	return nil
}
