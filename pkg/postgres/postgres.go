// Package postgres knows PostgreSQL and nothing else: which binaries serve
// a data directory, the settings sindri writes into it, TLS material, and
// the work sindri does in a cluster, each through a Cluster (a data
// directory with its binaries, OS user, private socket directory, port
// and settings): making it (Init), starting a postmaster (Start) and
// waiting until it accepts connections (Ready), stopping it, telling
// whether one is alive (Status) or answers (Answers); readying an
// upload for clones (GrantClientRole, RollBackPrepared), running an
// anonymisation script (RunScript) and scrubbing after it (scrub.go),
// pulling a base backup (BaseBackup), flushing the WAL before a snapshot
// (FlushWAL). Every Postgres program runs through Cluster.Command, which
// owns its environment and credentials; psql and pg_basebackup run as
// operation children (pkg/operation), which die with sindrid.
//
// Postmasters are started detached (a session of their own) so that they
// outlive sindrid; a later sindrid adopts them by their postmaster.pid.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/osuser"
)

// Classified errors; match them with errors.Is.
var (
	ErrNotDataDir     = errors.New("not a PostgreSQL data directory")
	ErrVersionMissing = errors.New("PostgreSQL binaries for this major version are not installed")
	ErrNotRunning     = errors.New("no postmaster is running")
)

// VersionPlaceholder is replaced by a data directory's major version in a
// binary directory pattern such as DefaultBinPattern.
const VersionPlaceholder = "{version}"

// DefaultBinPattern is Debian's layout of PostgreSQL's binaries.
const DefaultBinPattern = "/usr/lib/postgresql/" + VersionPlaceholder + "/bin"

// BinPath is pattern with its VersionPlaceholder replaced by major.
func BinPath(pattern, major string) string {
	return strings.ReplaceAll(pattern, VersionPlaceholder, major)
}

// MajorVersion reads the data directory's PG_VERSION.
func MajorVersion(dataDir string) (string, error) {
	data, err := readNoFollow(filepath.Join(dataDir, "PG_VERSION"))
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w: %s has no PG_VERSION", ErrNotDataDir, dataDir)
	}
	if err != nil {
		return "", err
	}
	major := strings.TrimSpace(string(data))
	if _, err := strconv.ParseFloat(major, 64); err != nil || major == "" {
		return "", fmt.Errorf("%w: %s has PG_VERSION %q", ErrNotDataDir, dataDir, major)
	}
	return major, nil
}

// BinDir returns the directory of the binaries for a major version, from a
// pattern with {version} in it, after checking that postgres is there.
func BinDir(pattern, major string) (string, error) {
	dir := BinPath(pattern, major)
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
		return "", fmt.Errorf("%w: PostgreSQL %s (no %s)", ErrVersionMissing, major, filepath.Join(dir, "postgres"))
	}
	return dir, nil
}

// BinDirFor is BinDir for the version of a data directory.
func BinDirFor(pattern, dataDir string) (string, error) {
	major, err := MajorVersion(dataDir)
	if err != nil {
		return "", err
	}
	return BinDir(pattern, major)
}

// OSUser is the operating-system account postmasters run as.
type OSUser = osuser.User

// LookupUser finds the account (the postgres.user setting); Postgres
// refuses to run as root.
func LookupUser(name string) (OSUser, error) {
	u, err := osuser.Lookup(name)
	if errors.Is(err, osuser.ErrRoot) {
		return OSUser{}, fmt.Errorf("postgres.user %q is root; PostgreSQL refuses to run as root", name)
	}
	if err != nil {
		return OSUser{}, fmt.Errorf("postgres.user %q: %w", name, err)
	}
	return u, nil
}

// removeUnsafeRoleSettings deletes from the catalog every setting made
// per database or role (ALTER DATABASE/ROLE ... SET) that is not a kept
// one (KeptSetting), and every one made for a superuser role (whose
// sessions are sindri's own and the anonymisation script's): such a
// setting wins over the postmaster's command line, and
// session_preload_libraries or dynamic_library_path there would load a
// library, perhaps one in the data directory, into every session. It
// returns what it removed, as "name (database d, role r)".
func removeUnsafeRoleSettings(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	type row struct {
		database, role   uint32
		dbName, roleName string
		superuser        bool
		config           []string
	}
	rows, err := conn.Query(ctx, `select s.setdatabase, s.setrole, coalesce(d.datname, ''), coalesce(r.rolname, ''), coalesce(r.rolsuper, false), s.setconfig
		from pg_catalog.pg_db_role_setting s
		left join pg_catalog.pg_database d on d.oid = s.setdatabase
		left join pg_catalog.pg_roles r on r.oid = s.setrole`)
	if err != nil {
		return nil, fmt.Errorf("reading the settings per database and role: %w", err)
	}
	settings, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.database, &x.role, &x.dbName, &x.roleName, &x.superuser, &x.config)
	})
	if err != nil {
		return nil, fmt.Errorf("reading the settings per database and role: %w", err)
	}
	var removed []string
	for _, s := range settings {
		var kept []string
		for _, item := range s.config {
			name, _, _ := strings.Cut(item, "=")
			if KeptSetting(name) && !s.superuser {
				kept = append(kept, item)
				continue
			}
			removed = append(removed, fmt.Sprintf("%s (database %s, role %s)", name, orAll(s.dbName), orAll(s.roleName)))
		}
		if len(kept) == len(s.config) {
			continue
		}
		if len(kept) == 0 {
			_, err = conn.Exec(ctx, `delete from pg_catalog.pg_db_role_setting where setdatabase = $1 and setrole = $2`, s.database, s.role)
		} else {
			_, err = conn.Exec(ctx, `update pg_catalog.pg_db_role_setting set setconfig = $3 where setdatabase = $1 and setrole = $2`, s.database, s.role, kept)
		}
		if err != nil {
			return removed, fmt.Errorf("removing settings per database and role: %w", err)
		}
	}
	return removed, nil
}

