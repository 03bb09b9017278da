package api

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"github.com/sindri-db/sindri/pkg/fleet"
)

type peerKey struct{}

// fromPeer returns the name of the host of the fleet that sent r, as
// checked by checkPeerProof or requirePeer; "" for a client's request.
func fromPeer(r *http.Request) string {
	s, _ := r.Context().Value(peerKey{}).(string)
	return s
}

// requirePeer lets through only the requests of the fleet's hosts: one
// without a valid proof (fleet.PeerAuth) is 403 not_a_peer, whoever sends
// it, a user with a valid token included. The /fleet/ routes are behind
// it.
func requirePeer(auth *fleet.PeerAuth) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, err := auth.Verify(r)
			if err != nil {
				refusePeer(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, host)))
		})
	}
}

// checkPeerProof checks the proof of a request that carries one, on
// every route: a host forwarding a client's request adds its proof, so
// that the host that owns the instance serves it instead of forwarding
// it again. A proof that does not verify is 403 not_a_peer, never
// ignored; a request without one goes on as a client's.
func checkPeerProof(auth *fleet.PeerAuth) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get(fleet.PeerHeader) == "" {
				next.ServeHTTP(w, r)
				return
			}
			host, err := auth.Verify(r)
			if err != nil {
				refusePeer(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, host)))
		})
	}
}

func refusePeer(w http.ResponseWriter, r *http.Request, why error) {
	ctx := r.Context()
	LoggerFrom(ctx).LogAttrs(ctx, slog.LevelWarn, "fleet: request refused: no valid peer proof",
		slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.String("remote", r.RemoteAddr), slog.String("why", why.Error()))
	WriteError(w, r, NotAPeer())
}

// registerFleet checks the proof of every request that carries one, and
// adds the peers' routes: a proof authenticates them, a user's token
// does not (403 not_a_peer without a proof).
func (h *Handlers) registerFleet(s *Server) {
	r := s.Router()
	r.Use(checkPeerProof(h.Fleet.Auth))
	peers := r.PathPrefix("/fleet/").Subrouter()
	peers.Use(requirePeer(h.Fleet.Auth))
	for _, rt := range []struct {
		path, method string
		handle       HandlerFunc
	}{
		{"/fleet/instances/{id}/create", http.MethodPost, h.createPlaced},
		{"/fleet/images/{id}/stream", http.MethodGet, h.streamImage},
	} {
		s.authExempt[rt.method+" "+rt.path] = true
		peers.Handle(strings.TrimPrefix(rt.path, "/fleet"), rt.handle).Methods(rt.method)
	}
}
