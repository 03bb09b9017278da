package postgres

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sindri-db/sindri/pkg/safefile"
)

// Files sindri writes into a data directory. The postmaster is started
// with ConfFile as its config_file and with every setting sindri decides on
// its command line, where it wins over every configuration file; the data
// directory's own postgresql.conf, pg_hba.conf and pg_ident.conf are moved
// aside (KeptSuffix) and never read.
const (
	ConfFile       = "sindri.conf"
	HBAFile        = "sindri_hba.conf"
	IdentFile      = "sindri_ident.conf"
	CAFile         = "sindri_ca.crt"
	ServerCertFile = "sindri_server.crt"
	ServerKeyFile  = "sindri_server.key"
	LogFile        = "sindri.log"
	// AutoConfFile is the one file Postgres reads besides config_file,
	// always: sindri rewrites it to hold only settings of KeptSettings.
	AutoConfFile = "postgresql.auto.conf"
	// KeptSuffix is added to the name of a configuration file that came
	// with the data when sindri puts it aside: kept for a person to read,
	// never read by Postgres.
	KeptSuffix = ".orig"
)

// dataConfigFiles are the configuration files a data directory brings
// (initdb makes them) that sindri puts aside: none is read once the
// postmaster runs with sindri's config_file, hba_file and ident_file.
var dataConfigFiles = []string{"postgresql.conf", "pg_hba.conf", "pg_ident.conf"}

// Settings are what sindri decides about a cluster it runs, besides its
// port and socket directory (see Cluster).
type Settings struct {
	// ListenAddresses is "*" for an instance and "" (unix socket only)
	// for the embedded metadata cluster and finalise's private start.
	ListenAddresses string
	SharedBuffers   string
	// TLS turns on SSL with the instance's certificates; nil for none.
	TLS *Certificates
	// PasswordRole may log in over TLS with its password (scram-sha-256);
	// "" for none.
	PasswordRole string
	// ClusterName shows in the process titles, e.g. "sindri-instance-7".
	ClusterName string
	// Clone applies cloneDefaults: cheap, and cut off from the server the
	// data came from. The metadata cluster keeps Postgres's durable ones.
	Clone bool
	// PreparedTransactions is max_prepared_transactions: 0 but for
	// finalise's private start, which must recover the prepared
	// transactions an upload holds (PreparedTransactionsSetting) to roll
	// them back.
	PreparedTransactions int
	// PrimaryConnInfo, with standby.signal in the data directory, makes
	// the cluster a streaming standby of that server (a source's replica;
	// a password goes in a passfile it names, not here). "" for every
	// other cluster.
	PrimaryConnInfo string
}

// setting is one pinned setting: its name and raw value (as given after
// -c name=, unquoted).
type setting struct{ name, value string }

// cloneDefaults are the settings that make a clone cheap to start and run
// and that keep it from touching anything of the server it was copied
// from. Each is named with its reason.
var cloneDefaults = []setting{
	// Subscriptions copied from the original must not start pulling from
	// its publishers (and the launcher is one process less to start).
	{"max_logical_replication_workers", "0"},
	// Nobody replicates from a clone: minimal WAL is less to write.
	{"wal_level", "minimal"},
	{"max_wal_senders", "0"},
	// A commit returns before its WAL is flushed: a crash loses the last
	// moments but never corrupts, and test suites run much faster.
	{"synchronous_commit", "off"},
	// Fewer checkpoints while a test suite writes; an idle clone's
	// checkpointer wakes only this often (and skips the checkpoint when
	// nothing was written).
	{"checkpoint_timeout", "30min"},
	{"max_wal_size", "1GB"},
	// A host runs hundreds of clones, most of them idle: what wakes an
	// idle one, times the clones, is the host's idle load (measured by
	// BenchmarkIdleClones). Autovacuum forks a worker per database every
	// naptime, the largest idle cost at Postgres's 1min; a clone is still
	// vacuumed and analysed, within 10 minutes of needing it.
	{"autovacuum_naptime", "10min"},
	// The background writer's LRU scan runs every bgwriter_delay until it
	// has lapped the buffers, which an idle clone's takes minutes to do
	// at 200ms: backends write the buffers they evict themselves instead,
	// and the writer hibernates for 50 delays once idle.
	{"bgwriter_delay", "10s"},
	// The WAL writer sleeps 25 delays once idle; async commits (above)
	// still wake it, and reach the disk within 3 delays.
	{"wal_writer_delay", "1s"},
	// JIT compiling costs more than it saves on short test queries.
	{"jit", "off"},
	// Enough for a test suite's pool, without the shared memory of
	// production's setting.
	{"max_connections", "50"},
}

