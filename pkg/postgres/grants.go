package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/operation"
)

// privateSettings are the run-time settings, besides SessionOptions, of
// sindri's own sessions in finalise's private start (the grants, the
// scrub, the checkpoint): nothing the data's owners made is resolved or
// fired, and no setting of the upload cuts the work short.
var privateSettings = map[string]string{
	"search_path":                         "pg_catalog",
	"session_replication_role":            "replica",
	"statement_timeout":                   "0",
	"lock_timeout":                        "0",
	"idle_in_transaction_session_timeout": "0",
	"default_transaction_read_only":       "off",
	"maintenance_work_mem":                "128MB",
}

// connect opens a session of sindri's own to database db ("postgres" when
// "") with privateSettings.
func (c *Cluster) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(SuperuserURL(c.SocketDir, c.Port, "postgres"))
	if err != nil {
		return nil, err
	}
	if db != "" {
		cfg.Database = db
	}
	for k, v := range privateSettings {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", cfg.Database, err)
	}
	return conn, nil
}

// GrantClientRole readies an uploaded cluster, running privately, for its
// clones' clients. It removes from the catalog the settings per database
// and role that sindri does not keep (returned, as
// removeUnsafeRoleSettings names them), before anything else runs in it.
// Then it creates role ClientRole (no login yet: each instance gives it
// one) and, in every database that takes connections, grants it read and
// write on all tables, sequences and schemas, now and for objects the
// owners make later; owners stay as they were. A database with a C
// function whose library is not one of the server's own is refused,
// naming the functions. The data's event triggers enabled ALWAYS are
// disabled while the grants run, and enabled again after.
func (c *Cluster) GrantClientRole(ctx context.Context) (removedSettings []string, err error) {
	conn, err := pgx.Connect(ctx, SuperuserURL(c.SocketDir, c.Port, "postgres"))
	if err != nil {
		return nil, err
	}
	removedSettings, err = removeUnsafeRoleSettings(ctx, conn)
	conn.Close(ctx)
	if err != nil {
		return removedSettings, err
	}
	return removedSettings, c.grantClientRole(ctx)
}

func (c *Cluster) grantClientRole(ctx context.Context) error {
	// With privateSettings: search_path pinned to pg_catalog, so that no
	// function or operator the data's owners made is picked instead of
	// the built-in one (a public."!~~"(name, name) would be, for NOT LIKE
	// below), and their triggers and event triggers do not fire.
	conn, err := c.connect(ctx, "")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	role := pgx.Identifier{ClientRole}.Sanitize()
	if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%s') THEN CREATE ROLE %s; END IF;
	END$$`, ClientRole, role)); err != nil {
		return err
	}
	databases, err := column(ctx, conn, "select datname from pg_database where datallowconn order by datname")
	if err != nil {
		return err
	}
	for _, db := range databases {
		dbConn, err := c.connect(ctx, db)
		if err != nil {
			return err
		}
		if untrusted, err := untrustedLibraries(ctx, dbConn); err != nil || len(untrusted) > 0 {
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
			return fmt.Errorf("granting %s on database %s: %w", ClientRole, db, err)
		}
	}
	return nil
}

// column runs query and returns its one text column.
func column(ctx context.Context, conn *pgx.Conn, query string) ([]string, error) {
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// withoutAlwaysEventTriggers runs fn with the database's event triggers
// that fire ALWAYS disabled, and enables them again after: sindri's
// sessions run in replica mode (SessionOptions), where the others do not
// fire, and the data's own code must not run as the superuser while
// sindri's grants do.
func withoutAlwaysEventTriggers(ctx context.Context, conn *pgx.Conn, fn func() error) error {
	names, err := column(ctx, conn, "select evtname from pg_catalog.pg_event_trigger where evtenabled = 'A'")
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

// RunScript runs script with psql as the superuser over the socket,
// stopping at the first error (its \c lines switch databases as they
// would for a person), as an operation child named operation (see
// pkg/operation): it dies with sindrid. Its error is what psql printed.
func (c *Cluster) RunScript(ctx context.Context, script, name string) error {
	cmd := c.Command(ctx, "psql", slices.Concat(clientEnv, []string{"PGOPTIONS=-c client_min_messages=warning"}),
		"-X", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", c.SocketDir, "-p", strconv.Itoa(c.Port), "-U", "postgres", "-d", "postgres", "-f", "-")
	// sindrid's working directory, not the data directory: a relative
	// path in the script (\o, \copy) must not name a file of the data.
	cmd.Dir = ""
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := operation.Run(cmd, name); err != nil {
		if msg := strings.TrimSpace(out.String()); msg != "" {
			return errors.New(msg)
		}
		return err
	}
	return nil
}
