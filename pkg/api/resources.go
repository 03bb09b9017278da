package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/version"
)

// The engine's and the storage's error classes, mapped in one place.
func init() {
	RegisterClass(engine.ErrNotFound, http.StatusNotFound, CodeNotFound, "Resource not found")
	RegisterClass(engine.ErrImageNotReady, http.StatusUnprocessableEntity, CodeImageNotReady, "Image not ready")
	RegisterClass(engine.ErrImageHasInstances, http.StatusUnprocessableEntity, CodeImageHasInstances, "Image has instances")
	RegisterClass(engine.ErrFinaliseFailed, http.StatusUnprocessableEntity, CodeImageFinaliseFailed, "Image finalise failed")
	RegisterClass(engine.ErrImageNotPending, http.StatusConflict, "image_not_pending", "Image does not accept uploads")
	RegisterClass(engine.ErrUploadInterrupted, http.StatusBadRequest, CodeBadRequest, "Upload interrupted")
	RegisterClass(engine.ErrNoPort, http.StatusServiceUnavailable, CodeNoFreePort, "No free port")
	RegisterClass(syscall.ENOSPC, http.StatusServiceUnavailable, CodeNoDiskSpace, "No disk space")
	// The [limits]: their messages name the limit and the figure.
	RegisterClass(engine.ErrQuotaExceeded, http.StatusTooManyRequests, CodeQuotaExceeded, "Quota exceeded")
	RegisterPublicClass(engine.ErrNoDiskSpace, http.StatusServiceUnavailable, CodeNoDiskSpace, "No disk space")
	RegisterClass(engine.ErrTTLTooLong, http.StatusBadRequest, CodeBadRequest, "Bad request")
	RegisterClass(engine.ErrInvalid, http.StatusBadRequest, CodeBadRequest, "Bad request")
	RegisterClass(postgres.ErrVersionMissing, http.StatusUnprocessableEntity, "pg_version_not_installed", "PostgreSQL version not installed")
	RegisterClass(storage.ErrHasClones, http.StatusUnprocessableEntity, CodeImageHasInstances, "Image has instances")
	RegisterClass(engine.ErrNotItsVolume, http.StatusConflict, "volume_mismatch", "The volume on disk is not this resource's")
	RegisterClass(engine.ErrStoreMismatch, http.StatusServiceUnavailable, "store_mismatch", "The metadata store does not match the volumes on disk")
	// The metadata store refused a value (a check constraint, a NUL in
	// text) or a duplicate: the request's fault, not the server's.
	RegisterClass(store.ErrInvalid, http.StatusBadRequest, CodeBadRequest, "Invalid value")
	RegisterClass(store.ErrConflict, http.StatusConflict, CodeConflict, "Conflict with an existing resource")
}

// Image is the images resource.
type Image struct {
	ID         int64     `jsonapi:"primary,images"`
	Name       string    `jsonapi:"attr,name,omitempty"`
	BackedUpAt time.Time `jsonapi:"attr,backed_up_at,iso8601"`
	Ready      bool      `jsonapi:"attr,ready"`
	Status     string    `jsonapi:"attr,status"`
	Error      string    `jsonapi:"attr,error,omitempty"`
	PGVersion  string    `jsonapi:"attr,pg_version,omitempty"`
	SizeBytes  int64     `jsonapi:"attr,size_bytes"`
	BackupID   int64     `jsonapi:"attr,backup_id,omitempty"`
	// Anonymised: an anonymisation script ran on the image's data and the
	// scrub after it finished.
	Anonymised bool      `jsonapi:"attr,anonymised"`
	CreatedAt  time.Time `jsonapi:"attr,created_at,iso8601"`
	UpdatedAt  time.Time `jsonapi:"attr,updated_at,iso8601"`
}

// Instance is the instances resource; Credentials is included with it.
type Instance struct {
	ID          int64        `jsonapi:"primary,instances"`
	Hostname    string       `jsonapi:"attr,hostname"`
	ImageID     int64        `jsonapi:"attr,image_id"`
	Port        int          `jsonapi:"attr,port"`
	Status      string       `jsonapi:"attr,status"`
	Error       string       `jsonapi:"attr,error,omitempty"`
	Username    string       `jsonapi:"attr,username"`
	Password    string       `jsonapi:"attr,password"`
	DatabaseURL string       `jsonapi:"attr,database_url"`
	ExpiresAt   *time.Time   `jsonapi:"attr,expires_at,iso8601"`
	Protected   bool         `jsonapi:"attr,protected"`
	CreatedAt   time.Time    `jsonapi:"attr,created_at,iso8601"`
	UpdatedAt   time.Time    `jsonapi:"attr,updated_at,iso8601"`
	Credentials *Credentials `jsonapi:"relation,credentials,omitempty"`
}