// versioned is a pinned setting that exists only in some majors.
type versioned struct {
	setting
	since, until int // 0: no bound
}

// pinnedEverywhere are the settings sindri gives every cluster it runs,
// whatever the data directory says, besides the ones Settings decides:
// Postgres's defaults for what loads code, ships data out, writes files
// outside the data directory or sizes shared memory. A data directory
// could otherwise run code as the postgres OS user, which owns every
// instance, or take the host's memory.
var pinnedEverywhere = []versioned{
	// Code the server loads: only what is installed in $libdir.
	{setting: setting{"shared_preload_libraries", ""}},
	{setting: setting{"local_preload_libraries", ""}},
	{setting: setting{"session_preload_libraries", ""}},
	{setting: setting{"dynamic_library_path", "$libdir"}},
	{setting: setting{"jit_provider", "llvmjit"}},
	// Nothing ships WAL to, or pulls it from, another server, and no
	// command runs at archiving or recovery.
	{setting: setting{"archive_mode", "off"}},
	{setting: setting{"archive_command", ""}},
	{setting: setting{"archive_library", ""}, since: 15},
	{setting: setting{"restore_command", ""}, since: 12},
	{setting: setting{"archive_cleanup_command", ""}, since: 12},
	{setting: setting{"recovery_end_command", ""}, since: 12},
	{setting: setting{"primary_conninfo", ""}, since: 12},
	{setting: setting{"primary_slot_name", ""}, since: 12},
	{setting: setting{"recovery_target", ""}, since: 12},
	{setting: setting{"recovery_target_name", ""}, since: 12},
	{setting: setting{"recovery_target_time", ""}, since: 12},
	{setting: setting{"recovery_target_xid", ""}, since: 12},
	{setting: setting{"recovery_target_lsn", ""}, since: 12},
	{setting: setting{"recovery_target_timeline", "latest"}, since: 12},
	{setting: setting{"recovery_target_action", "pause"}, since: 12},
	// Logs go to stderr, which sindri sends to the per-instance log file;
	// no collector writes files elsewhere.
	{setting: setting{"logging_collector", "off"}},
	{setting: setting{"log_destination", "stderr"}},
	{setting: setting{"log_directory", "log"}},
	{setting: setting{"log_filename", "postgresql-%Y-%m-%d_%H%M%S.log"}},
	{setting: setting{"stats_temp_directory", "pg_stat_tmp"}, until: 14},
	// TLS: no command asked for a key's passphrase, no other files, no
	// weaker protocols or ciphers than Postgres's defaults.
	{setting: setting{"ssl_passphrase_command", ""}},
	{setting: setting{"ssl_passphrase_command_supports_reload", "off"}},
	{setting: setting{"ssl_crl_file", ""}},
	{setting: setting{"ssl_crl_dir", ""}, since: 14},
	{setting: setting{"ssl_dh_params_file", ""}},
	{setting: setting{"ssl_min_protocol_version", "TLSv1.2"}, since: 12},
	{setting: setting{"ssl_max_protocol_version", ""}, since: 12},
	{setting: setting{"ssl_ciphers", "HIGH:MEDIUM:+3DES:!aNULL"}},
	{setting: setting{"ssl_prefer_server_ciphers", "on"}},
	{setting: setting{"ssl_ecdh_curve", "prime256v1"}},
	// Who may connect is sindri's hba file alone.
	{setting: setting{"unix_socket_group", ""}},
	{setting: setting{"unix_socket_permissions", "0700"}},
	{setting: setting{"db_user_namespace", "off"}, until: 16},
	{setting: setting{"bonjour", "off"}},
	// Clients authenticate with SCRAM; no md5 hashes are made.
	{setting: setting{"password_encryption", "scram-sha-256"}},
	// A crash loses moments, never consistency.
	{setting: setting{"fsync", "on"}},
	{setting: setting{"full_page_writes", "on"}},
	// Shared memory and processes: Postgres's defaults, so that an upload
	// cannot make every clone take the host's memory.
	{setting: setting{"huge_pages", "off"}},
	{setting: setting{"max_worker_processes", "8"}},
	{setting: setting{"max_locks_per_transaction", "64"}},
	{setting: setting{"max_pred_locks_per_transaction", "64"}},
	{setting: setting{"max_replication_slots", "10"}},
	{setting: setting{"autovacuum_max_workers", "3"}},
	{setting: setting{"wal_buffers", "-1"}},
	{setting: setting{"min_dynamic_shared_memory", "0"}, since: 14},
	{setting: setting{"track_activity_query_size", "1024"}},
	{setting: setting{"max_files_per_process", "1000"}},
}

