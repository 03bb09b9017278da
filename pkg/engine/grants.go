package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// removeRoleSettings removes from the data's catalog the settings per
// database and role that sindri does not keep (see
// postgres.RemoveUnsafeRoleSettings), before anything else runs in it.
func (e *Engine) removeRoleSettings(ctx context.Context, id int64, superuserURL string) error {
	conn, err := pgx.Connect(ctx, superuserURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	removed, err := postgres.RemoveUnsafeRoleSettings(ctx, conn)
	if len(removed) > 0 {
		e.log.Info("engine: removed settings per database and role that sindri does not keep", "image_id", id, "settings", strings.Join(removed, ", "))
	}
	return err
}

// grantClientRole creates role draupnir (no login yet: each instance
// gives it one) and, in every database that takes connections, read and
// write on all tables, sequences and schemas, now and for objects the
// owners make later; owners stay as they were.
func grantClientRole(ctx context.Context, superuserURL string) error {
	// With the scrub's settings: search_path pinned to pg_catalog, so that
	// no function or operator the data's owners made is picked instead of
	// the built-in one (a public."!~~"(name, name) would be, for NOT LIKE
	// below), and their triggers and event triggers do not fire.
	conn, err := privateConn(ctx, superuserURL, "")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	role := pgx.Identifier{postgres.ClientRole}.Sanitize()
	if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN CREATE ROLE %s; END IF;
	END$$`, postgres.ClientRole, role)); err != nil {
		return err
	}
	rows, err := conn.Query(ctx, "select datname from pg_database where datallowconn order by datname")
	if err != nil {
		return err
	}
	databases, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, db := range databases {
		dbConn, err := privateConn(ctx, superuserURL, db)
		if err != nil {
			return err
		}
		if untrusted, err := postgres.UntrustedLibraries(ctx, dbConn); err != nil || len(untrusted) > 0 {
			dbConn.Close(ctx)
			if err != nil {
				return err
			}
			return fmt.Errorf("database %s has C functions whose library is not one of the server's own, which sindri does not serve (a client's call would load the file as the postgres OS user): %s; drop them, or install their extension and name its library as $libdir/NAME",
				db, strings.Join(untrusted, "; "))
		}
		err = withoutAlwaysEventTriggers(ctx, dbConn, func() error { return grantInDatabase(ctx, dbConn, role) })
		dbConn.Close(ctx)
		if err != nil {
			return fmt.Errorf("granting %s on database %s: %w", postgres.ClientRole, db, err)
		}
	}
	return nil
}

// withoutAlwaysEventTriggers runs fn with the database's event triggers
// that fire ALWAYS disabled, and enables them again after: sindri's
// sessions run in replica mode (postgres.SessionOptions), where the others
// do not fire, and the data's own code must not run as the superuser
// while sindri's grants do.
func withoutAlwaysEventTriggers(ctx context.Context, conn *pgx.Conn, fn func() error) error {
	rows, err := conn.Query(ctx, "select evtname from pg_catalog.pg_event_trigger where evtenabled = 'A'")
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, name := range names {
		if _, err := conn.Exec(ctx, "ALTER EVENT TRIGGER "+pgx.Identifier{name}.Sanitize()+" DISABLE"); err != nil {
			return err
		}
	}
	err = fn()
	for _, name := range names {
		if _, eerr := conn.Exec(ctx, "ALTER EVENT TRIGGER "+pgx.Identifier{name}.Sanitize()+" ENABLE ALWAYS"); eerr != nil {
			err = errors.Join(err, eerr)
		}
	}
	return err
}

func grantInDatabase(ctx context.Context, conn *pgx.Conn, role string) error {
	rows, err := conn.Query(ctx, `select nspname, pg_get_userbyid(nspowner) from pg_namespace
		where nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
		  and nspname not like 'pg_temp_%' and nspname not like 'pg_toast_temp_%'`)
	if err != nil {
		return err
	}
	type schema struct{ name, owner string }
	schemas, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (schema, error) {
		var s schema
		return s, r.Scan(&s.name, &s.owner)
	})
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("GRANT CONNECT, TEMPORARY, CREATE ON DATABASE %s TO %s",
		pgx.Identifier{conn.Config().Database}.Sanitize(), role)); err != nil {
		return err
	}
	for _, s := range schemas {
		n, owner := pgx.Identifier{s.name}.Sanitize(), pgx.Identifier{s.owner}.Sanitize()
		for _, stmt := range []string{
			"GRANT USAGE, CREATE ON SCHEMA %[1]s TO %[2]s",
			"GRANT ALL ON ALL TABLES IN SCHEMA %[1]s TO %[2]s",
			"GRANT ALL ON ALL SEQUENCES IN SCHEMA %[1]s TO %[2]s",
			"GRANT ALL ON ALL FUNCTIONS IN SCHEMA %[1]s TO %[2]s",
			"ALTER DEFAULT PRIVILEGES FOR ROLE %[3]s IN SCHEMA %[1]s GRANT ALL ON TABLES TO %[2]s",
			"ALTER DEFAULT PRIVILEGES FOR ROLE %[3]s IN SCHEMA %[1]s GRANT ALL ON SEQUENCES TO %[2]s",
		} {
			if _, err := conn.Exec(ctx, fmt.Sprintf(stmt, n, role, owner)); err != nil {
				return err
			}
		}
	}
	return nil
}

// anonymise runs the script with psql as the superuser, stopping at the
// first error (its \c lines switch databases as they would for a person).
func (e *Engine) anonymise(ctx context.Context, imageID int64, binDir, sock string, port int, script string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", sock, "-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PGOPTIONS=-c client_min_messages=warning"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: e.opts.Owner.UID, Gid: e.opts.Owner.GID}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := runOperation(cmd, "anonymise "+ImageVolume(imageID)); err != nil {
		return fmt.Errorf("the anonymisation script failed: %s", strings.TrimSpace(out.String()))
	}
	return nil
}
