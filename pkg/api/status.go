package api

import (
	"net/http"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/version"
)

func (h *Handlers) status(w http.ResponseWriter, r *http.Request) error {
	st, err := h.Status.Get(r.Context(), actor(r))
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusOK, h.statusResource(st))
	return nil
}

func (h *Handlers) statusResource(st engine.Status) *resource.Status {
	overall := "ok"
	if !st.Healthy {
		overall = "degraded"
	}
	var standbys map[string]*resource.Standby
	for _, s := range st.Standbys {
		if standbys == nil {
			standbys = map[string]*resource.Standby{}
		}
		standbys[s.Source] = &resource.Standby{Status: s.Status, LagBytes: s.LagBytes, LagSeconds: s.LagSeconds}
	}
	out := &resource.Status{
		Standbys: standbys,
		ID:       "1", Status: overall, Problems: st.Problems, Version: h.Version, APIVersion: version.API,
		StorageDriver: st.StorageDriver, TotalBytes: st.TotalBytes, FreeBytes: st.FreeBytes,
		UsedByInstancesBytes: st.UsedByInstancesBytes, UsedByBackupsBytes: st.UsedByBackupsBytes, Backups: st.BackupsByStatus,
		Images: contractCounts(st.ImagesByStatus, func(s string) string {
			status, _ := imageStatus(store.Image{Status: store.ImageStatus(s)})
			return status
		}),
		Instances:             contractCounts(st.InstancesByStatus, func(s string) string { return contractStatus(store.InstanceStatus(s)) }),
		ExpectedCloningTimeMS: st.ExpectedCloningTime.Milliseconds(),
		Limits:                limitUses(st),
		Host:                  st.Host,
	}
	if st.FleetInstancesByStatus != nil {
		out.FleetInstances = contractCounts(st.FleetInstancesByStatus, func(s string) string { return contractStatus(store.InstanceStatus(s)) })
	}
	return out
}

// limitUses renders the limits of st, which the status service made for
// the caller: a per-user limit carries the caller's own figure (Yours).
func limitUses(st engine.Status) map[string]*resource.LimitUse {
	out := map[string]*resource.LimitUse{"disk_reserve": {Limit: st.DiskReserveBytes, Free: &st.FreeBytes}}
	for _, l := range st.Limits {
		used := l.Used
		out[l.Name] = &resource.LimitUse{Limit: l.Limit, Used: &used, Yours: l.Yours}
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
