package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/writeback"
)

// UploadOwner is the owner the API records for the upload user (the
// shared secret: auth.UploadOwner), whom only the UploadUser* limits and
// the disk reserve hold.
const UploadOwner = "upload"

// Limits are the [limits] of the configuration. A zero count or Amount is
// no limit.
type Limits struct {
	InstancesPerUser          int
	ProtectedInstancesPerUser int
	BranchesPerUser           int
	RunningBackupsPerUser     int
	RunningBackups            int
	BackupsTotal              Amount
	DiskReserve               Amount
	// The upload user's own limits, instead of the per-user ones; the
	// global ones (RunningBackups, BackupsTotal) count its backups but
	// never refuse it.
	UploadUserInstances          int
	UploadUserProtectedInstances int
	UploadUserBranches           int
	UploadUserRunningBackups     int
}

// Amount is a number of bytes, or a percentage of the storage
// filesystem's size.
type Amount struct {
	Bytes   int64
	Percent float64
}

// IsZero reports whether the amount is none.
func (a Amount) IsZero() bool { return a.Bytes == 0 && a.Percent == 0 }

// Of is the amount in bytes on a filesystem of total bytes.
func (a Amount) Of(total int64) int64 {
	if a.Percent != 0 {
		return int64(float64(total) * a.Percent / 100)
	}
	return a.Bytes
}

// describe is the amount as the configuration says it, and in bytes when
// that is a percentage: "5%, 1.0 GiB" or "10 GiB".
func (a Amount) describe(total int64) string {
	if a.Percent != 0 {
		return percent(a.Percent) + ", " + size(a.Of(total))
	}
	return size(a.Bytes)
}

func percent(p float64) string { return strconv.FormatFloat(p, 'f', -1, 64) + "%" }

