package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sindri-db/sindri/migrations"
)

// migrateLockKey is the pg_advisory_lock key that serialises Migrate
// across processes: "sindri" and 'M' in ASCII.
const migrateLockKey int64 = 0x73696e647269_004d

// Migrate applies each file of migrations.FS not yet recorded in
// schema_migrations, in lexical order, each in its own transaction together
// with its row there, and returns the versions it applied (file names
// without ".sql"). Concurrent callers, in this process or others, queue on
// an advisory lock, so each file is applied once. A failing file is rolled
// back and named in the error; the ones before it stay applied.
//
// The lock is a session's: if the connection is lost (the database's
// leader changing), the lock goes with the session and Migrate fails with
// ErrUnavailable, the file under way rolled back with its row. Calling
// Migrate again takes the lock again and reads schema_migrations again
// under it, so nothing is applied twice, whoever migrated in between.
func (s *Store) Migrate(ctx context.Context) (applied []string, err error) {
	return s.migrateFS(ctx, migrations.FS)
}

func (s *Store) migrateFS(ctx context.Context, fsys fs.FS) (applied []string, err error) {
	files, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("store: migrate: %w", err)
	}
	sort.Strings(files)

	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: %w", classify(err))
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "select pg_advisory_lock($1)", migrateLockKey); err != nil {
		return nil, fmt.Errorf("store: migrate: lock: %w", classify(err))
	}
	defer unlock(conn)

	done, err := appliedVersions(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: %w", classify(err))
	}
	applied = []string{}
	for _, file := range files {
		version := strings.TrimSuffix(file, ".sql")
		if done[version] {
			continue
		}
		sql, err := fs.ReadFile(fsys, file)
		if err != nil {
			return applied, fmt.Errorf("store: migrate %s: %w", file, err)
		}
		if err := applyOne(ctx, conn, version, string(sql)); err != nil {
			return applied, fmt.Errorf("store: migrate %s: %w", file, classify(err))
		}
		applied = append(applied, version)
	}
	return applied, nil
}

// unlock releases the advisory lock even if the caller's context is done;
// if it cannot, it closes the connection, which releases it too.
func unlock(conn *pgxpool.Conn) {
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "select pg_advisory_unlock($1)", migrateLockKey); err != nil {
		conn.Conn().Close(ctx)
	}
}

// appliedVersions makes schema_migrations if needed (under the lock) and
// reads it.
func appliedVersions(ctx context.Context, conn *pgxpool.Conn) (map[string]bool, error) {
	if _, err := conn.Exec(ctx, `create table if not exists schema_migrations (
		version    text primary key,
		applied_at timestamptz not null default now()
	)`); err != nil {
		return nil, err
	}
	rows, _ := conn.Query(ctx, "select version from schema_migrations")
	versions, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	done := make(map[string]bool, len(versions))
	for _, v := range versions {
		done[v] = true
	}
	return done, nil
}

// applyOne runs one file and records it, in one transaction.
func applyOne(ctx context.Context, conn *pgxpool.Conn, version, sql string) (err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreClosed(tx.Rollback(context.Background())))
		}
	}()
	// No arguments: the simple protocol, which runs several statements.
	if _, err := tx.Exec(ctx, sql); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "insert into schema_migrations (version) values ($1)", version); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func ignoreClosed(err error) error {
	if errors.Is(err, pgx.ErrTxClosed) {
		return nil
	}
	return err
}
