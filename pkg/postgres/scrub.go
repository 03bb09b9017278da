package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/safefile"
)

// The scrub. An anonymisation script changes rows, but Postgres keeps
// copies of what they held: the dead row versions in the tables, their
// TOAST and their indexes; the most common values and histograms in
// pg_statistic and pg_statistic_ext_data; the WAL, which a checkpoint
// recycles into new segments without clearing them; and, beside the data,
// server logs, statistics files and the source's secrets. After the script
// and before the freeze, finalise removes every such copy it knows of:
//
//   - prepared transactions the source left are rolled back, before the
//     script (their row versions and locks would outlive it);
//   - every role's password is removed (clients log in with sindri's
//     roles; an image shares no hash of the source's passwords), and so is
//     the password option of every user mapping; subscriptions (whose
//     connection strings may hold a password) are dropped;
//   - in every database (those that refuse connections are opened for it,
//     then closed again): every populated materialized view is refreshed,
//     pg_statistic and pg_statistic_ext_data are emptied and rebuilt by
//     ANALYZE from the data as the script left it (ANALYZE keeps an empty
//     table's old statistics otherwise), then VACUUM (FULL, FREEZE) rewrites every
//     table, system catalogs and TOAST included, into new files holding
//     only live rows (the statistics' and passwords' old row versions too,
//     which is why it comes last);
//   - after a checkpoint and a clean shutdown, pg_resetwal starts a new WAL:
//     the old segments go, and the one left must hold nothing but zeros
//     after its first page, which is checked;
//   - the files that repeat values in clear go: server logs (log/, pg_log/,
//     sindri's own), the cumulative statistics (pg_stat_statements' query
//     texts among them), backup_label.old, backup_manifest; and the lines
//     of the configuration files that may hold a password (primary_conninfo
//     from pg_basebackup -R, restore_command and the like).
//
// Sessions of the scrub pin search_path to pg_catalog and run with
// session_replication_role = replica, so that no function, operator,
// trigger or event trigger of the data's owners is picked or fired by
// them. What ANALYZE, VACUUM FULL and REFRESH run of the data's own code
// (index expressions, materialized views' queries), Postgres runs as the
// table's owner in a security-restricted operation.

// statements runs query, whose rows are each one statement (built with
// format() on the server, which quotes names and literals), and then each
// of those statements.
func statements(ctx context.Context, conn *pgx.Conn, query string) error {
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return err
	}
	stmts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	return nil
}

// RollBackPrepared rolls back the prepared transactions the source left,
// each in its own database: they would hold their locks and row versions
// through a script, and no clone (max_prepared_transactions = 0) could
// start with them.
func (c *Cluster) RollBackPrepared(ctx context.Context) error {
	conn, err := c.connect(ctx, "")
	if err != nil {
		return err
	}
	rows, err := conn.Query(ctx, "select database, format('ROLLBACK PREPARED %L', gid) from pg_prepared_xacts")
	if err != nil {
		conn.Close(ctx)
		return err
	}
	type prepared struct{ db, stmt string }
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (prepared, error) {
		var p prepared
		return p, r.Scan(&p.db, &p.stmt)
	})
	conn.Close(ctx)
	if err != nil {
		return err
	}
	for _, p := range all {
		db, err := c.connect(ctx, p.db)
		if err != nil {
			return err
		}
		_, err = db.Exec(ctx, p.stmt)
		db.Close(ctx)
		if err != nil {
			return fmt.Errorf("rolling back a prepared transaction of database %s: %w", p.db, err)
		}
	}
	return nil
}

