package engine

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// Status is what GET /status reports.
type Status struct {
	Healthy              bool
	Problems             []string
	StorageDriver        string
	TotalBytes           int64
	FreeBytes            int64
	UsedByInstancesBytes int64
	UsedByBackupsBytes   int64
	BackupsByStatus      map[string]int
	ImagesByStatus       map[string]int
	InstancesByStatus    map[string]int
	ExpectedCloningTime  time.Duration
	// DiskReserveBytes is the disk reserve in bytes (0: none); Limits are
	// the other limits, each with its use.
	DiskReserveBytes int64
	Limits           []LimitUse
	// Standbys are the replica-mode sources' standbys.
	Standbys []StandbyStatus

	// In a fleet, Host is this host's name; the disk, instance and backup
	// figures above are this host's, while the images and the limits
	// (per user, over every host) are the fleet's. FleetInstancesByStatus
	// counts the instances of every host, those of a host that is down
	// as unavailable. Both empty on a single host.
	Host                   string
	FleetInstancesByStatus map[string]int
}

// StandbyStatus is how a replica-mode source's standby streams: Status is
// the source's (streaming, refreshing or failed), the lags nil when
// unknown.
type StandbyStatus struct {
	Source     string
	Status     string
	LagBytes   *int64
	LagSeconds *float64
}

// LimitUse is one limit and how much of it is used.
type LimitUse struct {
	// Name is the limit's key in [limits], e.g. "instances_per_user".
	Name string
	// Limit is the limit (bytes for backups_total_bytes); 0 is none.
	Limit int64
	// Used is the figure the limit holds: for a per-user limit, the most
	// any one user has.
	Used int64
	// ByOwner is each owner's figure, for a per-user limit; nil otherwise.
	ByOwner map[string]int64
	// Yours is the asking actor's own figure, for a per-user limit of a
	// Status from StatusService.Get to an actor other than the upload
	// user (whose ByOwner is then nil); nil otherwise.
	Yours *int64
}

// Status gathers the figures of GET /status. Degraded means an instance
// or image failed, the filesystem is nearly full, or the last reconcile
// found volumes that the metadata store does not account for.
func (e *Engine) Status(ctx context.Context) (Status, error) {
	st := Status{StorageDriver: e.opts.Storage.Name(), ImagesByStatus: map[string]int{}, InstancesByStatus: map[string]int{},
		BackupsByStatus: map[string]int{}}
	capacity, err := e.opts.Storage.Capacity(ctx)
	if err != nil {
		return st, err
	}
	st.TotalBytes, st.FreeBytes = capacity.TotalBytes, capacity.FreeBytes
	// Counts and ids only: /status and /metrics read no credentials.
	images, err := e.opts.Store.CountImagesByStatus(ctx)
	if err != nil {
		return st, err
	}
	for status, n := range images {
		st.ImagesByStatus[string(status)] = n
	}
	instances, err := e.opts.Store.InstanceStates(ctx)
	if err != nil {
		return st, err
	}
	st.Host = e.opts.Store.FleetHost()
	var down map[string]bool
	if st.Host != "" {
		st.FleetInstancesByStatus = map[string]int{}
		if down, err = e.downHosts(ctx); err != nil {
			return st, err
		}
	}
	instancesOf, protectedOf := map[string]int64{}, map[string]int64{}
	ownInstances := instances[:0:0]
	unavailableOf := map[string]int{}
	for _, inst := range instances {
		if st.Host == "" || inst.Host == st.Host {
			st.InstancesByStatus[string(inst.Status)]++
			ownInstances = append(ownInstances, inst)
		}
		if st.FleetInstancesByStatus != nil {
			if down[inst.Host] {
				st.FleetInstancesByStatus[string(store.InstanceUnavailable)]++
				unavailableOf[inst.Host]++
			} else {
				st.FleetInstancesByStatus[string(inst.Status)]++
			}
		}
		// The limits count the owner's instances on every host.
		if inst.Status != store.InstanceDestroying { // as the limits count them
			instancesOf[inst.Owner]++
			if inst.Protected {
				protectedOf[inst.Owner]++
			}
		}
	}
	branchesOf, err := e.opts.Store.CountImagesByOwner(ctx)
	if err != nil {
		return st, err
	}
	st.UsedByInstancesBytes = e.usedByInstances(ctx, ownInstances)
	backups, err := e.opts.Store.CountBackups(ctx)
	if err != nil {
		return st, err
	}
	for status, n := range backups.ByStatus {
		st.BackupsByStatus[string(status)] = n
	}
	// The archives on this host, which live on the same filesystem.
	st.UsedByBackupsBytes = backups.SizeBytes
	if st.Host != "" {
		st.UsedByBackupsBytes = backups.SizeBytesByHost[st.Host]
	}
	st.Limits = e.limitUses(capacity, instancesOf, protectedOf, branchesOf, backups.RunningByOwner, backups.Running, st.UsedByBackupsBytes)
	st.DiskReserveBytes = e.opts.Limits.DiskReserve.Of(capacity.TotalBytes)
	st.ExpectedCloningTime = e.cloneTimes.median()
	e.mu.Lock()
	st.Problems = append(st.Problems, e.storeProblems...)
	e.mu.Unlock()
	for _, host := range slices.Sorted(maps.Keys(down)) {
		if host != st.Host {
			st.Problems = append(st.Problems, fmt.Sprintf("host %s of the fleet is down (no heartbeat within fleet.down_timeout = %s): its %d instance(s) are unavailable",
				host, e.opts.DownTimeout, unavailableOf[host]))
		}
	}
	if n := st.InstancesByStatus[string(store.InstanceFailed)]; n > 0 {
		st.Problems = append(st.Problems, fmt.Sprintf("%d instance(s) failed", n))
	}
	if n := st.InstancesByStatus[string(store.InstanceStopped)]; n > 0 {
		st.Problems = append(st.Problems, fmt.Sprintf("%d instance(s) stopped while the disk was full; they start again once space is freed", n))
	}
	if capacity.TotalBytes > 0 && capacity.FreeBytes < capacity.TotalBytes/20 {
		st.Problems = append(st.Problems, "less than 5% of the disk is free")
	}
	if st.DiskReserveBytes > 0 && capacity.FreeBytes < st.DiskReserveBytes {
		st.Problems = append(st.Problems, fmt.Sprintf("the free space (%s) is under the disk reserve (limits.disk_reserve = %s): new instances, uploads and backups are refused",
			size(capacity.FreeBytes), e.opts.Limits.DiskReserve.describe(capacity.TotalBytes)))
	}
	sources, err := e.opts.Store.ListSources(ctx)
	if err != nil {
		return st, err
	}
	failedStandbys := 0
	for _, src := range sources {
		if src.Mode != store.SourceReplica {
			continue
		}
		st.Standbys = append(st.Standbys, StandbyStatus{Source: src.Name, Status: string(src.Status), LagBytes: src.LagBytes, LagSeconds: src.LagSeconds})
		if src.Status == store.SourceFailed {
			failedStandbys++
		}
	}
	if failedStandbys > 0 {
		st.Problems = append(st.Problems, fmt.Sprintf("%d replica-mode source(s) failed; GET /sources says why", failedStandbys))
	}
	st.Healthy = len(st.Problems) == 0
	return st, nil
}

