package postgres_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// hostileSetting is a value a data directory could set for a setting
// that sindri decides, and what an instance must show instead.
type hostileSetting struct {
	name, value string
	want        func(i *pgtest.Instance) string
}

func is(v string) func(*pgtest.Instance) string { return func(*pgtest.Instance) string { return v } }

// canaryLib names a library that does not exist: a server that loaded it
// would not start, or would refuse every session.
const canaryLib = "sindri_canary_lib"

// hostileSettings are, for every setting sindri pins, a value that would
// reach outside the instance, run code as the postgres OS user, open it
// to the network, change where it reads or writes files, or take the
// host's memory; each would show in the instance, break its start, or
// leave a canary file, if it were taken.
func hostileSettings(canaryDir string) []hostileSetting {
	touch := "touch " + filepath.Join(canaryDir, "ran-%f")
	return []hostileSetting{
		{"max_connections", "77", is("50")},
		{"shared_buffers", "77MB", is("16MB")},
		{"port", "1", func(i *pgtest.Instance) string { return fmt.Sprint(i.Port) }},
		{"listen_addresses", "127.0.0.1", is("*")},
		{"unix_socket_directories", canaryDir, func(i *pgtest.Instance) string { return i.SocketDir }},
		{"unix_socket_permissions", "0777", is("0700")},
		{"unix_socket_group", "postgres", is("")},
		{"data_directory", canaryDir, func(i *pgtest.Instance) string { return i.DataDir }},
		{"config_file", filepath.Join(canaryDir, "evil.conf"), func(i *pgtest.Instance) string { return filepath.Join(i.DataDir, postgres.ConfFile) }},
		{"hba_file", filepath.Join(canaryDir, "evil_hba.conf"), func(i *pgtest.Instance) string { return filepath.Join(i.DataDir, postgres.HBAFile) }},
		{"ident_file", filepath.Join(canaryDir, "evil_ident.conf"), func(i *pgtest.Instance) string { return filepath.Join(i.DataDir, postgres.IdentFile) }},
		{"external_pid_file", filepath.Join(canaryDir, "external.pid"), func(i *pgtest.Instance) string { return filepath.Join(i.SocketDir, "postmaster.pid") }},
		{"archive_mode", "on", is("off")},
		{"archive_command", touch, is("(disabled)")}, // what Postgres shows with archive_mode off
		{"archive_library", "basic_archive", is("")},
		{"restore_command", touch, is("")},
		{"archive_cleanup_command", touch, is("")},
		{"recovery_end_command", touch, is("")},
		{"primary_conninfo", "host=primary.example.com user=replicator", is("")},
		{"primary_slot_name", "evil", is("")},
		{"recovery_target_name", "evil", is("")},
		{"recovery_target_action", "shutdown", is("pause")},
		{"shared_preload_libraries", canaryLib, is("")},
		{"local_preload_libraries", canaryLib, is("")},
		{"session_preload_libraries", canaryLib, is("")},
		{"dynamic_library_path", canaryDir, is("$libdir")},
		{"jit_provider", canaryLib, is("llvmjit")},
		{"jit", "on", is("off")},
		{"ssl", "off", is("on")},
		{"ssl_cert_file", "/etc/ssl/certs/ssl-cert-snakeoil.pem", is(postgres.ServerCertFile)},
		{"ssl_key_file", "/etc/ssl/private/ssl-cert-snakeoil.key", is(postgres.ServerKeyFile)},
		{"ssl_ca_file", "/etc/ssl/certs/ca-certificates.crt", is(postgres.CAFile)},
		{"ssl_crl_file", filepath.Join(canaryDir, "crl.pem"), is("")},
		{"ssl_crl_dir", canaryDir, is("")},
		{"ssl_passphrase_command", touch, is("")},
		{"ssl_min_protocol_version", "TLSv1", is("TLSv1.2")},
		{"ssl_ciphers", "ALL:eNULL", is("HIGH:MEDIUM:+3DES:!aNULL")},
		{"logging_collector", "on", is("off")},
		{"log_destination", "csvlog", is("stderr")},
		{"log_directory", canaryDir, is("log")},
		{"log_filename", "evil.log", is("postgresql-%Y-%m-%d_%H%M%S.log")},
		{"cluster_name", "evil", is("pgtest")},
		{"wal_level", "logical", is("minimal")},
		{"max_wal_senders", "10", is("0")},
		{"max_replication_slots", "77", is("10")},
		{"synchronous_commit", "remote_apply", is("off")},
		{"fsync", "off", is("on")},
		{"full_page_writes", "off", is("on")},
		{"huge_pages", "on", is("off")},
		{"max_worker_processes", "77", is("8")},
		{"max_prepared_transactions", "77", is("0")},
		{"max_locks_per_transaction", "7777", is("64")},
		{"min_dynamic_shared_memory", "1GB", is("0")},
		{"password_encryption", "md5", is("scram-sha-256")},
		{"db_user_namespace", "on", is("off")},
		{"bonjour", "on", is("off")},
	}
}

