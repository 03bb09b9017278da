package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// InstanceStatus is an instance's place in its lifecycle.
type InstanceStatus string

// Instance statuses.
const (
	InstanceCreating   InstanceStatus = "creating"   // clone, port, certificates, start under way
	InstanceRunning    InstanceStatus = "running"    // its server accepts connections
	InstanceStopped    InstanceStatus = "stopped"    // its server is not running
	InstanceFailed     InstanceStatus = "failed"     // see Error
	InstanceDestroying InstanceStatus = "destroying" // being torn down; the row goes last
	InstanceResetting  InstanceStatus = "resetting"  // volume being cloned again from the image
	// InstanceUnavailable is never stored: an instance reads so while its
	// fleet host is down (no heartbeat within the down timeout), and its
	// stored status again once the host is back.
	InstanceUnavailable InstanceStatus = "unavailable"
)

// Credentials are what a client needs to connect to an instance.
type Credentials struct {
	Username          string `db:"username"`
	Password          string `db:"password"`
	CACertificate     string `db:"ca_certificate"`
	ServerCertificate string `db:"server_certificate"`
	ServerKey         string `db:"server_key"`
	ClientCertificate string `db:"client_certificate"`
	ClientKey         string `db:"client_key"`
}

// Instance is a writable clone of an image served by its own PostgreSQL.
type Instance struct {
	ID      int64          `db:"id"`
	ImageID int64          `db:"image_id"`
	Owner   string         `db:"owner"` // an e-mail, or "upload"
	Status  InstanceStatus `db:"status"`
	Port    int            `db:"port"` // 0: not allocated
	Credentials
	Error     string     `db:"error"`
	PID       int        `db:"pid"`        // 0: none recorded
	ExpiresAt *time.Time `db:"expires_at"` // nil: never
	Protected bool       `db:"protected"`  // never expires while set
	Host      string     `db:"host"`       // in a fleet, the host it lives on; "" on a single host
	// Hostname is, in a fleet, the public hostname of its host, which
	// the engine's reads for the API fill in from the hosts; "" otherwise.
	Hostname  string    `db:"-"`
	CreatedAt time.Time `db:"created_at"`
	UpdatedAt time.Time `db:"updated_at"`
}

// InstanceInput is what CreateInstance records; the instance starts
// creating, with no port.
type InstanceInput struct {
	ImageID   int64
	Owner     string
	ExpiresAt *time.Time
	Protected bool
	// Quota, if not zero, caps the owner's instances: see InstanceQuota.
	Quota InstanceQuota
	// CreationToken, if set, finds the row again (InstanceCreatedAs)
	// when the insert's answer is lost.
	CreationToken string
}

const instanceColumns = `id, image_id, owner, status, coalesce(port, 0) as port,
	coalesce(username, '') as username, coalesce(password, '') as password,
	coalesce(ca_certificate, '') as ca_certificate,
	coalesce(server_certificate, '') as server_certificate,
	coalesce(server_key, '') as server_key,
	coalesce(client_certificate, '') as client_certificate,
	coalesce(client_key, '') as client_key,
	coalesce(error, '') as error, coalesce(pid, 0) as pid,
	expires_at, protected, coalesce(host, '') as host, created_at, updated_at`

// openCredentials opens the sealed credentials of an instance read from
// the database, in place.
func (s *Store) openCredentials(inst *Instance) error {
	for _, f := range []struct {
		column string
		value  *string
	}{{"password", &inst.Password}, {"server_key", &inst.ServerKey}, {"client_key", &inst.ClientKey}} {
		plain, err := s.open("instances", f.column, inst.ID, *f.value)
		if err != nil {
			return err
		}
		*f.value = plain
	}
	return nil
}

// getInstance runs a query returning one instance and opens its secrets.
func (s *Store) getInstance(ctx context.Context, sql string, args ...any) (Instance, error) {
	inst, err := get[Instance](ctx, s, sql, args...)
	if err != nil {
		return inst, err
	}
	if err := s.openCredentials(&inst); err != nil {
		return Instance{}, err
	}
	return inst, nil
}

