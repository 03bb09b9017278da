package api

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// sourceResource renders a source: its url without the password, and no
// anonymisation script (both write-only).
func sourceResource(src store.Source) *resource.Source {
	return &resource.Source{
		ID: src.ID, Name: src.Name, URL: src.URLRedacted, Mode: string(src.Mode), Schedule: src.Schedule,
		Keep: src.Keep, Status: string(src.Status), Error: src.Error, LastRefreshAt: src.LastRefreshAt,
		NextRefreshAt: src.NextRefreshAt, LastImageID: src.LastImageID, LagBytes: src.LagBytes,
		LagSeconds: src.LagSeconds, CreatedAt: src.CreatedAt, UpdatedAt: src.UpdatedAt,
	}
}

// sourceAttributes are what a client may send of a source; nil is not
// given.
type sourceAttributes struct {
	Name                *string `json:"name"`
	URL                 *string `json:"url"`
	Mode                *string `json:"mode"`
	Schedule            *string `json:"schedule"`
	AnonymisationScript *string `json:"anonymisation_script"`
	Keep                *int    `json:"keep"`
}

func (h *Handlers) listSources(w http.ResponseWriter, r *http.Request) error {
	srcs, err := h.Sources.List(r.Context(), actor(r))
	if err != nil {
		return err
	}
	out := make([]*resource.Source, 0, len(srcs))
	for _, src := range srcs {
		out = append(out, sourceResource(src))
	}
	WriteResources(w, http.StatusOK, out)
	return nil
}

func (h *Handlers) getSource(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	src, err := h.Sources.Get(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, sourceResource(src))
	return nil
}

func (h *Handlers) createSource(w http.ResponseWriter, r *http.Request) error {
	var attrs sourceAttributes
	if _, err := DecodeResource(w, r, "sources", &attrs); err != nil {
		return err
	}
	for name, v := range map[string]*string{"name": attrs.Name, "url": attrs.URL} {
		if v == nil {
			e := BadRequest(fmt.Sprintf("attribute %s is required", name))
			e.Source.Pointer = AttributePointer(name)
			return e
		}
	}
	req := engine.SourceRequest{Name: *attrs.Name, URL: *attrs.URL}
	if attrs.Mode != nil {
		req.Mode = store.SourceMode(*attrs.Mode)
	}
	if attrs.Schedule != nil {
		req.Schedule = *attrs.Schedule
	}
	if attrs.AnonymisationScript != nil {
		req.AnonymisationScript = *attrs.AnonymisationScript
	}
	if attrs.Keep != nil {
		if *attrs.Keep == 0 {
			return BadRequest("keep must be at least 1 (leave it out for the default, " + strconv.Itoa(engine.DefaultSourceKeep) + ")")
		}
		req.Keep = *attrs.Keep
	}
	src, err := h.Sources.Create(r.Context(), actor(r), req)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusCreated, sourceResource(src))
	return nil
}

func (h *Handlers) updateSource(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	if _, err := h.Sources.Get(r.Context(), actor(r), id); err != nil {
		return err
	}
	var attrs sourceAttributes
	bodyID, err := DecodeResource(w, r, "sources", &attrs)
	if err != nil {
		return err
	}
	if bodyID != "" && bodyID != strconv.FormatInt(id, 10) {
		return Conflict(fmt.Sprintf("the body names source %s, the URL source %d", bodyID, id))
	}
	p := engine.SourcePatch{Name: attrs.Name, URL: attrs.URL, Schedule: attrs.Schedule,
		AnonymisationScript: attrs.AnonymisationScript, Keep: attrs.Keep}
	if attrs.Mode != nil {
		m := store.SourceMode(*attrs.Mode)
		p.Mode = &m
	}
	if p == (engine.SourcePatch{}) {
		return BadRequest("give at least one of name, url, mode, schedule, anonymisation_script and keep")
	}
	src, err := h.Sources.Update(r.Context(), actor(r), id, p)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, sourceResource(src))
	return nil
}

func (h *Handlers) deleteSource(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	if err := h.Sources.Delete(r.Context(), actor(r), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// refreshSource answers 202 with the source refreshing: the refresh goes
// on in the background; GET the source for its outcome.
func (h *Handlers) refreshSource(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	src, err := h.Sources.Refresh(r.Context(), actor(r), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusAccepted, sourceResource(src))
	return nil
}