func orAll(name string) string {
	if name == "" {
		return "all"
	}
	return name
}

// SetUpClientRoles makes, in the session Ready returned (which saves a
// connection), the roles clients log in as: ClientRole (certificate
// logins) and passwordRole with password, a member of ClientRole so that
// it has the same grants. Neither is a superuser unless superuser is set
// (the allow_superuser setting). Existing roles are altered to match.
// First it removes the settings per database and role that sindri does
// not keep (removeUnsafeRoleSettings), for the clones of images finalised
// before sindri removed them there. A clone commits asynchronously, so a
// crash in the next moments may lose what this wrote: run it at every
// start.
func (s *Session) SetUpClientRoles(ctx context.Context, passwordRole, password string, superuser bool) error {
	conn := s.conn
	if _, err := removeUnsafeRoleSettings(ctx, conn); err != nil {
		return err
	}
	super := "NOSUPERUSER"
	if superuser {
		super = "SUPERUSER"
	}
	ident := pgx.Identifier{ClientRole}.Sanitize()
	pwIdent := pgx.Identifier{passwordRole}.Sanitize()
	stmts := []string{
		// The clone's data may hold functions and operators its users
		// made (an image restored from an instance's backup): none may be
		// picked by these statements, run as superuser.
		"SET search_path = pg_catalog",
		fmt.Sprintf(`DO $$BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s; END IF;
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s; END IF;
		END$$`, quote(ClientRole), ident, quote(passwordRole), pwIdent),
		fmt.Sprintf(`ALTER ROLE %s LOGIN %s NOREPLICATION NOBYPASSRLS`, ident, super),
		fmt.Sprintf(`ALTER ROLE %s LOGIN %s NOREPLICATION NOBYPASSRLS PASSWORD %s`, pwIdent, super, quote(password)),
		fmt.Sprintf(`GRANT %s TO %s`, ident, pwIdent),
	}
	if !superuser {
		// Roles of these names may come with the original's data: nothing
		// they were given there may lift them towards a superuser's powers.
		stmts = append(stmts,
			fmt.Sprintf(`ALTER ROLE %s NOCREATEROLE NOCREATEDB`, ident),
			fmt.Sprintf(`ALTER ROLE %s NOCREATEROLE NOCREATEDB`, pwIdent),
			fmt.Sprintf(`DO $$DECLARE r record; BEGIN
				FOR r IN SELECT g.rolname AS grp, m.rolname AS mem FROM pg_auth_members a
					JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
					WHERE m.rolname IN (%[1]s, %[2]s) AND NOT (m.rolname = %[2]s AND g.rolname = %[1]s)
				LOOP EXECUTE format('REVOKE %%I FROM %%I', r.grp, r.mem); END LOOP;
			END$$`, quote(ClientRole), quote(passwordRole)))
	}
	// One round trip: the statements as a single simple-protocol batch.
	if _, err := conn.Exec(ctx, strings.Join(stmts, ";\n"), pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("setting up client roles: %w", err)
	}
	return nil
}

// NewestMajor returns the highest major version whose binaries the
// pattern finds, for making a new cluster.
func NewestMajor(pattern string) (string, error) {
	matches, _ := filepath.Glob(filepath.Join(BinPath(pattern, "*"), "postgres"))
	best, bestNum := "", -1.0
	for _, m := range matches {
		rel := strings.TrimPrefix(m, strings.SplitN(pattern, VersionPlaceholder, 2)[0])
		major := strings.SplitN(rel, "/", 2)[0]
		if n, err := strconv.ParseFloat(major, 64); err == nil && n > bestNum {
			best, bestNum = major, n
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: no PostgreSQL binaries match %s", ErrVersionMissing, pattern)
	}
	return best, nil
}
