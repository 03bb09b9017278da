package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// ErrTTLTooLong is a requested lifetime above the configured maximum;
// ErrInvalid is a request that makes no sense (a negative TTL, a past
// expiry).
var (
	ErrTTLTooLong = errors.New("requested lifetime is longer than the maximum")
	ErrInvalid    = errors.New("invalid request")
)

// ExpiryFor turns a requested TTL (0: the default) into an expiry time,
// nil meaning never.
func (e *Engine) ExpiryFor(ttl time.Duration) (*time.Time, error) {
	if ttl < 0 {
		return nil, fmt.Errorf("%w: ttl %s is negative", ErrInvalid, ttl)
	}
	if ttl == 0 {
		ttl = e.opts.DefaultTTL
	}
	if e.opts.MaxTTL > 0 && ttl > e.opts.MaxTTL {
		return nil, fmt.Errorf("%w: ttl %s, maximum %s", ErrTTLTooLong, ttl, e.opts.MaxTTL)
	}
	if ttl == 0 {
		return nil, nil
	}
	at := e.now().Add(ttl).UTC().Truncate(time.Second)
	return &at, nil
}

func (e *Engine) now() time.Time {
	if e.opts.Now != nil {
		return e.opts.Now()
	}
	return time.Now()
}

// UpdateInstance changes an instance's expiry and protection; nil leaves
// either as it is. An expiry beyond now + MaxTTL is refused.
func (e *Engine) UpdateInstance(ctx context.Context, id int64, expiresAt *time.Time, protected *bool) (store.Instance, error) {
	unlock := e.locks.Lock(id)
	defer unlock()
	inst, err := e.GetInstance(ctx, id)
	if err != nil {
		return store.Instance{}, err
	}
	if expiresAt != nil && !expiresAt.IsZero() {
		if expiresAt.Before(e.now()) {
			return store.Instance{}, fmt.Errorf("%w: expires_at %s is in the past", ErrInvalid, expiresAt.UTC().Format(time.RFC3339))
		}
		if e.opts.MaxTTL > 0 && expiresAt.After(e.now().Add(e.opts.MaxTTL)) {
			return store.Instance{}, fmt.Errorf("%w: expires_at %s is more than %s away", ErrTTLTooLong, expiresAt.UTC().Format(time.RFC3339), e.opts.MaxTTL)
		}
	}
	if expiresAt != nil && expiresAt.IsZero() && e.opts.MaxTTL > 0 {
		return store.Instance{}, fmt.Errorf("%w: an instance cannot live forever while the maximum lifetime is %s (protect it instead)", ErrTTLTooLong, e.opts.MaxTTL)
	}
	// A protected instance never expires: the owner's protected ones are
	// counted in the update's transaction.
	if err := e.opts.Store.SetInstanceExpiryWithin(ctx, id, expiresAt, protected, e.instanceQuota(inst.Owner).Protected); err != nil {
		err = e.quotaRefusal(ctx, err)
		if errors.Is(err, ErrQuotaExceeded) {
			e.auditFailure(ctx, "update_instance", "instance", id, err)
		}
		return store.Instance{}, err
	}
	e.audit(ctx, "update_instance", "instance", id, "ok", "")
	return e.GetInstance(ctx, id)
}

// GetInstance reads one instance; ErrNotFound when there is none.
func (e *Engine) GetInstance(ctx context.Context, id int64) (store.Instance, error) {
	inst, err := e.opts.Store.GetInstance(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return inst, fmt.Errorf("%w: instance %d", ErrNotFound, id)
	}
	return inst, err
}

// ResetInstance throws away an instance's changes: its volume is cloned
// again from the image and Postgres started on it, with the same id, port
// and credentials. A reset cut short is finished by Reconcile.
func (e *Engine) ResetInstance(ctx context.Context, id int64) (store.Instance, error) {
	unlock := e.locks.Lock(id)
	defer unlock()
	inst, err := e.GetInstance(ctx, id)
	if err != nil {
		return inst, err
	}
	if inst.Status == store.InstanceCreating || inst.Status == store.InstanceDestroying {
		return inst, fmt.Errorf("%w: instance %d is %s", ErrInvalid, id, inst.Status)
	}
	if e.backupPins(InstanceVolume(id)) {
		err := fmt.Errorf("%w: a backup of instance %d is being written; reset it once the backup is done", ErrBackupRunning, id)
		e.auditFailure(ctx, "reset_instance", "instance", id, err)
		return inst, err
	}
	if err := e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceResetting, ""); err != nil {
		return inst, err
	}
	if err := e.reclone(ctx, inst); err != nil {
		msg := fmt.Sprintf("reset failed: %v", err)
		e.audit(context.WithoutCancel(ctx), "reset_instance", "instance", id, "failed", msg)
		return inst, errors.Join(err, e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceFailed, msg))
	}
	e.audit(ctx, "reset_instance", "instance", id, "ok", "")
	return e.GetInstance(ctx, id)
}