// listInstances runs a query returning instances and opens their secrets.
func (s *Store) listInstances(ctx context.Context, sql string, args ...any) ([]Instance, error) {
	insts, err := list[Instance](ctx, s, sql, args...)
	if err != nil {
		return insts, err
	}
	for i := range insts {
		if err := s.openCredentials(&insts[i]); err != nil {
			return []Instance{}, err
		}
	}
	return insts, nil
}

// CreateInstance records a new instance of an image; ErrNotFound if the
// image does not exist, a *QuotaError (ErrQuotaExceeded) if in.Quota
// refuses it. In a fleet (SetFleetHost) the instance is this host's.
func (s *Store) CreateInstance(ctx context.Context, in InstanceInput) (Instance, error) {
	const insert = `insert into instances
		(image_id, owner, expires_at, protected, host, creation_token) values ($1, $2, $3, $4, $5, $6)
		returning ` + instanceColumns
	args := []any{in.ImageID, in.Owner, utc(in.ExpiresAt), in.Protected, nullText(s.FleetHost()), nullText(in.CreationToken)}
	var inst Instance
	var err error
	if in.Quota == (InstanceQuota{}) {
		inst, err = get[Instance](ctx, s, insert, args...)
	} else {
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if err := lockOwnerInstances(ctx, tx, in.Owner); err != nil {
				return err
			}
			if err := checkInstanceQuota(ctx, tx, in.Owner, in.Protected, 0, in.Quota); err != nil {
				return err
			}
			rows, _ := tx.Query(ctx, insert, args...)
			inst, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Instance])
			return err
		})
	}
	var qerr *QuotaError
	if errors.As(err, &qerr) {
		return inst, qerr
	}
	if err == nil {
		err = s.openCredentials(&inst)
	}
	if pgCode(err) == "23503" { // the image is missing, not in use
		return inst, fmt.Errorf("store: create instance of image %d: %w: %w", in.ImageID, ErrNotFound, err)
	}
	return inst, wrap(err, "create instance of image %d", in.ImageID)
}

// GetInstance reads one instance.
func (s *Store) GetInstance(ctx context.Context, id int64) (Instance, error) {
	inst, err := s.getInstance(ctx, `select `+instanceColumns+` from instances where id = $1`, id)
	return inst, wrap(err, "get instance %d", id)
}

// InstanceCreatedAs reads the instance whose creation carried token
// (InstanceInput.CreationToken); ErrNotFound if none did.
func (s *Store) InstanceCreatedAs(ctx context.Context, token string) (Instance, error) {
	inst, err := s.getInstance(ctx, `select `+instanceColumns+` from instances where creation_token = $1`, token)
	return inst, wrap(err, "get the instance created as %q", token)
}

// ListInstances reads the instances of owner ("" for everyone's), oldest
// first.
func (s *Store) ListInstances(ctx context.Context, owner string) ([]Instance, error) {
	insts, err := s.listInstances(ctx, `select `+instanceColumns+` from instances
		where $1 = '' or owner = $1 order by id`, owner)
	return insts, wrap(err, "list instances")
}

// summaryColumns are instanceColumns without the certificates and private
// keys: what a listing of instances shows, in the order
// ListInstanceSummaries scans them.
const summaryColumns = `id, image_id, owner, status, coalesce(port, 0) as port,
	coalesce(username, '') as username, coalesce(password, '') as password,
	coalesce(error, '') as error, coalesce(pid, 0) as pid,
	expires_at, protected, coalesce(host, '') as host, created_at, updated_at`

// summaryFields are where summaryColumns scan into i, in their order.
func summaryFields(i *Instance) []any {
	return []any{&i.ID, &i.ImageID, &i.Owner, &i.Status, &i.Port, &i.Username, &i.Password,
		&i.Error, &i.PID, &i.ExpiresAt, &i.Protected, &i.Host, &i.CreatedAt, &i.UpdatedAt}
}