// ScrubDatabases is the scrub's part in the running private start: every
// step above up to VACUUM FULL. scrubbed, if not nil, is told of each
// database once it is done, and how long it took.
func (c *Cluster) ScrubDatabases(ctx context.Context, scrubbed func(database string, took time.Duration)) error {
	admin, err := c.connect(ctx, "")
	if err != nil {
		return err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	// A database whose DROP DATABASE was cut short is invalid: it cannot
	// be opened, only dropped, and its files may still hold data.
	if err := statements(ctx, admin, "select format('DROP DATABASE %I', datname) from pg_database where datconnlimit = -2"); err != nil {
		return err
	}
	closed, err := column(ctx, admin, "select datname from pg_database where not datallowconn order by datname")
	if err != nil {
		return err
	}
	for _, db := range closed {
		if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s WITH ALLOW_CONNECTIONS true", pgx.Identifier{db}.Sanitize())); err != nil {
			return err
		}
	}
	if err := statements(ctx, admin, "select format('ALTER ROLE %I PASSWORD NULL', rolname) from pg_authid where rolpassword is not null"); err != nil {
		return err
	}
	databases, err := column(ctx, admin, "select datname from pg_database order by datname")
	if err != nil {
		return err
	}
	for _, db := range databases {
		started := time.Now()
		if err := c.scrubDatabase(ctx, db); err != nil {
			return fmt.Errorf("database %s: %w", db, err)
		}
		if scrubbed != nil {
			scrubbed(db, time.Since(started))
		}
	}
	for _, db := range closed {
		if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s WITH ALLOW_CONNECTIONS false", pgx.Identifier{db}.Sanitize())); err != nil {
			return err
		}
	}
	if len(closed) > 0 {
		// The dead row versions the two ALTER DATABASE left.
		if _, err := admin.Exec(ctx, "VACUUM (FULL) pg_catalog.pg_database"); err != nil {
			return err
		}
	}
	return nil
}