// reclone replaces the instance's volume with a fresh clone and starts it.
func (e *Engine) reclone(ctx context.Context, inst store.Instance) error {
	e.unwatch(inst.ID)
	name := InstanceVolume(inst.ID)
	if why, err := e.notItsVolume(ctx, inst.ID); err != nil {
		return err
	} else if why != "" {
		return fmt.Errorf("%w: %s; it is kept as it is", ErrNotItsVolume, why)
	}
	if err := e.stopVolume(ctx, name); err != nil {
		return err
	}
	if err := e.opts.Storage.Destroy(ctx, name); errors.Is(err, storage.ErrHasClones) {
		return fmt.Errorf("%w: a backup of instance %d is being written; reset it once the backup is done", ErrBackupRunning, inst.ID)
	} else if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	vol, err := e.opts.Storage.Clone(ctx, ImageVolume(inst.ImageID), name)
	if err != nil {
		return err
	}
	if err := e.recordInstanceVolume(ctx, vol.Path, inst, false); err != nil {
		return err
	}
	if inst.Port == 0 { // a failed instance gave its port up
		port, err := e.allocatePort(ctx, inst.ID)
		if err != nil {
			return err
		}
		inst.Port = port
	}
	if err := e.start(ctx, inst, true); err != nil {
		return err
	}
	if err := e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceRunning, ""); err != nil {
		return err
	}
	e.watch(inst.ID)
	inst.Status = store.InstanceRunning
	if err := e.recordInstanceVolume(ctx, vol.Path, inst, true); err != nil {
		e.log.Error("engine: recording a reset instance made in its volume", "instance_id", inst.ID, "err", err)
	}
	return nil
}

// DestroyExpired destroys the instances past their expiry that are not
// protected, and returns how many it destroyed.
func (e *Engine) DestroyExpired(ctx context.Context) (int, error) {
	if e.storeMismatch.Load() {
		return 0, fmt.Errorf("%w: no instance is destroyed for its expiry until they agree", ErrStoreMismatch)
	}
	expired, err := e.opts.Store.ExpiredInstances(ctx, e.now())
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, inst := range expired {
		e.log.Info("engine: instance expired", "instance_id", inst.ID, "expires_at", inst.ExpiresAt)
		err := e.DestroyInstance(WithActor(ctx, "expiry"), inst.ID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, fmt.Errorf("instance %d: %w", inst.ID, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// usedByInstancesEvery is how long the sum of instances' exclusive bytes
// is reused: on ZFS each volume's figure is a command, and /status and
// every /metrics scrape would otherwise run one per instance.
const usedByInstancesEvery = 30 * time.Second

// usedByInstances sums the instances' exclusive bytes, at most once every
// usedByInstancesEvery.
func (e *Engine) usedByInstances(ctx context.Context, instances []store.InstanceState) int64 {
	e.used.mu.Lock()
	defer e.used.mu.Unlock()
	if !e.used.at.IsZero() && time.Since(e.used.at) < usedByInstancesEvery {
		return e.used.bytes
	}
	var sum int64
	complete := true
	for _, inst := range instances {
		if n, err := e.opts.Storage.ExclusiveBytes(ctx, InstanceVolume(inst.ID)); err == nil {
			sum += n
		} else {
			complete = false // gone meanwhile, or the caller gave up
		}
	}
	if complete && ctx.Err() == nil {
		e.used.bytes, e.used.at = sum, time.Now()
	}
	return sum
}

// limitUses pairs each count limit with its use; the per-user ones leave
// the upload user out, whom the upload_user_* ones count.
func (e *Engine) limitUses(c storage.Capacity, instancesOf, protectedOf, runningOf map[string]int64, running, backupBytes int64) []LimitUse {
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
		perUser("running_backups_per_user", l.RunningBackupsPerUser, runningOf),
		{Name: "running_backups", Limit: int64(l.RunningBackups), Used: running},
		{Name: "backups_total_bytes", Limit: l.BackupsTotal.Of(c.TotalBytes), Used: backupBytes},
		{Name: "upload_user_instances", Limit: int64(l.UploadUserInstances), Used: instancesOf[UploadOwner]},
		{Name: "upload_user_protected_instances", Limit: int64(l.UploadUserProtectedInstances), Used: protectedOf[UploadOwner]},
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
	instancesOf, protectedOf := map[string]int64{}, map[string]int64{}
	for _, inst := range instances {
		st.InstancesByStatus[string(inst.Status)]++
		if inst.Status != store.InstanceDestroying { // as the limits count them
			instancesOf[inst.Owner]++
			if inst.Protected {
				protectedOf[inst.Owner]++
			}
		}
	}
	st.UsedByInstancesBytes = e.usedByInstances(ctx, instances)
	backups, err := e.opts.Store.CountBackups(ctx)
	if err != nil {
		return st, err
	}
	for status, n := range backups.ByStatus {
		st.BackupsByStatus[string(status)] = n
	}
	st.UsedByBackupsBytes = backups.SizeBytes // the archives, which live on the same filesystem
	st.Limits = e.limitUses(capacity, instancesOf, protectedOf, backups.RunningByOwner, backups.Running, st.UsedByBackupsBytes)
	st.DiskReserveBytes = e.opts.Limits.DiskReserve.Of(capacity.TotalBytes)
	st.ExpectedCloningTime = e.cloneTimes.median()
	e.mu.Lock()
	st.Problems = append(st.Problems, e.storeProblems...)
	e.mu.Unlock()
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
	st.Healthy = len(st.Problems) == 0
	return st, nil
}