// pins are every setting sindri decides for the cluster, whose data
// directory dataDir (absolute) is of the given major version, in the order
// they are given: on the postmaster's command line, where they win over
// every configuration file, and in ConfFile.
func (c *Cluster) pins(dataDir string, major int) []setting {
	s := c.Settings
	var out []setting
	for _, v := range pinnedEverywhere {
		if (v.since == 0 || major >= v.since) && (v.until == 0 || major <= v.until) {
			out = append(out, v.setting)
		}
	}
	if s.Clone {
		out = append(out, cloneDefaults...)
	} else { // Postgres's defaults of what cloneDefaults change
		out = append(out, setting{"max_connections", "100"}, setting{"max_wal_senders", "10"})
	}
	sharedBuffers := s.SharedBuffers
	if sharedBuffers == "" {
		sharedBuffers = "128MB" // Postgres's default
	}
	ssl := "off"
	if s.TLS != nil {
		ssl = "on"
	}
	out = append(out,
		// Every file Postgres reads or writes by name is sindri's, in
		// the data directory or the private socket directory.
		setting{"data_directory", dataDir},
		setting{"config_file", filepath.Join(dataDir, ConfFile)},
		setting{"hba_file", filepath.Join(dataDir, HBAFile)},
		setting{"ident_file", filepath.Join(dataDir, IdentFile)},
		setting{"external_pid_file", filepath.Join(c.SocketDir, "postmaster.pid")},
		setting{"port", strconv.Itoa(c.Port)},
		setting{"listen_addresses", s.ListenAddresses},
		setting{"unix_socket_directories", c.SocketDir},
		setting{"ssl", ssl},
		setting{"ssl_cert_file", ServerCertFile},
		setting{"ssl_key_file", ServerKeyFile},
		setting{"ssl_ca_file", CAFile},
		setting{"cluster_name", s.ClusterName},
		setting{"shared_buffers", sharedBuffers},
		setting{"max_prepared_transactions", strconv.Itoa(max(s.PreparedTransactions, 0))},
	)
	if s.PrimaryConnInfo != "" { // after the pinned "": the last one wins
		out = append(out, setting{"primary_conninfo", s.PrimaryConnInfo}, setting{"hot_standby", "on"})
	}
	return out
}

// commandLine is the postmaster's arguments: the data directory and every
// pinned setting as -c name=value.
func (c *Cluster) commandLine(dataDir string, major int) []string {
	args := []string{"-D", dataDir}
	for _, p := range c.pins(dataDir, major) {
		args = append(args, "-c", p.name+"="+p.value)
	}
	return args
}

// quote makes s a single-quoted SQL literal (standard_conforming_strings).
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// confQuote makes s a single-quoted value of a configuration file, where a
// backslash starts an escape, as ALTER SYSTEM writes one.
func confQuote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
}

