// Package store keeps sindri's metadata in PostgreSQL: images, instances,
// their ports, backups, tokens and the audit log. The engine records the
// intent of each step here before it acts, so that a reconcile loop can
// finish or undo whatever a crash interrupted.
//
// Every method is a single statement or a short transaction. Errors are
// classified for errors.Is: ErrNotFound, ErrConflict (a unique violation),
// ErrInUse (a row still referenced), ErrInvalid (a check constraint, or
// text PostgreSQL cannot store such as a NUL character),
// ErrPortsExhausted and ErrQuotaExceeded (a *QuotaError: a cap given with
// a write, checked in the write's transaction), and ErrUnavailable (the
// database cannot be reached or cannot take writes now, as during a
// failover: retry). Optional text and number
// columns read back as "" or 0 when NULL, and "" or 0 are stored as NULL;
// times are in UTC.
//
// Instances' passwords and private keys, and an image's source_url while
// its pull is pending, are stored sealed with the keyring (LoadKeyring)
// and read back opened; a value that does not open is an error wrapping
// the secrets package's (secrets.ErrTampered, secrets.ErrUnknownKey).
//
// The database may be a highly available Postgres: a database URL may name
// several hosts, and with target_session_attrs=read-write the store
// connects only to the one that takes writes (see Open). Across a
// switchover or a failover, every call either completes or fails with
// ErrUnavailable; none leaves a record half-written, since every write of
// several statements is one transaction. A write whose connection is lost
// while it commits may have been committed or not: the engine records
// each step's intent first, so that either outcome is finished or undone.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sindri-db/sindri/pkg/secrets"
)

// Classified errors, for errors.Is.
var (
	// ErrNotFound: no row with that id (or name, or hash).
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique constraint refused the write (SQLSTATE 23505).
	ErrConflict = errors.New("conflict")
	// ErrInUse: the row is still referenced, e.g. an image with instances
	// (SQLSTATE 23503 on delete).
	ErrInUse = errors.New("in use")
	// ErrInvalid: a check or not-null constraint refused the write, e.g. an
	// unknown status (SQLSTATE 23514, 23502), or a value the database
	// cannot store, e.g. text with a NUL character (SQLSTATE 22021).
	ErrInvalid = errors.New("invalid")
	// ErrPortsExhausted: AllocatePort found no free port in its range.
	ErrPortsExhausted = errors.New("no free port")
	// ErrUnavailable: the metadata database cannot be reached or cannot
	// take writes now, as while its leader changes: no host of the URL
	// accepts a read-write connection, the connection was lost (a server
	// shutting down, SQLSTATE 57P01, or gone), the server is starting
	// (57P03), or it is a standby (25006). The call is safe to retry once
	// the database is back; if the connection was lost while a write
	// committed, the write may have happened.
	ErrUnavailable = errors.New("metadata store unavailable")
)

// MaxConns is the pool's size.
const MaxConns = 10

// DefaultConnectTimeout bounds a connection attempt to each host of the
// database URL when the URL sets no connect_timeout: a host that is down
// without refusing (powered off, cut off) must not hold up the next one.
const DefaultConnectTimeout = 5 * time.Second

// Store is the metadata database. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	// keyring seals and opens the sealed columns (see secrets.go); it is
	// replaced when the key file is read again.
	keyring atomic.Pointer[secrets.Keyring]
	// secretsLock is the shared secrets lock this process holds, if any
	// (HoldSecretsLock): while it is not held, nothing is sealed.
	secretsLock atomic.Pointer[SecretsLock]
	// fleetHost is this host's name in a fleet, "" on a single host (see
	// SetFleetHost).
	fleetHost atomic.Pointer[string]
	// summaries are the instance summaries last listed (see
	// ListInstanceSummaries).
	summaries summaryCache
	// nextPort is where AllocatePort starts looking: the port after the
	// one it gave last.
	nextPort atomic.Int64
}

// Open connects to databaseURL (a postgres:// URL or a key=value DSN) and
// checks that the server answers. It does not migrate: call Migrate.
//
// The URL may name several hosts, tried in order
// (postgres://a:5432,b:5432/sindri?target_session_attrs=read-write): with
// target_session_attrs=read-write a host that is a standby, or read-only,
// is passed over, so that after a failover new connections reach the new
// leader. Once one connection is found lost, every pooled connection is
// closed (they all went to the same server), so that the next calls
// connect afresh rather than fail one by one. A failure to connect is
// ErrUnavailable, unless the server refused the login or the database
// (SQLSTATE class 28, 3D000, 42501).
func Open(ctx context.Context, databaseURL string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("store: parse database URL: %w", err)
	}
	cfg.MaxConns = MaxConns
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	resetter := &resetOnLoss{}
	cfg.ConnConfig.Tracer = resetter
	cfg.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		// Scan timestamptz in UTC rather than the local zone.
		conn.TypeMap().RegisterType(&pgtype.Type{
			Name:  "timestamptz",
			OID:   pgtype.TimestamptzOID,
			Codec: &pgtype.TimestamptzCodec{ScanLocation: time.UTC},
		})
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: connect: %w", classify(err))
	}
	resetter.pool.Store(pool)
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: connect: %w", classify(err))
	}
	return &Store{pool: pool}, nil
}