// hostileConf is a configuration file setting every hostile value (in
// the given style: "name = 'value'" or "name 'value'"), a canary custom
// setting, and a last line that Postgres cannot parse: a server that read
// the file would refuse to start.
func hostileConf(canaryDir string, withEquals bool) string {
	var b strings.Builder
	for _, h := range hostileSettings(canaryDir) {
		if withEquals {
			fmt.Fprintf(&b, "%s = '%s'\n", h.name, h.value)
		} else {
			fmt.Fprintf(&b, "%s '%s'\n", h.name, h.value)
		}
	}
	b.WriteString("sindri_canary.read = 'yes'\n")
	b.WriteString("this line breaks the configuration === !\n")
	return b.String()
}

func writeAs(t *testing.T, owner postgres.OSUser, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	owner.Chown(filepath.Dir(path), false)
	owner.Chown(path, false)
}

func appendTo(t *testing.T, path, content string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
}

// HostileVector is one way a data directory can hold configuration:
// plant writes hostile settings into dataDir that way.
type hostileVector struct {
	name  string
	plant func(t *testing.T, owner postgres.OSUser, dataDir, canaryDir string)
}

// oldIncludeLine is what sindri before this version appended to a data
// directory's postgresql.conf: a line after it won.
const oldIncludeLine = "include 'sindri.conf'\t# added by sindri; its settings win over the ones above"

