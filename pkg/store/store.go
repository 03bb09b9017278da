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
// a write, checked in the write's transaction). Optional text and number
// columns read back as "" or 0 when NULL, and "" or 0 are stored as NULL;
// times are in UTC.
//
// Instances' passwords and private keys, and an image's source_url while
// its pull is pending, are stored sealed with the keyring (LoadKeyring)
// and read back opened; a value that does not open is an error wrapping
// the secrets package's (secrets.ErrTampered, secrets.ErrUnknownKey).
package store

import (
	"context"
	"errors"
	"fmt"
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
)

// MaxConns is the pool's size.
const MaxConns = 10

// Store is the metadata database. It is safe for concurrent use.
type Store struct {
	pool    *pgxpool.Pool
	keyring *secrets.Keyring // seals and opens the sealed columns; see secrets.go
}

// Open connects to databaseURL (a postgres:// URL or a key=value DSN) and
// checks that the server answers. It does not migrate: call Migrate.
func Open(ctx context.Context, databaseURL string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("store: parse database URL: %w", err)
	}
	cfg.MaxConns = MaxConns
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
		return nil, fmt.Errorf("store: connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: connect: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close closes every connection, waiting for those in use.
func (s *Store) Close() { s.pool.Close() }

// classify wraps err with the classified error its SQLSTATE maps to, or
// returns it as is. The driver's error stays in the chain.
func classify(err error) error {
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
