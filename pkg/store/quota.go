package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrQuotaExceeded: a quota given with an insert or an update refused it.
// The error is a *QuotaError, which says which quota and the figures.
var ErrQuotaExceeded = errors.New("quota exceeded")

// Quota names what a QuotaError counted.
type Quota string

// Quotas.
const (
	QuotaInstances          Quota = "instances"           // an owner's instances
	QuotaProtected          Quota = "protected_instances" // an owner's protected instances
	QuotaBranches           Quota = "branches"            // an owner's images (branches of instances)
	QuotaOwnerRunningBackup Quota = "owner_running_backups"
	QuotaRunningBackups     Quota = "running_backups"
	QuotaBackupBytes        Quota = "backup_bytes" // the size of every backup's archive
)

// QuotaError is a write refused by a quota: there are Count already (of
// Owner's, for a quota per owner), and the quota is Limit.
type QuotaError struct {
	Quota Quota
	Owner string // "" for a quota over everybody's
	Count int64
	Limit int64
}

func (e *QuotaError) Error() string {
	if e.Owner != "" {
		return fmt.Sprintf("store: %s of %s: %d, quota %d", e.Quota, e.Owner, e.Count, e.Limit)
	}
	return fmt.Sprintf("store: %s: %d, quota %d", e.Quota, e.Count, e.Limit)
}

// Unwrap makes errors.Is(err, ErrQuotaExceeded) true.
func (e *QuotaError) Unwrap() error { return ErrQuotaExceeded }

// InstanceQuota caps an owner's instances; a zero field is no cap. The
// owner's rows are counted, and the new row written, in one transaction
// that holds a lock per owner (pg_advisory_xact_lock), so that concurrent
// writes, from this process or another host's, cannot pass a cap together.
// Instances being destroyed are not counted.
type InstanceQuota struct {
	Instances int // rows of the owner
	Protected int // protected rows of the owner, checked when the row is protected
}

// BackupQuota caps backups at insert; a zero field is no cap. Backups are
// counted, and the new row written, under one lock for all backups.
type BackupQuota struct {
	OwnerRunning int   // running backups of the new backup's owner
	Running      int   // running backups of everybody
	TotalBytes   int64 // the sum of every backup's size_bytes
}

// Keys of pg_advisory_xact_lock(int, int): its two-key space is apart from
// the one-key space of the migration lock.
const (
	lockClassInstances int32 = 0x53494e01 // with hashtext(owner)
	lockClassBackups   int32 = 0x53494e02 // with 0
	lockClassBranches  int32 = 0x53494e03 // with hashtext(owner)
)

type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// lockOwnerInstances takes the owner's instance lock until tx ends.
func lockOwnerInstances(ctx context.Context, tx pgx.Tx, owner string) error {
	_, err := tx.Exec(ctx, `select pg_advisory_xact_lock($1, hashtext($2))`, lockClassInstances, owner)
	return err
}

// lockOwnerBranches takes the owner's branch lock until tx ends.
func lockOwnerBranches(ctx context.Context, tx pgx.Tx, owner string) error {
	_, err := tx.Exec(ctx, `select pg_advisory_xact_lock($1, hashtext($2))`, lockClassBranches, owner)
	return err
}

// checkBranchQuota counts the owner's images (each one still there,
// whatever its status) and says whether one more passes limit (> 0).
func checkBranchQuota(ctx context.Context, tx pgx.Tx, owner string, limit int) error {
	var n int64
	if err := tx.QueryRow(ctx, `select count(*) from images where owner = $1`, owner).Scan(&n); err != nil {
		return err
	}
	if n >= int64(limit) {
		return &QuotaError{Quota: QuotaBranches, Owner: owner, Count: n, Limit: int64(limit)}
	}
	return nil
}

// checkInstanceQuota counts the owner's instances other than except (0:
// none) and says whether one more (protected or not) passes q.
func checkInstanceQuota(ctx context.Context, tx pgx.Tx, owner string, protected bool, except int64, q InstanceQuota) error {
	var all, prot int64
	err := tx.QueryRow(ctx, `select count(*), count(*) filter (where protected) from instances
		where owner = $1 and id <> $2 and status <> 'destroying'`, owner, except).Scan(&all, &prot)
	if err != nil {
		return err
	}
	if q.Instances > 0 && all >= int64(q.Instances) {
		return &QuotaError{Quota: QuotaInstances, Owner: owner, Count: all, Limit: int64(q.Instances)}
	}
	if protected && q.Protected > 0 && prot >= int64(q.Protected) {
		return &QuotaError{Quota: QuotaProtected, Owner: owner, Count: prot, Limit: int64(q.Protected)}
	}
	return nil
}

// checkBackupQuota counts the backups and says whether one more of owner's
// passes q.
func checkBackupQuota(ctx context.Context, tx pgx.Tx, owner string, q BackupQuota) error {
	var ownerRunning, running, bytes int64
	err := tx.QueryRow(ctx, `select count(*) filter (where status = 'running' and owner = $1),
		count(*) filter (where status = 'running'), coalesce(sum(size_bytes), 0)::bigint
		from backups`, owner).Scan(&ownerRunning, &running, &bytes)
	if err != nil {
		return err
	}
	switch {
	case q.OwnerRunning > 0 && ownerRunning >= int64(q.OwnerRunning):
		return &QuotaError{Quota: QuotaOwnerRunningBackup, Owner: owner, Count: ownerRunning, Limit: int64(q.OwnerRunning)}
	case q.Running > 0 && running >= int64(q.Running):
		return &QuotaError{Quota: QuotaRunningBackups, Count: running, Limit: int64(q.Running)}
	case q.TotalBytes > 0 && bytes >= q.TotalBytes:
		return &QuotaError{Quota: QuotaBackupBytes, Count: bytes, Limit: q.TotalBytes}
	}
	return nil
}