var hostileVectors = []hostileVector{
	{"postgresql.conf, lines after sindri's old include line", func(t *testing.T, o postgres.OSUser, d, c string) {
		appendTo(t, filepath.Join(d, "postgresql.conf"), oldIncludeLine+"\n"+hostileConf(c, true))
	}},
	{"postgresql.auto.conf, name = value", func(t *testing.T, o postgres.OSUser, d, c string) {
		appendTo(t, filepath.Join(d, "postgresql.auto.conf"), hostileConf(c, true))
	}},
	{"postgresql.auto.conf, name value without =", func(t *testing.T, o postgres.OSUser, d, c string) {
		appendTo(t, filepath.Join(d, "postgresql.auto.conf"), hostileConf(c, false))
	}},
	{"include in postgresql.conf", func(t *testing.T, o postgres.OSUser, d, c string) {
		writeAs(t, o, filepath.Join(d, "evil.conf"), hostileConf(c, true))
		appendTo(t, filepath.Join(d, "postgresql.conf"), oldIncludeLine+"\ninclude 'evil.conf'\n")
	}},
	{"include_if_exists in postgresql.conf", func(t *testing.T, o postgres.OSUser, d, c string) {
		writeAs(t, o, filepath.Join(d, "evil.conf"), hostileConf(c, true))
		appendTo(t, filepath.Join(d, "postgresql.conf"), oldIncludeLine+"\ninclude_if_exists = 'evil.conf'\n")
	}},
	{"include_dir conf.d in postgresql.conf", func(t *testing.T, o postgres.OSUser, d, c string) {
		writeAs(t, o, filepath.Join(d, "conf.d", "50-evil.conf"), hostileConf(c, false))
		appendTo(t, filepath.Join(d, "postgresql.conf"), oldIncludeLine+"\ninclude_dir 'conf.d'\n")
	}},
	{"include in postgresql.auto.conf, absolute path", func(t *testing.T, o postgres.OSUser, d, c string) {
		writeAs(t, o, filepath.Join(c, "evil.conf"), hostileConf(c, true))
		appendTo(t, filepath.Join(d, "postgresql.auto.conf"), "include '"+filepath.Join(c, "evil.conf")+"'\n")
	}},
	{"include_dir in postgresql.auto.conf", func(t *testing.T, o postgres.OSUser, d, c string) {
		writeAs(t, o, filepath.Join(d, "conf.d", "50-evil.conf"), hostileConf(c, true))
		appendTo(t, filepath.Join(d, "postgresql.auto.conf"), "include_dir = 'conf.d'\n")
	}},
	{"pg_hba.conf and pg_ident.conf", func(t *testing.T, o postgres.OSUser, d, c string) {
		writeAs(t, o, filepath.Join(d, "pg_hba.conf"), "host all all all trust\nlocal all all trust\nthis line breaks the hba file\n")
		writeAs(t, o, filepath.Join(d, "pg_ident.conf"), "evil root postgres\nthis line breaks\n")
	}},
	{"a symbolic link as postgresql.auto.conf", func(t *testing.T, o postgres.OSUser, d, c string) {
		writeAs(t, o, filepath.Join(c, "evil.conf"), hostileConf(c, true))
		auto := filepath.Join(d, "postgresql.auto.conf")
		os.Remove(auto)
		if err := os.Symlink(filepath.Join(c, "evil.conf"), auto); err != nil {
			t.Fatal(err)
		}
	}},
}

// TestHostileDataConfigurationIsNotRead plants, for each way a data
// directory can hold configuration, a value for every setting sindri
// pins, then starts it as sindri starts an instance: every setting must
// show sindri's value, no file of the data directory but sindri's must be
// read as configuration, and nothing the hostile settings would do
// (a canary file, a TCP login without a password) may happen.
func TestHostileDataConfigurationIsNotRead(t *testing.T) {
	for _, v := range hostileVectors {
		t.Run(v.name, func(t *testing.T) {
			i := pgtest.NewInstance(t)
			canaryDir := pgtest.Dir(t)
			i.Owner.Chown(canaryDir, false)
			v.plant(t, i.Owner, i.DataDir, canaryDir)
			i.Start(t) // fails the test if the broken lines were read
			checkSindrisSettings(t, i, canaryDir)
			if _, err := query(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", i.Port), "select 1"); err == nil {
				t.Error("a TCP login without a password or certificate got in")
			}
			for _, name := range []string{"postgresql.conf", "pg_hba.conf", "pg_ident.conf"} {
				if _, err := os.Lstat(filepath.Join(i.DataDir, name)); !os.IsNotExist(err) {
					t.Errorf("the data directory's %s is still in place: %v", name, err)
				}
				if _, err := os.Lstat(filepath.Join(i.DataDir, name+postgres.KeptSuffix)); err != nil {
					t.Errorf("the data directory's %s is not kept beside: %v", name, err)
				}
			}
		})
	}
}