// HostInstanceSummaries is ListInstanceSummaries of every owner's
// instances on this host, to read and not to change: in a fleet
// (SetFleetHost), those whose host it is, found by the index on host; on
// a single host, every instance.
func (s *Store) HostInstanceSummaries(ctx context.Context) ([]Instance, error) {
	if host := s.FleetHost(); host != "" {
		return s.instanceSummaries(ctx, `select `+summaryColumns+` from instances where host = $1 order by id`, host)
	}
	return s.ListInstanceSummaries(ctx, "")
}

func (s *Store) instanceSummaries(ctx context.Context, sql string, args ...any) ([]Instance, error) {
	rows, _ := s.pool.Query(ctx, sql, args...)
	// Scanned field by field: pgx's scan by name, a reflection per row,
	// cost as much as the query.
	insts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Instance, error) {
		var i Instance
		err := row.Scan(summaryFields(&i)...)
		return i, err
	})
	if insts == nil {
		insts = []Instance{}
	}
	if err != nil {
		return []Instance{}, wrap(err, "list instances")
	}
	for i := range insts {
		if insts[i].Password, err = s.open("instances", "password", insts[i].ID, insts[i].Password); err != nil {
			return []Instance{}, wrap(err, "list instances")
		}
	}
	return insts, nil
}

// InstanceState is an instance's id and status: what /status and /metrics
// count, without its credentials.
type InstanceState struct {
	ID        int64          `db:"id"`
	Status    InstanceStatus `db:"status"`
	Owner     string         `db:"owner"`
	Protected bool           `db:"protected"`
	Host      string         `db:"host"` // "" on a single host
}

// InstanceStates reads every instance's id, status, owner, protection and
// host, oldest first, on every host of a fleet; it reads no secret
// column.
func (s *Store) InstanceStates(ctx context.Context) ([]InstanceState, error) {
	states, err := list[InstanceState](ctx, s, `select id, status, owner, protected, coalesce(host, '') as host
		from instances order by id`)
	return states, wrap(err, "list instance states")
}

// SetInstanceStatus sets an instance's status and error ("" clears it).
func (s *Store) SetInstanceStatus(ctx context.Context, id int64, status InstanceStatus, errText string) error {
	tag, err := s.pool.Exec(ctx, `update instances set status = $2, error = $3 where id = $1`,
		id, status, nullText(errText))
	return affected(tag, err, "set instance %d status", id)
}

// SetInstancePID records the process id of an instance's postmaster (0
// clears it).
func (s *Store) SetInstancePID(ctx context.Context, id int64, pid int) error {
	tag, err := s.pool.Exec(ctx, `update instances set pid = $2 where id = $1`, id, nullInt(pid))
	return affected(tag, err, "set instance %d pid", id)
}

// SetInstanceCredentials records an instance's user, password and TLS
// material, the password and private keys sealed.
func (s *Store) SetInstanceCredentials(ctx context.Context, id int64, c Credentials) error {
	var sealed [3]*string
	for i, f := range []struct{ column, value string }{
		{"password", c.Password}, {"server_key", c.ServerKey}, {"client_key", c.ClientKey},
	} {
		var err error
		if sealed[i], err = s.seal("instances", f.column, id, f.value); err != nil {
			return err
		}
	}
	tag, err := s.pool.Exec(ctx, `update instances set username = $2, password = $3,
		ca_certificate = $4, server_certificate = $5, server_key = $6,
		client_certificate = $7, client_key = $8 where id = $1`,
		id, nullText(c.Username), sealed[0], nullText(c.CACertificate),
		nullText(c.ServerCertificate), sealed[1],
		nullText(c.ClientCertificate), sealed[2])
	return affected(tag, err, "set instance %d credentials", id)
}