// Close closes every connection, waiting for those in use; it releases
// the secrets lock if this store holds it.
func (s *Store) Close() {
	if l := s.secretsLock.Load(); l != nil {
		l.Release()
	}
	s.pool.Close()
}

// resetOnLoss is a query tracer that closes every pooled connection once
// a query finds its connection lost: the others went to the same server,
// which is gone or no longer the leader.
type resetOnLoss struct {
	pool atomic.Pointer[pgxpool.Pool]
}

func (r *resetOnLoss) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (r *resetOnLoss) TraceQueryEnd(_ context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	if data.Err == nil || !conn.IsClosed() || !unavailable(data.Err) {
		return
	}
	if pool := r.pool.Load(); pool != nil {
		pool.Reset()
	}
}

// unavailable tells whether err says that the database cannot be reached
// or cannot take writes now (see ErrUnavailable).
func unavailable(err error) bool {
	if err == nil {
		return false
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		// Every host was tried: down, refusing, starting, or a standby;
		// but a refused login or an unknown database is a configuration
		// error, which waiting does not mend.
		return !anyPgError(err, func(e *pgconn.PgError) bool {
			return strings.HasPrefix(e.Code, "28") || e.Code == "3D000" || e.Code == "42501"
		})
	}
	if code := pgCode(err); code != "" {
		return unavailableCode(code)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's deadline or cancellation
	}
	if errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	// A socket error while connected: the server or the network is gone
	// (a timeout here is the network's, since pgx reports the caller's
	// deadline as the context's error).
	var netErr net.Error
	return errors.As(err, &netErr)
}

// unavailableCode tells whether a server's SQLSTATE says that it cannot
// serve now rather than that the statement is wrong.
func unavailableCode(code string) bool {
	switch {
	case strings.HasPrefix(code, "08"): // connection_exception
		return true
	case code == "25006", // read_only_sql_transaction: a standby
		code == "57P01", // admin_shutdown: the server is shutting down (a switchover)
		code == "57P02", // crash_shutdown
		code == "57P03", // cannot_connect_now: starting, or in recovery
		code == "53300": // too_many_connections
		return true
	}
	return false
}

// anyPgError tells whether f holds for a server error anywhere in err's
// tree (a connection error joins one per host tried).
func anyPgError(err error, f func(*pgconn.PgError) bool) bool {
	switch e := err.(type) {
	case nil:
		return false
	case *pgconn.PgError:
		if f(e) {
			return true
		}
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return anyPgError(u.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if anyPgError(e, f) {
				return true
			}
		}
	}
	return false
}

// classify wraps err with the classified error its SQLSTATE maps to, or
// with ErrUnavailable when the database is out of reach, or returns it as
// is. The driver's error stays in the chain.
func classify(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	if unavailable(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "23505": // unique_violation
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case "23503": // foreign_key_violation
		return fmt.Errorf("%w: %w", ErrInUse, err)
	case "23514", "23502": // check_violation, not_null_violation
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	case "22021": // character_not_in_repertoire: e.g. a NUL in a text value
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

// pgCode is err's SQLSTATE, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// wrap names the operation and classifies err; pgx.ErrNoRows becomes
// ErrNotFound. A nil err stays nil.
func wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	} else {
		err = classify(err)
	}
	return fmt.Errorf("store: "+format+": %w", append(args, err)...)
}

// affected turns an UPDATE or DELETE that touched no row into ErrNotFound.
func affected(tag pgconn.CommandTag, err error, format string, args ...any) error {
	if err == nil && tag.RowsAffected() == 0 {
		err = pgx.ErrNoRows
	}
	return wrap(err, format, args...)
}

// get runs a query returning one row into T by column name.
func get[T any](ctx context.Context, s *Store, sql string, args ...any) (T, error) {
	rows, _ := s.pool.Query(ctx, sql, args...)
	return pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[T])
}

// list runs a query returning rows into []T by column name; never nil.
func list[T any](ctx context.Context, s *Store, sql string, args ...any) ([]T, error) {
	rows, _ := s.pool.Query(ctx, sql, args...)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[T])
	if out == nil {
		out = []T{}
	}
	return out, err
}

// nullText stores "" as NULL.
func nullText(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// nullInt stores 0 as NULL.
func nullInt[N int | int64](n N) *N {
	if n == 0 {
		return nil
	}
	return &n
}

// utc returns t in UTC, nil staying nil.
func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// countByStatus counts a table's rows by their status column.
func countByStatus[S ~string](ctx context.Context, s *Store, table string) (map[S]int, error) {
	rows, _ := s.pool.Query(ctx, `select status, count(*) from `+table+` group by status`)
	counts := map[S]int{}
	var status S
	var n int
	_, err := pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		counts[status] = n
		return nil
	})
	return counts, wrap(err, "count %s by status", table)
}