// checkSindrisSettings checks over SQL that a running instance shows
// sindri's value of every hostile setting, read no configuration file but
// sindri's, and left no canary.
func checkSindrisSettings(t *testing.T, i *pgtest.Instance, canaryDir string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, i.SocketURL()) // a session without sindri's options
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, h := range hostileSettings(canaryDir) {
		var got, source string
		if err := conn.QueryRow(ctx, "select setting, source from pg_settings where name = $1", h.name).Scan(&got, &source); err != nil {
			t.Errorf("%s: %v", h.name, err)
			continue
		}
		// Postgres reports the files it was told of as an override.
		if source != "command line" && !(source == "override" && slices.Contains([]string{"config_file", "data_directory", "hba_file", "ident_file"}, h.name)) {
			t.Errorf("%s comes from %s, not the postmaster's command line", h.name, source)
		}
		if want := h.want(i); got != want {
			if h.name == "shared_buffers" {
				got = mustQuery(t, conn, "select current_setting('shared_buffers')")
			}
			if got != want {
				t.Errorf("%s = %q, want sindri's %q (the data directory said %q)", h.name, got, want, h.value)
			}
		}
	}
	if got := mustQuery(t, conn, "select coalesce(current_setting('sindri_canary.read', true), '')"); got != "" {
		t.Errorf("the canary setting of a planted file is %q: the file was read", got)
	}
	sindris := []string{filepath.Join(i.DataDir, postgres.ConfFile), filepath.Join(i.DataDir, postgres.AutoConfFile)}
	for _, q := range []string{
		"select distinct sourcefile from pg_file_settings",
		"select distinct sourcefile from pg_settings where sourcefile is not null",
	} {
		for _, f := range mustQueryAll(t, conn, q) {
			if !slices.Contains(sindris, f) {
				t.Errorf("%s: %s was read as configuration", q, f)
			}
		}
	}
	for _, n := range mustQueryAll(t, conn, "select name from pg_file_settings where sourcefile like '%/"+postgres.AutoConfFile+"'") {
		if !postgres.KeptSetting(n) {
			t.Errorf("postgresql.auto.conf sets %s, which sindri does not keep", n)
		}
	}
	// PostgreSQL 15's pg_hba_file_rules reads hba_file (sindri's, as
	// checked above) and names no file: its rules must be sindri's.
	want := []string{"hostssl {all} {draupnir} cert", "hostssl {all} {sindri} scram-sha-256", "local {all} {all} trust"}
	if got := mustQueryAll(t, conn, "select concat_ws(' ', type, database::text, user_name::text, auth_method, error) from pg_hba_file_rules"); !slices.Equal(got, want) {
		t.Errorf("hba rules %q, want sindri's %q", got, want)
	}
	entries, _ := os.ReadDir(canaryDir)
	for _, e := range entries {
		if e.Name() != "evil.conf" {
			t.Errorf("a hostile setting took effect: %s appeared in %s", e.Name(), canaryDir)
		}
	}
}