// Credentials is what a Draupnir client writes to files for a TLS login.
type Credentials struct {
	ID                int64  `jsonapi:"primary,credentials"`
	CACertificate     string `jsonapi:"attr,ca_certificate"`
	ClientCertificate string `jsonapi:"attr,client_certificate"`
	ClientKey         string `jsonapi:"attr,client_key"`
}

// Status is the statuses resource of GET /status.
type Status struct {
	ID                    string         `jsonapi:"primary,statuses"`
	Status                string         `jsonapi:"attr,status"`
	Problems              []string       `jsonapi:"attr,problems,omitempty"`
	Version               string         `jsonapi:"attr,version"`
	APIVersion            string         `jsonapi:"attr,api_version"`
	StorageDriver         string         `jsonapi:"attr,storage_driver"`
	TotalBytes            int64          `jsonapi:"attr,total_bytes"`
	FreeBytes             int64          `jsonapi:"attr,free_bytes"`
	UsedByInstancesBytes  int64          `jsonapi:"attr,used_by_instances_bytes"`
	UsedByBackupsBytes    int64          `jsonapi:"attr,used_by_backups_bytes"`
	Images                map[string]int `jsonapi:"attr,images"`
	Instances             map[string]int `jsonapi:"attr,instances"`
	Backups               map[string]int `jsonapi:"attr,backups"`
	ExpectedCloningTimeMS int64          `jsonapi:"attr,expected_cloning_time_ms"`
	// Limits are the [limits] by key, each with its use.
	Limits map[string]*LimitUse `jsonapi:"attr,limits"`
}

// LimitUse is one limit of GET /status: Limit is 0 when there is none.
// Used is the figure it holds (for a per-user limit the most any one user
// has), Yours the caller's own figure for a per-user limit. The disk
// reserve has Limit in bytes and Free, the free bytes, instead of Used.
type LimitUse struct {
	Limit int64  `json:"limit"`
	Used  *int64 `json:"used,omitempty"`
	Yours *int64 `json:"yours,omitempty"`
	Free  *int64 `json:"free,omitempty"`
}

// Handlers serve the contract's resources over the engine.
type Handlers struct {
	Engine *engine.Engine
	Store  *store.Store
	Auth   *auth.Authenticator
	// PublicHostname is the host clients reach instances on.
	PublicHostname string
	Version        string
}

// Register adds the routes to the server's router.
func (h *Handlers) Register(s *Server) {
	r := s.Router()
	r.HandleFunc("/images", h.listImages).Methods(http.MethodGet)
	r.HandleFunc("/images", h.createImage).Methods(http.MethodPost)
	r.HandleFunc("/images/{id}", h.getImage).Methods(http.MethodGet)
	r.HandleFunc("/images/{id}", h.destroyImage).Methods(http.MethodDelete)
	r.HandleFunc("/images/{id}/upload", h.uploadImage).Methods(http.MethodPut)
	r.HandleFunc("/images/{id}/done", h.finaliseImage).Methods(http.MethodPost)
	r.HandleFunc("/instances", h.listInstances).Methods(http.MethodGet)
	r.HandleFunc("/instances", h.createInstance).Methods(http.MethodPost)
	r.HandleFunc("/instances/{id}", h.getInstance).Methods(http.MethodGet)
	r.HandleFunc("/instances/{id}", h.updateInstance).Methods(http.MethodPatch)
	r.HandleFunc("/instances/{id}", h.destroyInstance).Methods(http.MethodDelete)
	r.HandleFunc("/instances/{id}/reset", h.resetInstance).Methods(http.MethodPost)
	r.HandleFunc("/status", h.status).Methods(http.MethodGet)
	h.registerBackups(s)
	if h.Auth != nil {
		r.HandleFunc("/authenticate", h.Auth.HandleAuthenticate).Methods(http.MethodGet)
		// POST: the confirmation page's form (the person's decision).
		r.HandleFunc("/oauth_callback", h.Auth.HandleCallback).Methods(http.MethodGet, http.MethodPost)
		r.HandleFunc("/access_tokens", h.Auth.HandleAccessTokens).Methods(http.MethodPost)
	}
}

