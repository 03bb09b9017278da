package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// BackupStatus is a backup's place in its lifecycle.
type BackupStatus string

// Backup statuses.
const (
	BackupRunning BackupStatus = "running"
	BackupDone    BackupStatus = "done"
	BackupFailed  BackupStatus = "failed"
)

// Backup is an archive of an instance's or an image's data. It outlives
// its source: InstanceID and ImageID are not foreign keys.
type Backup struct {
	ID         int64        `db:"id"`
	InstanceID int64        `db:"instance_id"` // exactly one of InstanceID
	ImageID    int64        `db:"image_id"`    // and ImageID is set
	Owner      string       `db:"owner"`       // an e-mail, a token's name, or "upload"
	Status     BackupStatus `db:"status"`
	Error      string       `db:"error"`
	Path       string       `db:"path"`
	SizeBytes  int64        `db:"size_bytes"`
	SHA256     string       `db:"sha256"`
	// UserWritten: the data may hold what an instance's user wrote (a
	// backup of an instance, or of an image restored from one).
	UserWritten bool `db:"user_written"`
	// Host is, in a fleet, the host whose disk holds the archive; "" on a
	// single host.
	Host      string    `db:"host"`
	CreatedAt time.Time `db:"created_at"`
	UpdatedAt time.Time `db:"updated_at"`
}

// BackupInput is what CreateBackup records; the backup starts running.
// Exactly one of InstanceID and ImageID must be set (else ErrInvalid).
type BackupInput struct {
	InstanceID int64
	ImageID    int64
	Owner      string // "" records "upload"
	Path       string // may be set later by SetBackupDone
	// Quota, if not zero, caps the backups: see BackupQuota.
	Quota BackupQuota
	// UserWritten is recorded as given for a backup of an image; a backup
	// of an instance is always user-written.
	UserWritten bool
}

// BackupFilter selects backups: zero fields match anything.
type BackupFilter struct {
	InstanceID int64
	ImageID    int64
	Owner      string
}

const backupColumns = `id, coalesce(instance_id, 0) as instance_id,
	coalesce(image_id, 0) as image_id, owner, status, coalesce(error, '') as error,
	coalesce(path, '') as path, coalesce(size_bytes, 0) as size_bytes,
	coalesce(sha256, '') as sha256, user_written, coalesce(host, '') as host, created_at, updated_at`

// CreateBackup records a new running backup; a *QuotaError
// (ErrQuotaExceeded) if in.Quota refuses it. In a fleet (SetFleetHost)
// its archive is this host's.
func (s *Store) CreateBackup(ctx context.Context, in BackupInput) (Backup, error) {
	owner := in.Owner
	if owner == "" {
		owner = "upload"
	}
	// In a fleet, the archive is written on this host's disk.
	const insert = `insert into backups (instance_id, image_id, owner, path, user_written, host)
		values ($1, $2, $3, $4, $5, $6) returning ` + backupColumns
	args := []any{nullInt(in.InstanceID), nullInt(in.ImageID), owner, nullText(in.Path), in.UserWritten || in.InstanceID != 0,
		nullText(s.FleetHost())}
	if in.Quota == (BackupQuota{}) {
		b, err := get[Backup](ctx, s, insert, args...)
		return b, wrap(err, "create backup")
	}
	var b Backup
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `select pg_advisory_xact_lock($1, 0)`, lockClassBackups); err != nil {
			return err
		}
		if err := checkBackupQuota(ctx, tx, owner, in.Quota); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, insert, args...)
		var err error
		b, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Backup])
		return err
	})
	var qerr *QuotaError
	if errors.As(err, &qerr) {
		return b, qerr
	}
	return b, wrap(err, "create backup")
}

// GetBackup reads one backup.
func (s *Store) GetBackup(ctx context.Context, id int64) (Backup, error) {
	b, err := get[Backup](ctx, s, `select `+backupColumns+` from backups where id = $1`, id)
	return b, wrap(err, "get backup %d", id)
}

// ListBackups reads the backups f selects, newest first.
func (s *Store) ListBackups(ctx context.Context, f BackupFilter) ([]Backup, error) {
	bs, err := list[Backup](ctx, s, `select `+backupColumns+` from backups
		where ($1 = 0 or instance_id = $1) and ($2 = 0 or image_id = $2)
		and ($3 = '' or owner = $3)
		order by id desc`, f.InstanceID, f.ImageID, f.Owner)
	return bs, wrap(err, "list backups")
}

// BackupTotals are what /status and /metrics report of the backups.
type BackupTotals struct {
	ByStatus  map[BackupStatus]int
	SizeBytes int64 // the archives' bytes, all statuses
	// SizeBytesByHost is SizeBytes of each fleet host's archives ("": a
	// single host's).
	SizeBytesByHost map[string]int64
	// Running is the running backups, RunningByOwner each owner's.
	Running        int64
	RunningByOwner map[string]int64
}

// CountBackups counts the backups by status, sums their sizes and counts
// each owner's running ones.
func (s *Store) CountBackups(ctx context.Context) (BackupTotals, error) {
	rows, _ := s.pool.Query(ctx, `select status, owner, coalesce(host, ''), count(*), coalesce(sum(size_bytes), 0)::bigint
		from backups group by status, owner, host`)
	t := BackupTotals{ByStatus: map[BackupStatus]int{}, RunningByOwner: map[string]int64{}, SizeBytesByHost: map[string]int64{}}
	var status BackupStatus
	var owner, host string
	var n int
	var size int64
	_, err := pgx.ForEachRow(rows, []any{&status, &owner, &host, &n, &size}, func() error {
		t.ByStatus[status] += n
		t.SizeBytes += size
		t.SizeBytesByHost[host] += size
		if status == BackupRunning {
			t.RunningByOwner[owner] += int64(n)
			t.Running += int64(n)
		}
		return nil
	})
	return t, wrap(err, "count backups")
}

// SetBackupStatus sets a backup's status and error ("" clears it).
func (s *Store) SetBackupStatus(ctx context.Context, id int64, status BackupStatus, errText string) error {
	tag, err := s.pool.Exec(ctx, `update backups set status = $2, error = $3 where id = $1`,
		id, status, nullText(errText))
	return affected(tag, err, "set backup %d status", id)
}

// SetBackupDone records a finished backup: done, where it is, its size and
// SHA-256 (hex), no error.
func (s *Store) SetBackupDone(ctx context.Context, id int64, path string, sizeBytes int64, sha256 string) error {
	tag, err := s.pool.Exec(ctx, `update backups set status = 'done', error = null,
		path = $2, size_bytes = $3, sha256 = $4 where id = $1`,
		id, nullText(path), sizeBytes, nullText(sha256))
	return affected(tag, err, "set backup %d done", id)
}

// DeleteBackup deletes a backup's row.
func (s *Store) DeleteBackup(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `delete from backups where id = $1`, id)
	return affected(tag, err, "delete backup %d", id)
}