func mustQuery(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var out string
	if err := conn.QueryRow(ctx, sql).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func mustQueryAll(t *testing.T, conn *pgx.Conn, sql string) []string {
	t.Helper()
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	slices.Sort(out)
	return out
}

// TestKeptSettingsStay: the harmless settings of a data directory's
// postgresql.conf (its top level) and postgresql.auto.conf stay, the
// auto.conf's winning; everything else of them goes; the originals stay
// beside; and a restart changes nothing. A superuser's later ALTER
// SYSTEM of a kept setting survives restarts, of another does not, and
// never replaces the data's original file.
func TestKeptSettingsStay(t *testing.T) {
	i := pgtest.NewInstance(t)
	canaryDir := pgtest.Dir(t)
	conf := filepath.Join(i.DataDir, "postgresql.conf")
	appendTo(t, conf, "timezone = 'Pacific/Auckland'\nwork_mem = '5MB'\nsearch_path = 'app, public'   # the app's schema first\n"+
		"basebackup_to_shell.command = 'touch "+filepath.Join(canaryDir, "ran")+"'\ninclude_dir 'conf.d'\n")
	writeAs(t, i.Owner, filepath.Join(i.DataDir, "conf.d", "x.conf"), "lock_timeout = '42s'\n")
	appendTo(t, filepath.Join(i.DataDir, postgres.AutoConfFile), "work_mem = '7MB'\nstatement_timeout 1234\nplpgsql.extra_warnings = 'all'\n"+
		"application_name = 'it''s \\\\ here'\nmax_connections = 77\n")
	autoOrig, err := os.ReadFile(filepath.Join(i.DataDir, postgres.AutoConfFile))
	if err != nil {
		t.Fatal(err)
	}
	i.Start(t)
	conn, err := pgx.Connect(ctx, i.PasswordURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	const show = "select concat_ws(' | ', current_setting('timezone'), current_setting('work_mem'), current_setting('search_path'), " +
		"current_setting('statement_timeout'), current_setting('plpgsql.extra_warnings', true), current_setting('lock_timeout'), " +
		"current_setting('max_connections'), coalesce(current_setting('basebackup_to_shell.command', true), 'unset'))"
	want := "Pacific/Auckland | 7MB | app, public | 1234ms | all | 0 | 50 | unset"
	if got := mustQuery(t, conn, show); got != want {
		t.Fatalf("settings in a client's session:\n got %s\nwant %s", got, want)
	}
	auto := filepath.Join(i.DataDir, postgres.AutoConfFile)
	first, _ := os.ReadFile(auto)
	if strings.Contains(string(first), "application_name") {
		t.Errorf("postgresql.auto.conf kept application_name, which is not a kept setting:\n%s", first)
	}
	kept, err := os.ReadFile(auto + postgres.KeptSuffix)
	if err != nil || string(kept) != string(autoOrig) {
		t.Errorf("the original postgresql.auto.conf is not kept beside: %v\n%s", err, kept)
	}

	conn.Close(ctx)
	postgres.Stop(ctx, i.DataDir, 10*time.Second)
	i.Configure(t)
	i.Restart(t)
	if again, _ := os.ReadFile(auto); string(again) != string(first) {
		t.Errorf("a restart rewrote postgresql.auto.conf:\n%s\nthen\n%s", first, again)
	}

	// A superuser's ALTER SYSTEM (allow_superuser), then a restart.
	super, err := pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{"alter system set work_mem = '9MB'", "alter system set archive_command = 'touch x'", `alter system set search_path = "it's", public, "back\slash"`} {
		if _, err := super.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	super.Close(ctx)
	postgres.Stop(ctx, i.DataDir, 10*time.Second)
	i.Configure(t)
	i.Restart(t)
	super, err = pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	if got := mustQuery(t, super, "select current_setting('work_mem') || ' ' || current_setting('archive_command') || ' ' || current_setting('search_path')"); got != `9MB (disabled) "it's", public, "back\slash"` {
		t.Errorf("after ALTER SYSTEM and a restart: %q", got)
	}
	if got := mustQueryAll(t, super, "select name from pg_file_settings where sourcefile like '%auto.conf' and name = 'archive_command'"); len(got) != 0 {
		t.Errorf("postgresql.auto.conf still sets archive_command after a restart")
	}
	if again, _ := os.ReadFile(auto + postgres.KeptSuffix); string(again) != string(autoOrig) {
		t.Errorf("the data's original postgresql.auto.conf was replaced:\n%s", again)
	}
}

// TestHostileSettingsPerDatabaseAndRole plants, in the catalog, settings
// that win over the command line (ALTER DATABASE/ROLE ... SET): a library
// loaded into every session, a library path, and a search_path for the
// superuser that puts a schema of the data's own before pg_catalog, with a
// view named pg_roles that records who read it. Starting it as sindri
// starts an instance must remove them, keep the harmless ones, let
// clients in without the library, and never read the planted view.
func TestHostileSettingsPerDatabaseAndRole(t *testing.T) {
	i := pgtest.StartInstance(t)
	super, err := pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"create schema sindri_evil",
		"create table sindri_evil.hits (who text)",
		"create function sindri_evil.spy() returns setof pg_catalog.pg_roles language sql as " +
			"$$ insert into sindri_evil.hits values (current_user); select * from pg_catalog.pg_roles $$",
		"create view sindri_evil.pg_roles as select * from sindri_evil.spy()",
		"grant usage on schema sindri_evil to public",
		"grant insert on sindri_evil.hits to public",
		"alter role postgres set search_path = sindri_evil, pg_catalog",
		"alter role all set dynamic_library_path = '" + pgtest.Dir(t) + "'",
		"alter role postgres in database postgres set jit = on",
		"alter database postgres set work_mem = '7MB'",
		"alter database postgres set search_path = app, public",
		"alter database postgres set local_preload_libraries = " + canaryLib,
		"alter database postgres set session_preload_libraries = " + canaryLib, // last: from here no session starts
	} {
		if _, err := super.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	super.Close(ctx)
	if _, err := query(t, i.PasswordURL(), "select 1"); err == nil || !strings.Contains(err.Error(), canaryLib) {
		t.Fatalf("the planted library did not stop a client's session (%v): the test plants nothing", err)
	}
	postgres.Stop(ctx, i.DataDir, 10*time.Second)
	i.Start(t) // as a new instance: Configure, start, client roles

	if _, err := query(t, i.PasswordURL(), "select 1"); err != nil {
		t.Fatalf("a client's session after the start: %v", err)
	}
	// Without sindri's session options, as a client's session starts.
	got, err := query(t, i.SocketURL(), "select concat_ws(' | ', current_setting('session_preload_libraries'), current_setting('local_preload_libraries'), "+
		"current_setting('dynamic_library_path'), current_setting('work_mem'), current_setting('search_path'), current_setting('jit'))")
	if err != nil {
		t.Fatalf("a session of the superuser after the start: %v", err)
	}
	if want := " |  | $libdir | 7MB | app, public | off"; got != want {
		t.Errorf("settings of a session:\n got %q\nwant %q", got, want)
	}
	super, err = pgx.Connect(ctx, i.SuperuserURL())
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	if hits := mustQuery(t, super, "select count(*)::text from sindri_evil.hits"); hits != "0" {
		t.Errorf("sindri's session read the planted view pg_roles %s times", hits)
	}
	left := mustQueryAll(t, super, "select unnest(setconfig) from pg_db_role_setting")
	if want := []string{"search_path=app, public", "work_mem=7MB"}; !slices.Equal(left, want) {
		t.Errorf("settings per database and role left: %q, want %q", left, want)
	}
}

// TestKeptSettingsAreThoseAnyUserMaySet: keeping a setting grants
// nothing when any user could set it in a session of their own.
func TestKeptSettingsAreThoseAnyUserMaySet(t *testing.T) {
	i := pgtest.StartInstance(t)
	conn, err := pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "do $$ begin end $$; load 'pg_trgm'"); err != nil { // registers their settings
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, "select lower(name), context from pg_settings")
	if err != nil {
		t.Fatal(err)
	}
	contexts := map[string]string{}
	for rows.Next() {
		var name, context string
		if err := rows.Scan(&name, &context); err != nil {
			t.Fatal(err)
		}
		contexts[name] = context
	}
	seen := 0
	for name, context := range contexts {
		if !postgres.KeptSetting(name) {
			continue
		}
		seen++
		if context != "user" && name != "lc_messages" {
			t.Errorf("%s is kept but its context is %s: not every user may set it", name, context)
		}
	}
	for name := range postgres.KeptSettings {
		if _, ok := contexts[name]; !ok {
			t.Errorf("kept setting %s does not exist in PostgreSQL %s", name, pgtest.Major)
		}
	}
	if seen < len(postgres.KeptSettings)+10 {
		t.Errorf("only %d settings of PostgreSQL match the kept ones", seen)
	}
}
