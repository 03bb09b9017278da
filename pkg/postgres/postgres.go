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
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
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
// logins) and passwordRole, whose password verifier (PasswordVerifier) is
// verifier, a member of ClientRole so that it has the same grants.
// Neither is a superuser unless superuser is set (the allow_superuser
// setting). Existing roles are altered to match. First it removes the
// settings per database and role that sindri does not keep
// (removeUnsafeRoleSettings), for the clones of images finalised before
// sindri removed them there. A clone commits asynchronously, so a crash
// in the next moments may lose what this wrote: run it at every start.
//
// Three round trips, and no PL/pgSQL: a clone's data may have dropped the
// language, and loading it into the new session cost a create about 3 ms.
func (s *Session) SetUpClientRoles(ctx context.Context, passwordRole, verifier string, superuser bool) error {
	if !strings.HasPrefix(verifier, scramPrefix) {
		return errors.New("setting up client roles: the password role's password must be given as a SCRAM verifier (PasswordVerifier)")
	}
	conn := s.conn
	if _, err := removeUnsafeRoleSettings(ctx, conn); err != nil {
		return err
	}
	// Which of the two roles exist, and what each is a member of.
	rows, _ := conn.Query(ctx, `select r.rolname, coalesce(g.rolname, '')
		from pg_catalog.pg_roles r
		left join pg_catalog.pg_auth_members a on a.member = r.oid
		left join pg_catalog.pg_roles g on g.oid = a.roleid
		where r.rolname in ($1, $2)`, ClientRole, passwordRole)
	exists := map[string]bool{}
	var memberships [][2]string // role, member
	var member, role string
	if _, err := pgx.ForEachRow(rows, []any{&member, &role}, func() error {
		exists[member] = true
		if role != "" && !(member == passwordRole && role == ClientRole) {
			memberships = append(memberships, [2]string{role, member})
		}
		return nil
	}); err != nil {
		return fmt.Errorf("setting up client roles: reading the roles: %w", err)
	}

	super := "NOSUPERUSER"
	if superuser {
		super = "SUPERUSER"
	}
	ident := pgx.Identifier{ClientRole}.Sanitize()
	pwIdent := pgx.Identifier{passwordRole}.Sanitize()
	// The clone's data may hold functions and operators its users made
	// (an image restored from an instance's backup): none may be picked
	// by these statements, run as superuser.
	stmts := []string{"SET search_path = pg_catalog"}
	for _, r := range []string{ClientRole, passwordRole} {
		if !exists[r] {
			stmts = append(stmts, "CREATE ROLE "+pgx.Identifier{r}.Sanitize())
		}
	}
	stmts = append(stmts,
		fmt.Sprintf(`ALTER ROLE %s LOGIN %s NOREPLICATION NOBYPASSRLS`, ident, super),
		fmt.Sprintf(`ALTER ROLE %s LOGIN %s NOREPLICATION NOBYPASSRLS VALID UNTIL 'infinity'`, pwIdent, super),
		// Written into the catalog rather than by ALTER ROLE … PASSWORD,
		// which, given a verifier, hashes the empty password with its
		// salt and iterations to refuse an empty one: 4 to 8 ms of the
		// server's time at every create.
		fmt.Sprintf(`UPDATE pg_catalog.pg_authid SET rolpassword = %s WHERE rolname = %s`, quote(verifier), quote(passwordRole)),
	)
	for _, m := range memberships {
		// Roles of these names may come with the original's data: nothing
		// they were given there may lift them towards a superuser's
		// powers. The certificate role's membership of the password role
		// goes whatever the setting: it would make the grant below a loop.
		if !superuser || m == [2]string{passwordRole, ClientRole} {
			stmts = append(stmts, fmt.Sprintf(`REVOKE %s FROM %s`, pgx.Identifier{m[0]}.Sanitize(), pgx.Identifier{m[1]}.Sanitize()))
		}
	}
	stmts = append(stmts, fmt.Sprintf(`GRANT %s TO %s`, ident, pwIdent))
	if !superuser {
		stmts = append(stmts,
			fmt.Sprintf(`ALTER ROLE %s NOCREATEROLE NOCREATEDB`, ident),
			fmt.Sprintf(`ALTER ROLE %s NOCREATEROLE NOCREATEDB`, pwIdent))
	}
	// One round trip: the statements as a single simple-protocol batch,
	// one transaction.
	if _, err := conn.Exec(ctx, strings.Join(stmts, ";\n"), pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("setting up client roles: %w", err)
	}
	return nil
}

// scramPrefix begins a SCRAM-SHA-256 verifier as pg_authid stores it.
const scramPrefix = "SCRAM-SHA-256$"

// scramIterations is PostgreSQL's own count (scram_iterations' default).
const scramIterations = 4096

// PasswordVerifier is password's SCRAM-SHA-256 verifier, with a random
// salt, in the form pg_authid stores (RFC 5803):
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>. Made here,
// it costs 1.6 ms and can run while the postmaster starts; made by the
// server, from the password, it cost a create 4 to 8 ms. password must
// be printable ASCII, which SASLprep leaves as it is.
func PasswordVerifier(password string) (string, error) {
	if password == "" {
		return "", errors.New("a password verifier is made only of a password that is not empty")
	}
	for _, r := range password {
		if r < 0x21 || r > 0x7e {
			return "", errors.New("a password verifier is made only of a printable ASCII password")
		}
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		return "", err
	}
	keyed := func(name string) []byte {
		m := hmac.New(sha256.New, salted)
		m.Write([]byte(name))
		return m.Sum(nil)
	}
	stored := sha256.Sum256(keyed("Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s%d:%s$%s:%s", scramPrefix, scramIterations, b64(salt), b64(stored[:]), b64(keyed("Server Key"))), nil
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