// Authenticate adapts the authenticator to the server's hook.
func Authenticate(a *auth.Authenticator) func(*http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		p, err := a.Authenticate(r)
		if errors.Is(err, auth.ErrUnauthorized) {
			return nil, fmt.Errorf("%w: %w", ErrUnauthorized, err)
		}
		if err != nil {
			return nil, err
		}
		return p, nil
	}
}

func principal(r *http.Request) auth.Principal {
	p, _ := PrincipalFrom(r.Context()).(auth.Principal)
	return p
}

// actorContext names the caller for the audit log. Operations that change
// things run detached from the request: a client that goes away does not
// cut an instance's creation short (it expires by its TTL instead).
func actorContext(r *http.Request) context.Context {
	return engine.WithActor(context.WithoutCancel(r.Context()), principal(r).Owner())
}

// requireUpload lets only the upload user (the shared secret) change
// images, as in Draupnir: images are shared by everybody.
func requireUpload(r *http.Request) error {
	if !principal(r).Upload {
		return Forbidden("only the upload user (the shared secret) may change images")
	}
	return nil
}

// imageStatus is an image's status in the contract's words, which have no
// destroying: an image on its way out is failed, and says why.
func imageStatus(img store.Image) (status, errText string) {
	if img.Status == store.ImageDestroying {
		return string(store.ImageFailed), "the image is being destroyed"
	}
	return string(img.Status), img.Error
}

// hiddenImageError is what users other than the upload user see of a
// failed finalise: its text may quote the data (an anonymisation script's
// error names the row it failed on).
const hiddenImageError = "finalising the image failed; the upload user can see why"

// imageResource renders an image for the caller: only the upload user
// sees why a finalise failed.
func imageResource(img store.Image, upload bool) *Image {
	status, errText := imageStatus(img)
	if errText != "" && img.Status == store.ImageFailed && !upload {
		errText = hiddenImageError
	}
	return &Image{
		ID: img.ID, Name: img.Name, BackedUpAt: img.BackedUpAt, Ready: img.Status == store.ImageReady,
		Status: status, Error: errText, PGVersion: img.PGVersion, SizeBytes: img.SizeBytes,
		BackupID: img.BackupID, Anonymised: img.Anonymised, CreatedAt: img.CreatedAt, UpdatedAt: img.UpdatedAt,
	}
}

func (h *Handlers) listImages(w http.ResponseWriter, r *http.Request) {
	images, err := h.Store.ListImages(r.Context())
	if err != nil {
		WriteError(w, r, err)
		return
	}
	out := make([]*Image, 0, len(images))
	for _, img := range images {
		out = append(out, imageResource(img, principal(r).Upload))
	}
	WriteResources(w, http.StatusOK, out)
}

func (h *Handlers) imageByPath(r *http.Request) (store.Image, error) {
	id, err := PathID(r, "id")
	if err != nil {
		return store.Image{}, err
	}
	img, err := h.Store.GetImage(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return img, NotFound(fmt.Sprintf("there is no image %d", id))
	}
	return img, err
}

func (h *Handlers) getImage(w http.ResponseWriter, r *http.Request) {
	img, err := h.imageByPath(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusOK, imageResource(img, principal(r).Upload))
}