// usedByInstancesEvery is how long the sum of instances' exclusive bytes
// is reused: reading it is filesystem-wide (a BTRFS transaction commit,
// a listing of every ZFS dataset), and /status and every /metrics scrape
// would otherwise pay it each time.
const usedByInstancesEvery = 30 * time.Second

// usedByInstances sums the instances' exclusive bytes, read in one
// storage call, at most once every usedByInstancesEvery. When the figures
// cannot be read it returns the last sum known (zero before the first).
func (e *Engine) usedByInstances(ctx context.Context, instances []store.InstanceState) int64 {
	e.used.mu.Lock()
	defer e.used.mu.Unlock()
	if !e.used.at.IsZero() && time.Since(e.used.at) < usedByInstancesEvery {
		return e.used.bytes
	}
	volumes := make([]string, len(instances))
	for i, inst := range instances {
		volumes[i] = InstanceVolume(inst.ID)
	}
	used, err := e.opts.Storage.ExclusiveBytesOf(ctx, volumes)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("engine: reading the instances' disk use", "err", err)
		}
		return e.used.bytes
	}
	var sum int64
	for _, n := range used {
		sum += n
	}
	// A volume left out was made or destroyed meanwhile: the sum is not
	// kept, so the next call reads again.
	if len(used) == len(volumes) && ctx.Err() == nil {
		e.used.bytes, e.used.at = sum, time.Now()
	}
	return sum
}

// limitUses pairs each count limit with its use; the per-user ones leave
// the upload user out, whom the upload_user_* ones count.
func (e *Engine) limitUses(c storage.Capacity, instancesOf, protectedOf, branchesOf, runningOf map[string]int64, running, backupBytes int64) []LimitUse {
	l := e.opts.Limits
	perUser := func(name string, limit int, of map[string]int64) LimitUse {
		u := LimitUse{Name: name, Limit: int64(limit), ByOwner: map[string]int64{}}
		for owner, n := range of {
			if !e.isUpload(owner) {
				u.ByOwner[owner] = n
				u.Used = max(u.Used, n)
			}
		}
		return u
	}
	return []LimitUse{
		perUser("instances_per_user", l.InstancesPerUser, instancesOf),
		perUser("protected_instances_per_user", l.ProtectedInstancesPerUser, protectedOf),
		perUser("branches_per_user", l.BranchesPerUser, branchesOf),
		perUser("running_backups_per_user", l.RunningBackupsPerUser, runningOf),
		{Name: "running_backups", Limit: int64(l.RunningBackups), Used: running},
		{Name: "backups_total_bytes", Limit: l.BackupsTotal.Of(c.TotalBytes), Used: backupBytes},
		{Name: "upload_user_instances", Limit: int64(l.UploadUserInstances), Used: instancesOf[UploadOwner]},
		{Name: "upload_user_protected_instances", Limit: int64(l.UploadUserProtectedInstances), Used: protectedOf[UploadOwner]},
		{Name: "upload_user_branches", Limit: int64(l.UploadUserBranches), Used: branchesOf[UploadOwner]},
		{Name: "upload_user_running_backups", Limit: int64(l.UploadUserRunningBackups), Used: runningOf[UploadOwner]},
	}
}

// cloneTimes keeps the durations of the latest instance creations.
type cloneTimes struct {
	mu     sync.Mutex
	recent []time.Duration
}

func (c *cloneTimes) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recent = append(c.recent, d)
	if len(c.recent) > 50 {
		c.recent = c.recent[len(c.recent)-50:]
	}
}

func (c *cloneTimes) median() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.recent) == 0 {
		return 0
	}
	s := slices.Clone(c.recent)
	slices.Sort(s)
	return s[len(s)/2]
}