// majorNumber is the integer major of a PG_VERSION ("15"; "9.6" is 9).
func majorNumber(major string) int {
	n, _ := strconv.Atoi(strings.SplitN(major, ".", 2)[0])
	return n
}

// Configure writes sindri's configuration file, its hba and ident files
// and the TLS material into the data directory, puts the data's own
// configuration files aside, keeps in postgresql.auto.conf only the
// settings of KeptSettings (carried over from postgresql.conf the first
// time), and gives the files to owner. It is idempotent and runs before
// every start, of an instance (a clone of an image finalised before this
// version too) and of finalise's private start.
func (c *Cluster) Configure() error {
	dataDir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return err
	}
	s, owner := c.Settings, c.Owner
	major, err := MajorVersion(dataDir)
	if err != nil {
		return err
	}
	files := map[string]string{}
	if s.TLS != nil {
		files[CAFile] = s.TLS.CA
		files[ServerCertFile] = s.TLS.ServerCert
		files[ServerKeyFile] = s.TLS.ServerKey
	}
	files[ConfFile] = renderConf(c.pins(dataDir, majorNumber(major)))
	files[HBAFile] = renderHBA(s)
	files[IdentFile] = "# Written by sindri: no user name maps.\n"
	for name, content := range files {
		if err := writeOwned(filepath.Join(dataDir, name), content, 0o600, owner); err != nil {
			return err
		}
	}
	return adoptDataConfig(dataDir, owner)
}

// adoptDataConfig puts the data directory's own configuration files aside
// and rewrites postgresql.auto.conf to hold only kept settings: those of
// postgresql.conf (read once, when it is put aside; its include lines are
// not followed) and then its own. Nothing is read through a symbolic link.
func adoptDataConfig(dataDir string, owner OSUser) error {
	var carried []confEntry
	for _, name := range dataConfigFiles {
		path := filepath.Join(dataDir, name)
		fi, err := os.Lstat(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if name == "postgresql.conf" && fi.Mode().IsRegular() {
			if data, err := readNoFollow(path); err == nil {
				carried = keptEntries(parseConf(string(data)))
			}
		}
		// rename moves a link itself, never its target, and replaces
		// what an earlier start (or the upload) left under the name.
		if err := os.Rename(path, path+KeptSuffix); err != nil {
			return fmt.Errorf("putting the data directory's %s aside: %w", name, err)
		}
	}
	auto := filepath.Join(dataDir, AutoConfFile)
	current, err := readNoFollow(auto)
	exists := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		// A link or something not a file: put aside unread.
		if rerr := os.Rename(auto, auto+KeptSuffix); rerr != nil {
			return fmt.Errorf("putting the data directory's %s aside: %v (%w)", AutoConfFile, rerr, err)
		}
		exists = false
	}
	want := renderAutoConf(mergeEntries(carried, keptEntries(parseConf(string(current)))))
	if exists && string(current) == want {
		return nil
	}
	if _, err := os.Lstat(auto + KeptSuffix); exists && errors.Is(err, os.ErrNotExist) {
		// The data's own file stays readable beside sindri's, once: a
		// later rewrite does not replace the original.
		if err := os.Rename(auto, auto+KeptSuffix); err != nil {
			return err
		}
	}
	return writeOwned(auto, want, 0o600, owner)
}

// confEntry is one "name = value" line of a configuration file, value
// unquoted.
type confEntry struct{ name, value string }

// parseConf reads the settings of a configuration file as Postgres's
// lexer does (name, an optional "=", a quoted or bare value, a comment),
// names lowered. Lines it cannot read, and include directives, are left
// out: sindri keeps only what it understands.
func parseConf(text string) []confEntry {
	var out []confEntry
	for _, line := range strings.Split(text, "\n") {
		e, ok := parseConfLine(line)
		if !ok {
			continue
		}
		switch e.name {
		case "include", "include_if_exists", "include_dir":
			continue
		}
		out = append(out, e)
	}
	return out
}