// SetInstanceExpiry changes when an instance expires and whether it is
// protected. A nil argument leaves that column as it is; a pointer to the
// zero time clears the expiry (never expires).
func (s *Store) SetInstanceExpiry(ctx context.Context, id int64, expiresAt *time.Time, protected *bool) error {
	return setInstanceExpiry(ctx, s.pool, id, expiresAt, protected)
}

// SetInstanceExpiryWithin is SetInstanceExpiry that refuses to protect an
// instance whose owner has maxProtected (when above 0) other protected
// instances already: a *QuotaError (ErrQuotaExceeded). The count and the
// update hold the owner's lock, as CreateInstance does.
func (s *Store) SetInstanceExpiryWithin(ctx context.Context, id int64, expiresAt *time.Time, protected *bool, maxProtected int) error {
	if protected == nil || !*protected || maxProtected <= 0 {
		return s.SetInstanceExpiry(ctx, id, expiresAt, protected)
	}
	var owner string
	if err := s.pool.QueryRow(ctx, `select owner from instances where id = $1`, id).Scan(&owner); err != nil {
		return wrap(err, "set instance %d expiry", id)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockOwnerInstances(ctx, tx, owner); err != nil {
			return err
		}
		var already bool
		if err := tx.QueryRow(ctx, `select protected from instances where id = $1 for update`, id).Scan(&already); err != nil {
			return err
		}
		if !already {
			if err := checkInstanceQuota(ctx, tx, owner, true, id, InstanceQuota{Protected: maxProtected}); err != nil {
				return err
			}
		}
		return setInstanceExpiry(ctx, tx, id, expiresAt, protected)
	})
	var qerr *QuotaError
	if errors.As(err, &qerr) {
		return qerr
	}
	return wrap(err, "set instance %d expiry", id)
}

func setInstanceExpiry(ctx context.Context, db execer, id int64, expiresAt *time.Time, protected *bool) error {
	var at *time.Time
	if expiresAt != nil && !expiresAt.IsZero() {
		at = utc(expiresAt)
	}
	tag, err := db.Exec(ctx, `update instances set
		expires_at = case when $2::boolean then $3::timestamptz else expires_at end,
		protected = coalesce($4::boolean, protected)
		where id = $1`, id, expiresAt != nil, at, protected)
	return affected(tag, err, "set instance %d expiry", id)
}

// DeleteInstance deletes an instance's row, freeing its port, and leaves
// a tombstone in its place (see InstanceTombstones), of the instance's
// host, in one statement.
func (s *Store) DeleteInstance(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `with gone as (
			delete from instances where id = $1 returning id, created_at, host
		)
		insert into instance_tombstones (instance_id, created_at, host)
			select id, created_at, host from gone
			on conflict (instance_id) do update set created_at = excluded.created_at, deleted_at = now(),
				host = excluded.host`, id)
	if err == nil {
		s.forgetSummary(id)
	}
	return affected(tag, err, "delete instance %d", id)
}

// CountInstancesOfImage counts the instances cloned from an image.
func (s *Store) CountInstancesOfImage(ctx context.Context, imageID int64) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `select count(*) from instances where image_id = $1`, imageID).Scan(&n)
	return n, wrap(err, "count instances of image %d", imageID)
}

// ExpiredInstances reads the unprotected instances whose expires_at is at
// or before now, whatever their status, soonest expired first: in a fleet
// (SetFleetHost), this host's only, which it alone can destroy.
func (s *Store) ExpiredInstances(ctx context.Context, now time.Time) ([]Instance, error) {
	var insts []Instance
	var err error
	if host := s.FleetHost(); host != "" {
		insts, err = s.listInstances(ctx, `select `+instanceColumns+` from instances
			where expires_at <= $1 and not protected and host = $2 order by expires_at, id`, now.UTC(), host)
	} else {
		insts, err = s.listInstances(ctx, `select `+instanceColumns+` from instances
			where expires_at <= $1 and not protected order by expires_at, id`, now.UTC())
	}
	return insts, wrap(err, "expired instances")
}