// scrubDatabase scrubs one database; shared catalogs (pg_authid among
// them) are rewritten by the VACUUM FULL of each.
func (c *Cluster) scrubDatabase(ctx context.Context, db string) error {
	conn, err := c.connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, query := range []string{
		// Secrets for other servers: user mappings' passwords, and
		// subscriptions (a clone never replicates; its connection string
		// may hold a password).
		`select format('ALTER USER MAPPING FOR %s SERVER %I OPTIONS (DROP password)',
				case when um.umuser = 0 then 'PUBLIC' else quote_ident(a.rolname) end, s.srvname)
			from pg_user_mapping um join pg_foreign_server s on s.oid = um.umserver
			left join pg_authid a on a.oid = um.umuser
			where exists (select from unnest(um.umoptions) o where o like 'password=%')`,
		`select stmt from pg_subscription,
				unnest(array[format('ALTER SUBSCRIPTION %1$I DISABLE', subname),
					format('ALTER SUBSCRIPTION %1$I SET (slot_name = NONE)', subname),
					format('DROP SUBSCRIPTION %1$I', subname)]) with ordinality as s(stmt, step)
			where subdbid = (select oid from pg_database where datname = current_database())
			order by subname, step`,
		// Materialized views in the order they were made, which is an
		// order their dependencies allow.
		`select format('REFRESH MATERIALIZED VIEW %I.%I', n.nspname, c.relname)
			from pg_class c join pg_namespace n on n.oid = c.relnamespace
			where c.relkind = 'm' and c.relispopulated order by c.oid`,
	} {
		if err := statements(ctx, conn, query); err != nil {
			return err
		}
	}
	for _, stmt := range []string{
		"DELETE FROM pg_catalog.pg_statistic",
		"DELETE FROM pg_catalog.pg_statistic_ext_data",
		"ANALYZE",
		// FREEZE: the clones read the rewritten rows without setting
		// their hint bits, which would write each page into each clone
		// (see FreezeDatabases).
		"VACUUM (FULL, FREEZE)",
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	return nil
}

// scrubbedFiles are removed from the root of a scrubbed data directory:
// they repeat values, labels or checksums of the data in clear.
var scrubbedFiles = []string{
	LogFile, LogFile + ".1", "current_logfiles", "postmaster.opts",
	"backup_label.old", "tablespace_map.old", "backup_manifest", "recovery.done",
}

// scrubbedDirs are emptied: server logs (the logging collector's default
// directories). The cumulative statistics go too (ForgetStatistics),
// pg_stat_statements' query texts among them.
var scrubbedDirs = []string{"log", "pg_log"}

// secretSetting matches a configuration line, commented out or not, that
// sets a setting whose value may hold a password or a command line with
// credentials.
var secretSetting = regexp.MustCompile(`(?i)^[\s#]*(?:overridden by sindri:\s*)?(primary_conninfo|restore_command|archive_command|archive_cleanup_command|recovery_end_command|ssl_passphrase_command)\s*(=|\s|$)`)

// ScrubFiles is the scrub's part after the clean shutdown: a new WAL, and
// the files above.
func (c *Cluster) ScrubFiles(ctx context.Context) error {
	dataDir := c.DataDir
	if err := c.resetWAL(ctx); err != nil {
		return err
	}
	for _, name := range scrubbedFiles {
		if err := os.Remove(filepath.Join(dataDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for _, name := range scrubbedDirs {
		if err := emptyDir(filepath.Join(dataDir, name)); err != nil {
			return err
		}
	}
	if err := ForgetStatistics(dataDir); err != nil {
		return err
	}
	if err := scrubConfigFiles(dataDir, c.Owner); err != nil {
		return err
	}
	return checkFreshWAL(dataDir)
}

// resetWAL replaces the WAL of the cleanly shut down data directory with
// one new segment (pg_resetwal, which refuses a cluster that was not shut
// down cleanly), and removes the WAL's other leftovers: backup history
// files and archive status.
func (c *Cluster) resetWAL(ctx context.Context) error {
	dataDir := c.DataDir
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "pg_resetwal", nil, "-D", dataDir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_resetwal: %v: %s", err, strings.TrimSpace(out.String()))
	}
	wal := filepath.Join(dataDir, "pg_wal")
	entries, err := os.ReadDir(wal)
	if err != nil {
		return err
	}
	for _, de := range entries {
		switch {
		case de.Name() == "archive_status" && de.IsDir():
			if err := emptyDir(filepath.Join(wal, de.Name())); err != nil {
				return err
			}
		case walSegment.MatchString(de.Name()) && de.Type().IsRegular(),
			strings.HasSuffix(de.Name(), ".history") && de.Type().IsRegular():
			// The new segment; timeline history (switch points, no data).
		default:
			if err := os.RemoveAll(filepath.Join(wal, de.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// walPage is the size of a WAL page (XLOG_BLCKSZ): pg_resetwal writes its
// checkpoint record into a segment's first page and zeros after it.
const walPage = 8192

// checkFreshWAL checks that pg_wal holds exactly one segment, all zeros
// after its first page: what pg_resetwal writes, nothing recycled.
func checkFreshWAL(dataDir string) error {
	wal := filepath.Join(dataDir, "pg_wal")
	entries, err := os.ReadDir(wal)
	if err != nil {
		return err
	}
	var segments []string
	for _, de := range entries {
		if walSegment.MatchString(de.Name()) {
			segments = append(segments, de.Name())
		}
	}
	if len(segments) != 1 {
		return fmt.Errorf("after pg_resetwal, pg_wal holds %d WAL segments (%s), want exactly one new one", len(segments), strings.Join(segments, ", "))
	}
	f, err := safefile.OpenRegular(filepath.Join(wal, segments[0]))
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(walPage, io.SeekStart); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(walPage); ; {
		n, err := f.Read(buf)
		for i, b := range buf[:n] {
			if b != 0 {
				return fmt.Errorf("WAL segment %s is not fresh: the byte at offset %d, after its first page, is not zero", segments[0], off+int64(i))
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// emptyDir removes what dir holds, keeping dir itself; a missing dir is
// fine.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, de := range entries {
		if err := os.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
			return err
		}
	}
	return nil
}

// scrubConfigFiles removes, from every configuration file of the data
// directory (a file whose name holds ".conf", in its root or in a
// directory of its own such as conf.d, whatever it is called now), the
// lines that set a setting secretSetting names. Sindri's own files are
// written afresh before every start and left alone.
func scrubConfigFiles(dataDir string, owner OSUser) error {
	ours := map[string]bool{ConfFile: true, HBAFile: true, IdentFile: true}
	return filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dataDir, path)
		if d.IsDir() {
			// Postgres's own directories hold no configuration.
			if rel != "." && (rel == "base" || rel == "global" || strings.HasPrefix(rel, "pg_")) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.Contains(d.Name(), ".conf") || (filepath.Dir(rel) == "." && ours[d.Name()]) {
			return nil
		}
		return dropLines(path, secretSetting, owner)
	})
}

// dropLines rewrites the file without the lines re matches, keeping its
// mode and giving it to owner; an unchanged file is not written.
func dropLines(path string, re *regexp.Regexp, owner OSUser) error {
	f, err := safefile.OpenRegular(path)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(f)
	fi, serr := f.Stat()
	f.Close()
	if err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	lines := strings.SplitAfter(string(data), "\n")
	kept := lines[:0]
	for _, line := range lines {
		if !re.MatchString(strings.TrimRight(line, "\r\n")) {
			kept = append(kept, line)
		}
	}
	if len(kept) == len(lines) {
		return nil
	}
	return writeOwned(path, strings.Join(kept, ""), fi.Mode().Perm(), owner)
}