func parseConfLine(line string) (confEntry, bool) {
	i := 0
	skipSpace := func() {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\f' || line[i] == '\v') {
			i++
		}
	}
	skipSpace()
	start := i
	for i < len(line) && isNameByte(line[i], i == start) {
		i++
	}
	if i == start {
		return confEntry{}, false // blank, a comment, or not a setting
	}
	name := strings.ToLower(line[start:i])
	skipSpace()
	if i < len(line) && line[i] == '=' {
		i++
		skipSpace()
	}
	var value string
	if i < len(line) && line[i] == '\'' {
		var b strings.Builder
		i++
		closed := false
		for i < len(line) {
			c := line[i]
			switch {
			case c == '\'' && i+1 < len(line) && line[i+1] == '\'':
				b.WriteByte('\'')
				i += 2
			case c == '\'':
				i++
				closed = true
			case c == '\\' && i+1 < len(line):
				b.WriteByte(unescape(line[i+1]))
				i += 2
			default:
				b.WriteByte(c)
				i++
			}
			if closed {
				break
			}
		}
		if !closed {
			return confEntry{}, false
		}
		value = b.String()
	} else {
		start := i
		for i < len(line) && line[i] != '#' && line[i] != ' ' && line[i] != '\t' && line[i] != '\'' {
			i++
		}
		if i == start {
			return confEntry{}, false
		}
		value = line[start:i]
	}
	skipSpace()
	if i < len(line) && line[i] != '#' {
		return confEntry{}, false
	}
	return confEntry{name, value}, true
}

func isNameByte(c byte, first bool) bool {
	letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
	return letter || !first && (c >= '0' && c <= '9' || c == '.')
}

// unescape is the character a backslash escape stands for in a quoted
// configuration value (octal escapes are kept as their first digit's
// character, which no kept setting needs).
func unescape(c byte) byte {
	switch c {
	case 'b':
		return '\b'
	case 'f':
		return '\f'
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	}
	return c
}

// keptEntries are the entries whose setting may stay (KeptSetting).
func keptEntries(entries []confEntry) []confEntry {
	var out []confEntry
	for _, e := range entries {
		if KeptSetting(e.name) && !strings.ContainsAny(e.value, "\n\r") {
			out = append(out, e)
		}
	}
	return out
}

// mergeEntries is a, then b, each name once with its last value, in the
// order names first appear: what Postgres would apply reading a then b.
func mergeEntries(a, b []confEntry) []confEntry {
	var out []confEntry
	index := map[string]int{}
	for _, e := range append(append([]confEntry(nil), a...), b...) {
		if i, ok := index[e.name]; ok {
			out[i].value = e.value
			continue
		}
		index[e.name] = len(out)
		out = append(out, e)
	}
	return out
}

// renderAutoConf writes entries as ALTER SYSTEM does, so that a file
// Postgres itself rewrote with kept settings only is left as it is.
func renderAutoConf(entries []confEntry) string {
	var b strings.Builder
	b.WriteString("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n")
	for _, e := range entries {
		fmt.Fprintf(&b, "%s = %s\n", e.name, confQuote(e.value))
	}
	return b.String()
}

