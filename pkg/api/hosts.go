package api

import (
	"net/http"

	"github.com/sindri-db/sindri/pkg/api/resource"
)

func (h *Handlers) listHosts(w http.ResponseWriter, r *http.Request) error {
	hosts, err := h.Hosts.List(r.Context(), actor(r))
	if err != nil {
		return err
	}
	out := make([]*resource.Host, 0, len(hosts))
	for _, host := range hosts {
		out = append(out, &resource.Host{
			ID: host.Name, Name: host.Name, PeerURL: host.PeerURL, PublicHostname: host.PublicHostname,
			StorageDriver: host.StorageDriver, TotalBytes: host.TotalBytes, FreeBytes: host.FreeBytes,
			ReserveBytes: host.ReserveBytes, Instances: host.Instances, RunningInstances: host.RunningInstances,
			MaxInstances: host.MaxInstances, MemoryTotalBytes: host.MemoryTotalBytes,
			MemoryAvailableBytes: host.MemoryAvailableBytes, State: string(host.State), LastHeartbeatAt: host.HeartbeatAt,
		})
	}
	WriteResources(w, http.StatusOK, out)
	return nil
}
