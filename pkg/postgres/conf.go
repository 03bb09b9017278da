package postgres

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Files sindri writes into a data directory. The user's postgresql.conf
// gets one line, IncludeLine, and nothing else.
const (
	ConfFile       = "sindri.conf"
	HBAFile        = "sindri_hba.conf"
	IdentFile      = "sindri_ident.conf"
	CAFile         = "sindri_ca.crt"
	ServerCertFile = "sindri_server.crt"
	ServerKeyFile  = "sindri_server.key"
	LogFile        = "sindri.log"
	IncludeLine    = "include '" + ConfFile + "'\t# added by sindri; its settings win over the ones above"
)

// Settings are what sindri decides about a cluster it runs.
type Settings struct {
	Port int
	// ListenAddresses is "*" for an instance and "" (unix socket only)
	// for the embedded metadata cluster.
	ListenAddresses string
	// SocketDir is a private directory for the unix socket, reachable only
	// by root and the postgres OS user.
	SocketDir     string
	SharedBuffers string
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
}

// cloneDefaults are the settings that make a clone cheap to start and run
// and that keep it from touching anything of the server it was copied
// from. Each is named with its reason.
var cloneDefaults = map[string]string{
	// A clone must never ship WAL to the original's archive or stream
	// from its primary.
	"archive_mode":     "off",
	"archive_command":  "''",
	"restore_command":  "''",
	"primary_conninfo": "''",
	// Subscriptions copied from the original must not start pulling from
	// its publishers (and the launcher is one process less to start).
	"max_logical_replication_workers": "0",
	// Nobody replicates from a clone: minimal WAL is less to write.
	"wal_level":       "minimal",
	"max_wal_senders": "0",
	// A commit returns before its WAL is flushed: a crash loses the last
	// moments but never corrupts, and test suites run much faster.
	"synchronous_commit": "off",
	// Fewer checkpoints while a test suite writes.
	"checkpoint_timeout": "30min",
	"max_wal_size":       "1GB",
	// JIT compiling costs more than it saves on short test queries.
	"jit": "off",
	// Don't try to reserve huge pages on a host with many small clusters.
	"huge_pages": "off",
	// Enough for a test suite's pool, without the shared memory of
	// production's setting.
	"max_connections": "50",
	// Logs go to stderr, which sindri sends to the per-instance log file.
	"logging_collector": "off",
	"log_destination":   "'stderr'",
	// Clients authenticate with SCRAM; no md5 hashes are made.
	"password_encryption": "'scram-sha-256'",
}

// quote makes s a single-quoted string, as both postgresql.conf and SQL
// literals (with standard_conforming_strings) take it.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Configure writes sindri's include file, its hba and ident files and the
// TLS material into the data directory, adds the include line to
// postgresql.conf when it is missing, and gives the files to owner. It is
// idempotent and runs before every start.
func Configure(dataDir string, s Settings, owner OSUser) error {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	if _, err := MajorVersion(dataDir); err != nil {
		return err
	}
	settings := map[string]string{
		"port":                    fmt.Sprint(s.Port),
		"listen_addresses":        quote(s.ListenAddresses),
		"unix_socket_directories": quote(s.SocketDir),
		"unix_socket_permissions": "0700",
		"hba_file":                quote(filepath.Join(dataDir, HBAFile)),
		"ident_file":              quote(filepath.Join(dataDir, IdentFile)),
		"ssl":                     "off",
	}
	if s.SharedBuffers != "" {
		settings["shared_buffers"] = quote(s.SharedBuffers)
	}
	if s.ClusterName != "" {
		settings["cluster_name"] = quote(s.ClusterName)
	}
	if s.Clone {
		for k, v := range cloneDefaults {
			settings[k] = v
		}
	}
	files := map[string]string{}
	if s.TLS != nil {
		settings["ssl"] = "on"
		settings["ssl_cert_file"] = quote(ServerCertFile)
		settings["ssl_key_file"] = quote(ServerKeyFile)
		settings["ssl_ca_file"] = quote(CAFile)
		settings["ssl_min_protocol_version"] = quote("TLSv1.2")
		files[CAFile] = s.TLS.CA
		files[ServerCertFile] = s.TLS.ServerCert
		files[ServerKeyFile] = s.TLS.ServerKey
	}
	files[ConfFile] = renderConf(settings)
	files[HBAFile] = renderHBA(s)
	files[IdentFile] = "# Written by sindri: no user name maps.\n"
	for name, content := range files {
		if err := writeOwned(filepath.Join(dataDir, name), content, owner); err != nil {
			return err
		}
	}
	if err := overrideAutoConf(filepath.Join(dataDir, "postgresql.auto.conf"), settings, owner); err != nil {
		return err
	}
	return addIncludeLine(filepath.Join(dataDir, "postgresql.conf"), owner)
}

// overrideAutoConf comments out the lines of postgresql.auto.conf (what
// ALTER SYSTEM wrote) that set a key sindri sets: Postgres reads that file
// after postgresql.conf, so an archive_command or port set there on the
// original would otherwise win over sindri's include file.
func overrideAutoConf(path string, settings map[string]string, owner OSUser) error {
	data, err := readNoFollow(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	lines := strings.Split(string(data), "\n")
	changed := false
	for i, line := range lines {
		key, _, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if _, ours := settings[strings.ToLower(strings.TrimSpace(key))]; ours {
			lines[i] = "# overridden by sindri: " + line
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return writeOwned(path, strings.Join(lines, "\n"), owner)
}

func renderConf(settings map[string]string) string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by sindri before every start; edits here are lost.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
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

// writeOwned replaces a file atomically, mode 0600, owned by owner
// (Postgres refuses a private key that other users can read), following
// no link the postgres user may have put in the way.
func writeOwned(path, content string, owner OSUser) error {
	tmp := path + ".sindri-tmp"
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
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

func addIncludeLine(confPath string, owner OSUser) error {
	data, err := readNoFollow(confPath)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == IncludeLine {
			return nil
		}
	}
	if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	data = append(data, []byte(IncludeLine+"\n")...)
	return writeOwned(confPath, string(data), owner)
}