// KeptSettings are the settings a data directory may keep, from its
// postgresql.conf (its top level), its postgresql.auto.conf or its
// catalog (ALTER DATABASE/ROLE ... SET): each is one any user may change
// in a session of their own (lc_messages aside, which initdb writes), so
// keeping it grants nothing; and none loads code, names a file or sizes
// shared memory. Names starting with a KeptPrefixes entry are kept too.
var KeptSettings = map[string]bool{
	// Locale and formats (initdb writes these into postgresql.conf).
	"datestyle": true, "intervalstyle": true, "timezone": true, "extra_float_digits": true,
	"lc_messages": true, "lc_monetary": true, "lc_numeric": true, "lc_time": true,
	"default_text_search_config": true, "client_encoding": true, "bytea_output": true,
	"xmlbinary": true, "xmloption": true, "standard_conforming_strings": true,
	"backslash_quote": true, "escape_string_warning": true, "array_nulls": true,
	"quote_all_identifiers": true, "transform_null_equals": true,
	// Sessions and statements.
	"search_path": true, "row_security": true, "check_function_bodies": true,
	"default_transaction_isolation": true, "default_transaction_read_only": true,
	"default_transaction_deferrable": true, "statement_timeout": true, "lock_timeout": true,
	"idle_in_transaction_session_timeout": true, "idle_session_timeout": true,
	"client_min_messages": true, "gin_fuzzy_search_limit": true, "gin_pending_list_limit": true,
	"default_toast_compression": true,
	// The planner and per-session memory.
	"work_mem": true, "maintenance_work_mem": true, "hash_mem_multiplier": true, "temp_buffers": true,
	"effective_cache_size": true, "random_page_cost": true, "seq_page_cost": true,
	"cpu_tuple_cost": true, "cpu_index_tuple_cost": true, "cpu_operator_cost": true,
	"parallel_setup_cost": true, "parallel_tuple_cost": true,
	"min_parallel_table_scan_size": true, "min_parallel_index_scan_size": true,
	"max_parallel_workers_per_gather": true, "max_parallel_maintenance_workers": true,
	"effective_io_concurrency": true, "maintenance_io_concurrency": true,
	"default_statistics_target": true, "constraint_exclusion": true, "cursor_tuple_fraction": true,
	"from_collapse_limit": true, "join_collapse_limit": true, "plan_cache_mode": true,
	// plpgsql's checks.
	"plpgsql.check_asserts": true, "plpgsql.extra_errors": true, "plpgsql.extra_warnings": true,
	"plpgsql.print_strict_params": true,
}

// KeptPrefixes start the names of other kept settings: the planner's
// switches and pg_trgm's thresholds. (Other extensions' settings go:
// some run commands, such as basebackup_to_shell.command, or code, such
// as plperl.on_init.)
var KeptPrefixes = []string{"enable_", "geqo", "pg_trgm."}

// KeptSetting tells whether a data directory may keep a setting of this
// name (any case).
func KeptSetting(name string) bool {
	name = strings.ToLower(name)
	if KeptSettings[name] {
		return true
	}
	for _, p := range KeptPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func renderConf(settings []setting) string {
	var b strings.Builder
	b.WriteString("# Written by sindri before every start; edits here are lost. The postmaster\n")
	b.WriteString("# is started with this file as its config_file and with each of these\n")
	b.WriteString("# settings on its command line too, where they win over every file.\n")
	for _, s := range settings {
		fmt.Fprintf(&b, "%s = %s\n", s.name, confQuote(s.value))
	}
	return b.String()
}

// renderHBA lets in: sindri itself over the private unix socket; the
// client certificate's role over TLS; the password role over TLS. Nothing
// else, and nothing without a credential over TCP.
func renderHBA(s Settings) string {
	var b strings.Builder
	b.WriteString("# Written by sindri before every start; edits here are lost.\n")
	b.WriteString("# The socket directory is private to root and the postgres user.\n")
	b.WriteString("local\tall\tall\t\ttrust\n")
	if s.TLS != nil {
		fmt.Fprintf(&b, "hostssl\tall\t%s\tall\tcert\n", ClientRole)
		if s.PasswordRole != "" {
			fmt.Fprintf(&b, "hostssl\tall\t%s\tall\tscram-sha-256\n", s.PasswordRole)
		}
	}
	return b.String()
}

// writeOwned replaces a file atomically, with mode perm (0600 for what
// sindri writes: Postgres refuses a private key that other users can
// read), owned by owner, following no link the postgres user may have put
// in the way.
func writeOwned(path, content string, perm os.FileMode, owner OSUser) error {
	tmp := path + ".sindri-tmp"
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := safefile.CreateNew(tmp, perm)
	if err != nil {
		return err
	}
	if err := f.Chown(int(owner.UID), int(owner.GID)); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// rename replaces a link at path itself, never its target.
	return os.Rename(tmp, path)
}
