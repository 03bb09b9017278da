package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// Where is what sindri chose for a running cluster, which its pinned
// settings show.
type Where struct {
	DataDir, SocketDir string
	Port               int
	ClusterName        string
	SharedBuffers      string
}

// HostileSetting is a value a data directory could set for a setting
// that sindri decides, and what an instance must show instead.
type HostileSetting struct {
	Name, Value string
	Want        func(Where) string
}

func is(v string) func(Where) string { return func(Where) string { return v } }

// CanaryLib names a library that does not exist: a server that loaded it
// would not start, or would refuse every session.
const CanaryLib = "sindri_canary_lib"

// HostileSettings are, for every setting sindri pins, a value that would
// reach outside the instance, run code as the postgres OS user, open it
// to the network, change where it reads or writes files, or take the
// host's memory; each would show in the instance, break its start, or
// leave a canary file, if it were taken.
func HostileSettings(canaryDir string) []HostileSetting {
	touch := "touch " + filepath.Join(canaryDir, "ran-%f")
	return []HostileSetting{
		{"max_connections", "77", is("50")},
		{"shared_buffers", "77MB", func(i Where) string { return i.SharedBuffers }},
		{"port", "1", func(i Where) string { return fmt.Sprint(i.Port) }},
		{"listen_addresses", "127.0.0.1", is("*")},
		{"unix_socket_directories", canaryDir, func(i Where) string { return i.SocketDir }},
		{"unix_socket_permissions", "0777", is("0700")},
		{"unix_socket_group", "postgres", is("")},
		{"data_directory", canaryDir, func(i Where) string { return i.DataDir }},
		{"config_file", filepath.Join(canaryDir, "evil.conf"), func(i Where) string { return filepath.Join(i.DataDir, postgres.ConfFile) }},
		{"hba_file", filepath.Join(canaryDir, "evil_hba.conf"), func(i Where) string { return filepath.Join(i.DataDir, postgres.HBAFile) }},
		{"ident_file", filepath.Join(canaryDir, "evil_ident.conf"), func(i Where) string { return filepath.Join(i.DataDir, postgres.IdentFile) }},
		{"external_pid_file", filepath.Join(canaryDir, "external.pid"), func(i Where) string { return filepath.Join(i.SocketDir, "postmaster.pid") }},
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
		{"shared_preload_libraries", CanaryLib, is("")},
		{"local_preload_libraries", CanaryLib, is("")},
		{"session_preload_libraries", CanaryLib, is("")},
		{"dynamic_library_path", canaryDir, is("$libdir")},
		{"jit_provider", CanaryLib, is("llvmjit")},
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
		{"cluster_name", "evil", func(i Where) string { return i.ClusterName }},
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

// HostileConf is a configuration file setting every hostile value (in
// the given style: "name = 'value'" or "name 'value'"), a canary custom
// setting, and a last line that Postgres cannot parse: a server that read
// the file would refuse to start.
func HostileConf(canaryDir string, withEquals bool) string {
	var b strings.Builder
	for _, h := range HostileSettings(canaryDir) {
		if withEquals {
			fmt.Fprintf(&b, "%s = '%s'\n", h.Name, h.Value)
		} else {
			fmt.Fprintf(&b, "%s '%s'\n", h.Name, h.Value)
		}
	}
	b.WriteString("sindri_canary.read = 'yes'\n")
	b.WriteString("this line breaks the configuration === !\n")
	return b.String()
}

// WriteAs writes a file (and its directory) owned by owner.
func WriteAs(t testing.TB, owner postgres.OSUser, path, content string) {
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

// AppendTo appends content to a file.
func AppendTo(t testing.TB, path, content string) {
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
type HostileVector struct {
	Name  string
	Plant func(t testing.TB, owner postgres.OSUser, dataDir, canaryDir string)
}

// OldIncludeLine is what sindri before this version appended to a data
// directory's postgresql.conf: a line after it won.
const OldIncludeLine = "include 'sindri.conf'\t# added by sindri; its settings win over the ones above"

// HostileVectors are the ways a data directory can hold configuration.
// The last one, a link, an upload cannot make (the extraction refuses
// links that leave the data directory).
var HostileVectors = []HostileVector{
	{"postgresql.conf, lines after sindri's old include line", func(t testing.TB, o postgres.OSUser, d, c string) {
		AppendTo(t, filepath.Join(d, "postgresql.conf"), OldIncludeLine+"\n"+HostileConf(c, true))
	}},
	{"postgresql.auto.conf, name = value", func(t testing.TB, o postgres.OSUser, d, c string) {
		AppendTo(t, filepath.Join(d, "postgresql.auto.conf"), HostileConf(c, true))
	}},
	{"postgresql.auto.conf, name value without =", func(t testing.TB, o postgres.OSUser, d, c string) {
		AppendTo(t, filepath.Join(d, "postgresql.auto.conf"), HostileConf(c, false))
	}},
	{"include in postgresql.conf", func(t testing.TB, o postgres.OSUser, d, c string) {
		WriteAs(t, o, filepath.Join(d, "evil.conf"), HostileConf(c, true))
		AppendTo(t, filepath.Join(d, "postgresql.conf"), OldIncludeLine+"\ninclude 'evil.conf'\n")
	}},
	{"include_if_exists in postgresql.conf", func(t testing.TB, o postgres.OSUser, d, c string) {
		WriteAs(t, o, filepath.Join(d, "evil.conf"), HostileConf(c, true))
		AppendTo(t, filepath.Join(d, "postgresql.conf"), OldIncludeLine+"\ninclude_if_exists = 'evil.conf'\n")
	}},
	{"include_dir conf.d in postgresql.conf", func(t testing.TB, o postgres.OSUser, d, c string) {
		WriteAs(t, o, filepath.Join(d, "conf.d", "50-evil.conf"), HostileConf(c, false))
		AppendTo(t, filepath.Join(d, "postgresql.conf"), OldIncludeLine+"\ninclude_dir 'conf.d'\n")
	}},
	{"include in postgresql.auto.conf, absolute path", func(t testing.TB, o postgres.OSUser, d, c string) {
		WriteAs(t, o, filepath.Join(c, "evil.conf"), HostileConf(c, true))
		AppendTo(t, filepath.Join(d, "postgresql.auto.conf"), "include '"+filepath.Join(c, "evil.conf")+"'\n")
	}},
	{"include_dir in postgresql.auto.conf", func(t testing.TB, o postgres.OSUser, d, c string) {
		WriteAs(t, o, filepath.Join(d, "conf.d", "50-evil.conf"), HostileConf(c, true))
		AppendTo(t, filepath.Join(d, "postgresql.auto.conf"), "include_dir = 'conf.d'\n")
	}},
	{"pg_hba.conf and pg_ident.conf", func(t testing.TB, o postgres.OSUser, d, c string) {
		WriteAs(t, o, filepath.Join(d, "pg_hba.conf"), "host all all all trust\nlocal all all trust\nthis line breaks the hba file\n")
		WriteAs(t, o, filepath.Join(d, "pg_ident.conf"), "evil root postgres\nthis line breaks\n")
	}},
	{"a symbolic link as postgresql.auto.conf", func(t testing.TB, o postgres.OSUser, d, c string) {
		WriteAs(t, o, filepath.Join(c, "evil.conf"), HostileConf(c, true))
		auto := filepath.Join(d, "postgresql.auto.conf")
		os.Remove(auto)
		if err := os.Symlink(filepath.Join(c, "evil.conf"), auto); err != nil {
			t.Fatal(err)
		}
	}},
}

// CheckSindrisSettings checks over SQL, through conn (a superuser's
// session without sindri's options, as a client's session starts), that
// a running instance shows sindri's value of every hostile setting, from
// its command line, read no configuration file but sindri's, lets in
// only whom sindri's hba file names, and left no canary.
func CheckSindrisSettings(t testing.TB, conn *pgx.Conn, i Where, canaryDir string) {
	t.Helper()
	ctx := context.Background()
	for _, h := range HostileSettings(canaryDir) {
		var got, source string
		if err := conn.QueryRow(ctx, "select setting, source from pg_settings where name = $1", h.Name).Scan(&got, &source); err != nil {
			t.Errorf("%s: %v", h.Name, err)
			continue
		}
		// Postgres reports the files it was told of as an override.
		if source != "command line" && !(source == "override" && slices.Contains([]string{"config_file", "data_directory", "hba_file", "ident_file"}, h.Name)) {
			t.Errorf("%s comes from %s, not the postmaster's command line", h.Name, source)
		}
		if want := h.Want(i); got != want {
			if h.Name == "shared_buffers" {
				got = MustQuery(t, conn, "select current_setting('shared_buffers')")
			}
			if got != want {
				t.Errorf("%s = %q, want sindri's %q (the data directory said %q)", h.Name, got, want, h.Value)
			}
		}
	}
	if got := MustQuery(t, conn, "select coalesce(current_setting('sindri_canary.read', true), '')"); got != "" {
		t.Errorf("the canary setting of a planted file is %q: the file was read", got)
	}
	sindris := []string{filepath.Join(i.DataDir, postgres.ConfFile), filepath.Join(i.DataDir, postgres.AutoConfFile)}
	for _, q := range []string{
		"select distinct sourcefile from pg_file_settings",
		"select distinct sourcefile from pg_settings where sourcefile is not null",
	} {
		for _, f := range MustQueryAll(t, conn, q) {
			if !slices.Contains(sindris, f) {
				t.Errorf("%s: %s was read as configuration", q, f)
			}
		}
	}
	for _, n := range MustQueryAll(t, conn, "select name from pg_file_settings where sourcefile like '%/"+postgres.AutoConfFile+"'") {
		if !postgres.KeptSetting(n) {
			t.Errorf("postgresql.auto.conf sets %s, which sindri does not keep", n)
		}
	}
	// PostgreSQL 15's pg_hba_file_rules reads hba_file (sindri's, as
	// checked above) and names no file: its rules must be sindri's.
	want := []string{"hostssl {all} {draupnir} cert", "hostssl {all} {sindri} scram-sha-256", "local {all} {all} trust"}
	if got := MustQueryAll(t, conn, "select concat_ws(' ', type, database::text, user_name::text, auth_method, error) from pg_hba_file_rules"); !slices.Equal(got, want) {
		t.Errorf("hba rules %q, want sindri's %q", got, want)
	}
	entries, _ := os.ReadDir(canaryDir)
	for _, e := range entries {
		if e.Name() != "evil.conf" {
			t.Errorf("a hostile setting took effect: %s appeared in %s", e.Name(), canaryDir)
		}
	}
}

// Exec runs sql in a session of its own at url.
func Exec(t testing.TB, url, sql string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// MustQuery is the one value sql returns.
func MustQuery(t testing.TB, conn *pgx.Conn, sql string) string {
	t.Helper()
	var out string
	if err := conn.QueryRow(context.Background(), sql).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// MustQueryAll is the values of sql's one column, sorted.
func MustQueryAll(t testing.TB, conn *pgx.Conn, sql string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql)
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
