package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// Handlers serve the contract's resources over the services.
type Handlers struct {
	Images    ImageService
	Instances InstanceService
	Backups   BackupService
	Status    StatusService
	// Sources, when set, serves /sources.
	Sources SourceService
	// Hosts, when set (a fleet), serves /hosts.
	Hosts HostService
	// Fleet, when set (a fleet), routes the requests of instances and
	// backups to the host they live on, and serves the peers' routes
	// (/fleet/).
	Fleet *Fleet
	// ImageSender, in a fleet, streams this host's copies of images to
	// the other hosts (GET /fleet/images/{id}/stream).
	ImageSender FleetService
	Auth        *auth.Authenticator
	// PublicHostname is the host clients reach instances on.
	PublicHostname string
	Version        string

	// renderedInstances are the instances GET /instances last rendered.
	renderedInstances renderedInstances
}

// Register adds the routes to the server's router.
func (h *Handlers) Register(s *Server) {
	type route struct {
		path, method string
		handle       HandlerFunc
	}
	routes := []route{
		{"/images", http.MethodGet, h.listImages},
		{"/images", http.MethodPost, h.createImage},
		{"/images/{id}", http.MethodGet, h.getImage},
		{"/images/{id}", http.MethodDelete, h.destroyImage},
		{"/images/{id}/upload", http.MethodPut, h.uploadImage},
		{"/images/{id}/done", http.MethodPost, h.finaliseImage},
		{"/instances", http.MethodGet, h.listInstances},
		{"/instances", http.MethodPost, h.createInstance},
		{"/instances/{id}", http.MethodGet, h.getInstance},
		{"/instances/{id}", http.MethodPatch, h.updateInstance},
		// In a fleet, what acts on an instance's or a backup's files or
		// processes is served by the host they live on (forward.go);
		// reads and changes of metadata alone are served here.
		{"/instances/{id}", http.MethodDelete, h.onInstanceHost(h.destroyInstance)},
		{"/instances/{id}/reset", http.MethodPost, h.onInstanceHost(h.resetInstance)},
		{"/backups", http.MethodGet, h.listBackups},
		{"/backups", http.MethodPost, h.onBackupSourceHost(h.createBackup)},
		{"/backups/{id}", http.MethodGet, h.getBackup},
		{"/backups/{id}", http.MethodDelete, h.onBackupHost(h.deleteBackup)},
		{"/backups/{id}/download", http.MethodGet, h.onBackupHost(h.downloadBackup)},
		{"/backups/{id}/download", http.MethodHead, h.onBackupHost(h.downloadBackup)},
		{"/status", http.MethodGet, h.status},
	}
	if h.Sources != nil {
		routes = append(routes,
			route{"/sources", http.MethodGet, h.listSources},
			route{"/sources", http.MethodPost, h.createSource},
			route{"/sources/{id}", http.MethodGet, h.getSource},
			route{"/sources/{id}", http.MethodPatch, h.updateSource},
			route{"/sources/{id}", http.MethodDelete, h.deleteSource},
			route{"/sources/{id}/refresh", http.MethodPost, h.refreshSource},
		)
	}
	r := s.Router()
	for _, rt := range routes {
		r.Handle(rt.path, rt.handle).Methods(rt.method)
	}
	if h.Hosts != nil {
		r.Handle("/hosts", HandlerFunc(h.listHosts)).Methods(http.MethodGet)
	}
	if h.Fleet != nil {
		h.registerFleet(s)
	}
	if h.Auth != nil {
		r.HandleFunc("/authenticate", h.Auth.HandleAuthenticate).Methods(http.MethodGet)
		// POST: the confirmation page's form (the person's decision).
		r.HandleFunc("/oauth_callback", h.Auth.HandleCallback).Methods(http.MethodGet, http.MethodPost)
		r.HandleFunc("/access_tokens", h.Auth.HandleAccessTokens).Methods(http.MethodPost)
	}
}

// HandlerFunc is a handler that returns its error instead of writing it:
// as an http.Handler it writes the error with WriteError, in the
// request's wire format, so that no handler writes one itself. A handler
// that has answered returns nil.
type HandlerFunc func(http.ResponseWriter, *http.Request) error

// ServeHTTP calls f and writes its error.
func (f HandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f(w, r); err != nil {
		WriteError(w, r, err)
	}
}

// Authenticate adapts the authenticator to the server's hook.
func Authenticate(a *auth.Authenticator) func(*http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		p, err := a.Authenticate(r)
		if errors.Is(err, auth.ErrUnauthorized) {
			return nil, fmt.Errorf("%w: %w", ErrUnauthorized, err)
		}
		if errors.Is(err, store.ErrUnavailable) {
			// A token's lookup during a failover: not the token's fault.
			return nil, fmt.Errorf("%w: %w", engine.ErrMetadataUnavailable, err)
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

// actor is the request's principal as the services know it.
func actor(r *http.Request) engine.Actor {
	p := principal(r)
	return engine.Actor{Owner: p.Owner(), Upload: p.Upload}
}