func (h *Handlers) createImage(w http.ResponseWriter, r *http.Request) {
	var attrs struct {
		BackedUpAt          *time.Time `json:"backed_up_at"`
		AnonymisationScript string     `json:"anonymisation_script"`
		Name                string     `json:"name"`
		SourceURL           string     `json:"source_url"`
		BackupID            *ID        `json:"backup_id"`
	}
	if _, err := DecodeResource(w, r, "images", &attrs); err != nil {
		WriteError(w, r, err)
		return
	}
	if err := requireUpload(r); err != nil {
		WriteError(w, r, err)
		return
	}
	if attrs.BackedUpAt == nil {
		WriteError(w, r, BadRequest("attribute backed_up_at is required (an RFC 3339 time such as 2017-05-01T12:00:00Z)"))
		return
	}
	req := engine.ImageRequest{
		Name: attrs.Name, BackedUpAt: *attrs.BackedUpAt, AnonymisationScript: attrs.AnonymisationScript,
		SourceURL: attrs.SourceURL,
	}
	if attrs.BackupID != nil {
		req.BackupID = int64(*attrs.BackupID)
	}
	img, err := h.Engine.CreateImage(actorContext(r), req)
	if errors.Is(err, engine.ErrNotFound) {
		err = NotFound(fmt.Sprintf("there is no backup %d", req.BackupID))
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	if attrs.SourceURL != "" || attrs.BackupID != nil {
		// The pull or the restore and the finalise run on without the
		// request; done and GET /images/{id} join or watch that same run.
		go h.Engine.FinaliseImage(context.WithoutCancel(actorContext(r)), img.ID)
	}
	WriteResource(w, http.StatusCreated, imageResource(img, principal(r).Upload))
}

// imageToChange is imageByPath for the routes that change an image, which
// only the upload user may call.
func (h *Handlers) imageToChange(r *http.Request) (store.Image, error) {
	img, err := h.imageByPath(r)
	if err == nil {
		err = requireUpload(r)
	}
	return img, err
}

func (h *Handlers) uploadImage(w http.ResponseWriter, r *http.Request) {
	img, err := h.imageToChange(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	if n := r.ContentLength; n > 0 {
		// Refused at once when the body cannot fit above the disk reserve.
		if err := h.Engine.CheckDiskReserve(r.Context(), n, fmt.Sprintf("an upload of %d bytes", n)); err != nil {
			WriteError(w, r, err)
			return
		}
	}
	if _, err := h.Engine.UploadImage(actorContext(r), img.ID, r.Body); err != nil {
		WriteError(w, r, err)
		return
	}
	img, err = h.Store.GetImage(r.Context(), img.ID)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusOK, imageResource(img, principal(r).Upload))
}

func (h *Handlers) finaliseImage(w http.ResponseWriter, r *http.Request) {
	img, err := h.imageToChange(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	img, err = h.Engine.FinaliseImage(actorContext(r), img.ID)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusOK, imageResource(img, principal(r).Upload))
}

func (h *Handlers) destroyImage(w http.ResponseWriter, r *http.Request) {
	img, err := h.imageToChange(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		if force, err = strconv.ParseBool(v); err != nil {
			WriteError(w, r, BadRequest(fmt.Sprintf("force must be true or false, not %q", v)))
			return
		}
	}
	if err := h.Engine.DestroyImage(actorContext(r), img.ID, force); err != nil {
		WriteError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

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

func (h *Handlers) instanceResource(inst store.Instance, withCredentials bool) *Instance {
	out := &Instance{
		ID: inst.ID, Hostname: h.PublicHostname, ImageID: inst.ImageID, Port: inst.Port, Status: contractStatus(inst.Status),
		Error: inst.Error, Username: inst.Username, Password: inst.Password,
		ExpiresAt: inst.ExpiresAt, Protected: inst.Protected, CreatedAt: inst.CreatedAt, UpdatedAt: inst.UpdatedAt,
	}
	out.DatabaseURL = (&url.URL{
		Scheme: "postgres", User: url.UserPassword(inst.Username, inst.Password),
		Host: fmt.Sprintf("%s:%d", h.PublicHostname, inst.Port), Path: "/postgres", RawQuery: "sslmode=require",
	}).String()
	if withCredentials {
		out.Credentials = &Credentials{ID: inst.ID, CACertificate: inst.CACertificate,
			ClientCertificate: inst.ClientCertificate, ClientKey: inst.ClientKey}
	}
	return out
}

// instanceByPath reads the instance named in the path; another user's
// instance is a 404, as if it did not exist.
func (h *Handlers) instanceByPath(r *http.Request) (store.Instance, error) {
	id, err := PathID(r, "id")
	if err != nil {
		return store.Instance{}, err
	}
	inst, err := h.Store.GetInstance(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !principal(r).CanAccess(inst.Owner)) {
		return store.Instance{}, NotFound(fmt.Sprintf("there is no instance %d", id))
	}
	return inst, err
}

func (h *Handlers) listInstances(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	owner := p.Owner()
	if p.Upload {
		owner = ""
	}
	// Without certificates and keys, which a listing does not show.
	instances, err := h.Store.ListInstanceSummaries(r.Context(), owner)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	out := make([]*Instance, 0, len(instances))
	for _, inst := range instances {
		out = append(out, h.instanceResource(inst, false))
	}
	writeInstanceList(w, http.StatusOK, out)
}

func (h *Handlers) getInstance(w http.ResponseWriter, r *http.Request) {
	inst, err := h.instanceByPath(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusOK, h.instanceResource(inst, true))
}

func (h *Handlers) createInstance(w http.ResponseWriter, r *http.Request) {
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
		WriteError(w, r, err)
		return
	}
	if attrs.ImageID == nil {
		e := BadRequest("attribute image_id is required (the id of a ready image, such as \"3\")")
		e.Source.Pointer = AttributePointer("image_id")
		WriteError(w, r, e.WithDraupnir(wire.DraupnirBadImageID))
		return
	}
	var ttl time.Duration
	if attrs.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(attrs.TTL); err != nil || ttl <= 0 {
			WriteError(w, r, BadRequest(fmt.Sprintf("ttl %q is not a positive Go duration such as \"30m\" or \"2h\"", attrs.TTL)))
			return
		}
	}
	expiresAt, err := h.Engine.ExpiryFor(ttl)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	inst, err := h.Engine.CreateInstance(actorContext(r), engine.InstanceRequest{
		ImageID: int64(*attrs.ImageID), Owner: principal(r).Owner(), ExpiresAt: expiresAt, Protected: attrs.Protected,
	})
	if errors.Is(err, engine.ErrNotFound) {
		err = NotFound(fmt.Sprintf("there is no image %d", int64(*attrs.ImageID))).WithDraupnir(wire.DraupnirImageNotFound)
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusCreated, h.instanceResource(inst, true))
}

func (h *Handlers) updateInstance(w http.ResponseWriter, r *http.Request) {
	inst, err := h.instanceByPath(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	var attrs struct {
		ExpiresAt *time.Time `json:"expires_at"`
		Protected *bool      `json:"protected"`
	}
	id, err := DecodeResource(w, r, "instances", &attrs)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	if id != "" && id != strconv.FormatInt(inst.ID, 10) {
		WriteError(w, r, Conflict(fmt.Sprintf("the body names instance %s, the URL instance %d", id, inst.ID)))
		return
	}
	if attrs.ExpiresAt == nil && attrs.Protected == nil {
		WriteError(w, r, BadRequest("give expires_at or protected (or both)"))
		return
	}
	inst, err = h.Engine.UpdateInstance(actorContext(r), inst.ID, attrs.ExpiresAt, attrs.Protected)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusOK, h.instanceResource(inst, true))
}

func (h *Handlers) destroyInstance(w http.ResponseWriter, r *http.Request) {
	inst, err := h.instanceByPath(r)
	if err == nil {
		err = h.Engine.DestroyInstance(actorContext(r), inst.ID)
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handlers) resetInstance(w http.ResponseWriter, r *http.Request) {
	inst, err := h.instanceByPath(r)
	if err == nil {
		inst, err = h.Engine.ResetInstance(actorContext(r), inst.ID)
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	WriteResource(w, http.StatusOK, h.instanceResource(inst, true))
}

func (h *Handlers) status(w http.ResponseWriter, r *http.Request) {
	st, err := h.Engine.Status(r.Context())
	if err != nil {
		WriteError(w, r, err)
		return
	}
	overall := "ok"
	if !st.Healthy {
		overall = "degraded"
	}
	WriteResource(w, http.StatusOK, &Status{
		ID: "1", Status: overall, Problems: st.Problems, Version: h.Version, APIVersion: version.API,
		StorageDriver: st.StorageDriver, TotalBytes: st.TotalBytes, FreeBytes: st.FreeBytes,
		UsedByInstancesBytes: st.UsedByInstancesBytes, UsedByBackupsBytes: st.UsedByBackupsBytes, Backups: st.BackupsByStatus,
		Images: contractCounts(st.ImagesByStatus, func(s string) string {
			status, _ := imageStatus(store.Image{Status: store.ImageStatus(s)})
			return status
		}),
		Instances:             contractCounts(st.InstancesByStatus, func(s string) string { return contractStatus(store.InstanceStatus(s)) }),
		ExpectedCloningTimeMS: st.ExpectedCloningTime.Milliseconds(),
		Limits:                limitUses(st, principal(r)),
	})
}

// limitUses renders the limits of st for the caller p.
func limitUses(st engine.Status, p auth.Principal) map[string]*LimitUse {
	out := map[string]*LimitUse{"disk_reserve": {Limit: st.DiskReserveBytes, Free: &st.FreeBytes}}
	for _, l := range st.Limits {
		used := l.Used
		u := &LimitUse{Limit: l.Limit, Used: &used}
		if l.ByOwner != nil && !p.Upload {
			yours := l.ByOwner[p.Owner()]
			u.Yours = &yours
		}
		out[l.Name] = u
	}
	return out
}

// contractCounts folds counts by internal status into the contract's
// statuses, the words the resources themselves show.
func contractCounts(byStatus map[string]int, name func(string) string) map[string]int {
	out := map[string]int{}
	for s, n := range byStatus {
		out[name(s)] += n
	}
	return out
}