// count is "1 instance", "2 instances", "2 branches".
func count(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if strings.HasSuffix(noun, "ch") {
		return fmt.Sprintf("%d %ses", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// size is n bytes for people: "1.0 GiB".
func size(n int64) string {
	if n < 0 {
		return "-" + humanize.IBytes(uint64(-n))
	}
	return humanize.IBytes(uint64(n))
}

func (e *Engine) isUpload(owner string) bool { return owner == UploadOwner }

// instanceQuota is what the store is to hold owner's instances to.
func (e *Engine) instanceQuota(owner string) store.InstanceQuota {
	l := e.opts.Limits
	if e.isUpload(owner) {
		return store.InstanceQuota{Instances: l.UploadUserInstances, Protected: l.UploadUserProtectedInstances}
	}
	return store.InstanceQuota{Instances: l.InstancesPerUser, Protected: l.ProtectedInstancesPerUser}
}

// branchQuota is how many branches (images) the store lets owner have.
func (e *Engine) branchQuota(owner string) int {
	if e.isUpload(owner) {
		return e.opts.Limits.UploadUserBranches
	}
	return e.opts.Limits.BranchesPerUser
}

// backupQuota is what the store is to hold a backup of owner's to;
// capacity sizes BackupsTotal when it is a percentage.
func (e *Engine) backupQuota(owner string, capacity storage.Capacity) store.BackupQuota {
	l := e.opts.Limits
	if e.isUpload(owner) {
		return store.BackupQuota{OwnerRunning: l.UploadUserRunningBackups}
	}
	return store.BackupQuota{OwnerRunning: l.RunningBackupsPerUser, Running: l.RunningBackups,
		TotalBytes: l.BackupsTotal.Of(capacity.TotalBytes)}
}

// limitKey is the configuration key of a store quota for owner.
func (e *Engine) limitKey(q store.Quota, owner string) string {
	upload := e.isUpload(owner)
	switch {
	case q == store.QuotaInstances && upload:
		return "limits.upload_user_instances"
	case q == store.QuotaInstances:
		return "limits.instances_per_user"
	case q == store.QuotaProtected && upload:
		return "limits.upload_user_protected_instances"
	case q == store.QuotaProtected:
		return "limits.protected_instances_per_user"
	case q == store.QuotaBranches && upload:
		return "limits.upload_user_branches"
	case q == store.QuotaBranches:
		return "limits.branches_per_user"
	case q == store.QuotaOwnerRunningBackup && upload:
		return "limits.upload_user_running_backups"
	case q == store.QuotaOwnerRunningBackup:
		return "limits.running_backups_per_user"
	case q == store.QuotaRunningBackups:
		return "limits.running_backups"
	}
	return "limits.backups_total_bytes"
}

// quotaRefusal turns the store's *QuotaError into a *LimitError whose
// message speaks to whoever acts in ctx; other errors are returned as they
// are.
func (e *Engine) quotaRefusal(ctx context.Context, err error) error {
	var q *store.QuotaError
	if !errors.As(err, &q) {
		return err
	}
	key := e.limitKey(q.Quota, q.Owner)
	who := q.Owner + " has"
	if actorFrom(ctx) == q.Owner {
		who = "you have"
	}
	var msg string
	switch q.Quota {
	case store.QuotaInstances:
		msg = fmt.Sprintf("%s %s, the limit (%s) is %d: destroy one first", who, count(q.Count, "instance"), key, q.Limit)
	case store.QuotaProtected:
		msg = fmt.Sprintf("%s %s, the limit (%s) is %d: unprotect one first (a protected instance never expires)", who, count(q.Count, "protected instance"), key, q.Limit)
	case store.QuotaBranches:
		msg = fmt.Sprintf("%s %s, the limit (%s) is %d: destroy one first", who, count(q.Count, "branch"), key, q.Limit)
	case store.QuotaOwnerRunningBackup:
		msg = fmt.Sprintf("%s %s being written, the limit (%s) is %d: try again once one is done", who, count(q.Count, "backup"), key, q.Limit)
	case store.QuotaRunningBackups:
		being := "are"
		if q.Count == 1 {
			being = "is"
		}
		msg = fmt.Sprintf("%s %s being written, the limit (%s) is %d: try again once one is done", count(q.Count, "backup"), being, key, q.Limit)
	default:
		limit := size(q.Limit)
		if p := e.opts.Limits.BackupsTotal.Percent; p != 0 {
			limit += " (" + percent(p) + " of the disk)"
		}
		msg = fmt.Sprintf("the backups take %s (%d bytes), the limit (%s) is %s: delete backups that are no longer needed",
			size(q.Count), q.Count, key, limit)
	}
	return &LimitError{Key: key, Used: q.Count, Limit: q.Limit, Msg: msg}
}

// reserveCheckBytes is how much a guarded writer writes between two looks
// at the free space.
const reserveCheckBytes = 32 << 20

// CheckDiskReserve refuses (a *LimitError, ErrNoDiskSpace) when the
// storage filesystem's free space, less need bytes about to be written, is
// under the disk reserve; what names the refused operation ("new
// instances", "an upload of 3 GiB").
func (e *Engine) CheckDiskReserve(ctx context.Context, need int64, what string) error {
	return e.checkReserve(ctx, need, what+" refused")
}

// checkReserve is CheckDiskReserve for work under way: what says what
// happens to it ("an upload stopped").
func (e *Engine) checkReserve(ctx context.Context, need int64, what string) error {
	if e.opts.Limits.DiskReserve.IsZero() {
		return nil
	}
	c, err := e.capacity(ctx)
	if err != nil {
		return err
	}
	return e.reserveRefusal(c, need, what)
}

// capacity reads the storage filesystem's capacity. Near the disk reserve
// it first writes the page cache back: a filesystem counts data not yet
// written as free (BTRFS does), and the page cache can hold gigabytes.
func (e *Engine) capacity(ctx context.Context) (storage.Capacity, error) {
	c, err := e.opts.Storage.Capacity(ctx)
	if err != nil || e.opts.Limits.DiskReserve.IsZero() {
		return c, err
	}
	if c.FreeBytes-e.opts.Limits.DiskReserve.Of(c.TotalBytes) < writeback.Pending() {
		writeback.Flush()
		return e.opts.Storage.Capacity(ctx)
	}
	return c, nil
}

// reserveRefusal is checkReserve on a capacity read already.
func (e *Engine) reserveRefusal(c storage.Capacity, need int64, what string) error {
	r := e.opts.Limits.DiskReserve
	if r.IsZero() {
		return nil
	}
	reserve := r.Of(c.TotalBytes)
	left := c.FreeBytes - max(need, 0)
	if left >= reserve {
		return nil
	}
	state := fmt.Sprintf("%s (%d bytes) of %s is free", size(c.FreeBytes), c.FreeBytes, size(c.TotalBytes))
	if need > 0 {
		state += fmt.Sprintf(" and it would leave %s", size(left))
	}
	return &LimitError{Key: "limits.disk_reserve", Used: c.FreeBytes, Limit: reserve, Disk: true,
		Msg: fmt.Sprintf("%s: %s, under the disk reserve (limits.disk_reserve = %s); running instances keep it, and new work waits until space is freed (destroy instances, delete backups)",
			what, state, r.describe(c.TotalBytes))}
}

// reserveWriter is an io.Writer that fails (with a *LimitError) once the
// free space is under the disk reserve, looked at every reserveCheckBytes.
type reserveWriter struct {
	w     io.Writer
	e     *Engine
	ctx   context.Context
	what  string
	since int64
}

func (e *Engine) guardWriter(ctx context.Context, w io.Writer, what string) io.Writer {
	if e.opts.Limits.DiskReserve.IsZero() {
		return w
	}
	return &reserveWriter{w: w, e: e, ctx: ctx, what: what}
}

func (r *reserveWriter) Write(p []byte) (int, error) {
	if r.since += int64(len(p)); r.since >= reserveCheckBytes {
		r.since = 0
		if err := r.e.checkReserve(r.ctx, 0, r.what+" stopped"); err != nil {
			return 0, err
		}
	}
	return r.w.Write(p)
}

// guardReserve returns a context that is cancelled, with a *LimitError as
// its cause, once the free space is under the disk reserve, looked at
// every ReserveCheckEvery; for work whose writes sindrid does not see
// (extracting an archive, pg_basebackup). stop ends the watch.
func (e *Engine) guardReserve(ctx context.Context, what string) (guarded context.Context, stop func()) {
	if e.opts.Limits.DiskReserve.IsZero() {
		return ctx, func() {}
	}
	guarded, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(e.opts.ReserveCheckEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-guarded.Done():
				return
			case <-tick.C:
				if err := e.checkReserve(guarded, 0, what+" stopped"); errors.Is(err, ErrNoDiskSpace) {
					e.log.Warn("engine: stopping work at the disk reserve", "work", what, "err", err)
					cancel(err)
					return
				}
			}
		}
	}()
	return guarded, func() {
		close(done)
		cancel(nil)
	}
}

// DiskReserveFile, in UploadsDir, tells sindri-upload-shell the disk
// reserve in bytes (uploadshell.DiskReserveFile), so that scp uploads stop
// at it too.
const DiskReserveFile = ".disk_reserve"

// publishReserve writes the disk reserve into UploadsDir/DiskReserveFile,
// readable by the upload account, when scp uploads are on; with no
// reserve the file goes. On ZFS the filesystem's size moves with the
// pool's use, so a reserve in percent is written again at every reconcile.
func (e *Engine) publishReserve(ctx context.Context) error {
	if _, ok := e.uploadAccount(); !ok {
		return nil
	}
	path := filepath.Join(e.opts.UploadsDir, DiskReserveFile)
	r := e.opts.Limits.DiskReserve
	if r.IsZero() {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	c, err := e.opts.Storage.Capacity(ctx)
	if err != nil {
		return err
	}
	content := []byte(strconv.FormatInt(r.Of(c.TotalBytes), 10) + "\n")
	if old, err := os.ReadFile(path); err == nil && string(old) == string(content) {
		return nil
	}
	tmp, err := os.CreateTemp(e.opts.UploadsDir, DiskReserveFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// reserveCause is the *LimitError that stopped ctx (see guardReserve), or
// nil.
func reserveCause(ctx context.Context) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrNoDiskSpace) {
		return cause
	}
	return nil
}
