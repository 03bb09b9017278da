package engine

import (
	"context"
	"time"

	"github.com/sindri-db/sindri/pkg/store"
)

// HostService is what an actor may see of the fleet's hosts: the upload
// user's only (ErrForbidden for anyone else), since a host's peer URL and
// figures describe the installation, not a user's data.
type HostService struct {
	store *store.Store
	// downAfter is the down timeout: a host whose last heartbeat is older
	// is shown down.
	downAfter time.Duration
}

// NewHostService serves the hosts of the fleet whose metadata st holds,
// each down once its heartbeat is older than downAfter.
func NewHostService(st *store.Store, downAfter time.Duration) HostService {
	return HostService{store: st, downAfter: downAfter}
}

// List returns every host, by name.
func (s HostService) List(ctx context.Context, a Actor) ([]store.Host, error) {
	if !a.Upload {
		return nil, refuse(ErrForbidden, "only the upload user (the shared secret) may see the fleet's hosts")
	}
	hosts, err := s.store.ListHosts(ctx, s.downAfter)
	return hosts, classify(err)
}
