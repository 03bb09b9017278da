package config

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const testSecret = "0123456789abcdef" // exactly 16 characters

// writeConfig writes content to a temp config.toml and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// minimal returns the smallest valid file, plus extra appended.
func minimal(dataPath, extra string) string {
	return "data_path = \"" + dataPath + "\"\nshared_secret = \"" + testSecret + "\"\n" + extra
}

func TestMinimalFileLoadsWithDefaults(t *testing.T) {
	path := writeConfig(t, minimal("/var/lib/sindri", ""))
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	// Literal values, so a wrong Default() cannot hide behind itself.
	checks := []struct {
		name      string
		got, want any
	}{
		{"environment", c.Environment, "production"},
		{"data_path", c.DataPath, "/var/lib/sindri"},
		{"database_url", c.DatabaseURL, ""},
		{"shared_secret", c.SharedSecret, testSecret},
		{"trusted_user_email_domain", c.TrustedUserEmailDomain, ""},
		{"public_hostname", c.PublicHostname, "localhost"},
		{"http.listen_address", c.HTTP.ListenAddress, ":8443"},
		{"http.insecure_listen_address", c.HTTP.InsecureListenAddress, "127.0.0.1:8080"},
		{"http.tls_certificate", c.HTTP.TLSCertificate, ""},
		{"http.tls_private_key", c.HTTP.TLSPrivateKey, ""},
		{"http.max_body_bytes", c.HTTP.MaxBodyBytes, ByteSize(1 << 20)},
		{"oauth.client_id", c.OAuth.ClientID, ""},
		{"oauth.client_secret", c.OAuth.ClientSecret, ""},
		{"oauth.redirect_url", c.OAuth.RedirectURL, ""},
		{"oauth.auth_url", c.OAuth.AuthURL, "https://accounts.google.com/o/oauth2/auth"},
		{"oauth.token_url", c.OAuth.TokenURL, "https://oauth2.googleapis.com/token"},
		{"oauth.userinfo_url", c.OAuth.UserinfoURL, "https://openidconnect.googleapis.com/v1/userinfo"},
		{"oauth.scopes", c.OAuth.Scopes, []string{"openid", "email"}},
		{"oauth.allow_any_email", c.OAuth.AllowAnyEmail, false},
		{"oauth.max_pending_logins", c.OAuth.MaxPendingLogins, 1000},
		{"oauth.max_pending_logins_per_address", c.OAuth.MaxPendingLoginsPerAddress, 10},
		{"oauth.trusted_proxies", c.OAuth.TrustedProxies, []string{}},
		{"storage.driver", c.Storage.Driver, "auto"},
		{"storage.zfs_dataset", c.Storage.ZFSDataset, ""},
		{"storage.loopback_size", c.Storage.LoopbackSize, ByteSize(20 << 30)},
		{"storage.loopback_file", c.Storage.LoopbackFile, "/var/lib/sindri.btrfs.img"},
		{"secrets_key_file", c.SecretsKeyFile, "/var/lib/sindri/secrets.key"},
		{"postgres.bin_dir", c.Postgres.BinDir, "/usr/lib/postgresql/{version}/bin"},
		{"postgres.user", c.Postgres.User, "postgres"},
		{"postgres.min_port", c.Postgres.MinPort, 15432},
		{"postgres.max_port", c.Postgres.MaxPort, 16432},
		{"postgres.shared_buffers", c.Postgres.SharedBuffers, "32MB"},
		{"postgres.allow_superuser", c.Postgres.AllowSuperuser, false},
		{"postgres.socket_dir", c.Postgres.SocketDir, "/run/sindri"},
		{"instances.default_ttl", c.Instances.DefaultTTL, 24 * time.Hour},
		{"instances.max_ttl", c.Instances.MaxTTL, 168 * time.Hour},
		{"instances.expiry_interval", c.Instances.ExpiryInterval, 30 * time.Second},
		{"backups.max_age", c.Backups.MaxAge, time.Duration(0)},
		{"sources.retry_min", c.Sources.RetryMin, 30 * time.Second},
		{"sources.retry_max", c.Sources.RetryMax, time.Hour},
		{"sources.standby_resync_after", c.Sources.StandbyResyncAfter, 10 * time.Minute},
		{"uploads.authorized_keys_file", c.Uploads.AuthorizedKeysFile, ""},
		{"uploads.account", c.Uploads.Account, "sindri-upload"},
		{"limits.instances_per_user", c.Limits.InstancesPerUser, 50},
		{"limits.protected_instances_per_user", c.Limits.ProtectedInstancesPerUser, 5},
		{"limits.branches_per_user", c.Limits.BranchesPerUser, 5},
		{"limits.running_backups_per_user", c.Limits.RunningBackupsPerUser, 2},
		{"limits.running_backups", c.Limits.RunningBackups, 4},
		{"limits.backups_total_bytes", c.Limits.BackupsTotalBytes, SizeOrPercent{Percent: 50}},
		{"limits.disk_reserve", c.Limits.DiskReserve, SizeOrPercent{Percent: 5}},
		{"limits.upload_user_instances", c.Limits.UploadUserInstances, 0},
		{"limits.upload_user_protected_instances", c.Limits.UploadUserProtectedInstances, 0},
		{"limits.upload_user_branches", c.Limits.UploadUserBranches, 0},
		{"limits.upload_user_running_backups", c.Limits.UploadUserRunningBackups, 0},
		{"BinDir(16)", c.BinDir("16"), "/usr/lib/postgresql/16/bin"},
		{"MetaDir", c.MetaDir(), "/var/lib/sindri/meta"},
		{"UploadsDir", c.UploadsDir(), "/var/lib/sindri/image_uploads"},
		{"BackupsDir", c.BackupsDir(), "/var/lib/sindri/backups"},
		{"LoopbackFilePath", c.LoopbackFilePath(), "/var/lib/sindri.btrfs.img"},
		{"EmbeddedMetadataDB", c.EmbeddedMetadataDB(), true},
		{"OAuthEnabled", c.OAuthEnabled(), false},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %#v, want %#v", ch.name, ch.got, ch.want)
		}
	}

	// Every field not set by the file equals Default().
	want := Default()
	want.DataPath, want.SharedSecret = "/var/lib/sindri", testSecret
	want.Storage.LoopbackFile = "/var/lib/sindri.btrfs.img"
	want.SecretsKeyFile = "/var/lib/sindri/secrets.key"
	want.file = path
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load = %+v\nwant %+v", c, want)
	}
}

func TestDataPathIsCleaned(t *testing.T) {
	c, err := Load(writeConfig(t, minimal("/var/lib/sindri/", "")))
	if err != nil {
		t.Fatal(err)
	}
	if c.DataPath != "/var/lib/sindri" || c.Storage.LoopbackFile != "/var/lib/sindri.btrfs.img" {
		t.Errorf("data_path %q, loopback_file %q", c.DataPath, c.Storage.LoopbackFile)
	}
}

func TestDefaultValidate(t *testing.T) {
	err := Default().Validate()
	if err == nil {
		t.Fatal("Default().Validate() = nil; data_path and shared_secret are required")
	}
	for _, key := range []string{"data_path", "shared_secret"} {
		if !strings.Contains(err.Error(), key+" is required") {
			t.Errorf("Default().Validate() = %q, want it to say %s is required", err, key)
		}
	}

	c := Default()
	c.DataPath, c.SharedSecret = "/srv/sindri", testSecret
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if got := c.LoopbackFilePath(); got != "/srv/sindri.btrfs.img" {
		t.Errorf("LoopbackFilePath = %q", got)
	}
	// Default() must not share the scopes slice between calls.
	c.OAuth.Scopes[0] = "changed"
	if Default().OAuth.Scopes[0] != "openid" {
		t.Error("Default() shares its Scopes slice")
	}
}

func TestUnknownKeys(t *testing.T) {
	tests := []struct {
		name    string
		extra   string
		want    []string // keys reported, in order
		notWant []string
	}{
		{"top level", "listen_adress = \":1\"\n", []string{"listen_adress"}, nil},
		{"in section", "[http]\nlisten_adress = \":1\"\n", []string{"http.listen_adress"}, nil},
		{"unknown section reported once", "[htttp]\nlisten_address = \":1\"\nfoo = 1\n", []string{"htttp"}, []string{"htttp.foo"}},
		{"nested table", "[postgres.extra]\nx = 1\n", []string{"postgres.extra"}, []string{"postgres.extra.x"}},
		{"two keys", "[storage]\ndriver = \"btrfs\"\ndrive = \"zfs\"\n[instances]\nttl = \"1h\"\n", []string{"storage.drive", "instances.ttl"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, minimal("/var/lib/sindri", tt.extra))
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded, want unknown key error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d problems, want %d: %q", len(lines), len(tt.want), err)
			}
			for i, key := range tt.want {
				if want := path + `: unknown key "` + key + `"`; lines[i] != want {
					t.Errorf("line %d = %q, want %q", i, lines[i], want)
				}
			}
			for _, key := range tt.notWant {
				if strings.Contains(err.Error(), `"`+key+`"`) {
					t.Errorf("error %q also names %q", err, key)
				}
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Key != tt.want[0] {
				t.Errorf("errors.As: %#v, want Key %q", ce, tt.want[0])
			}
		})
	}
}

func TestInvalidValues(t *testing.T) {
	dir := t.TempDir()
	dataPath := filepath.Join(dir, "data")
	cert := filepath.Join(dir, "cert.pem")
	key := filepath.Join(dir, "key.pem")
	for _, f := range []string{cert, key} {
		if err := os.WriteFile(f, []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		// file is the whole file when full is set, else appended to a
		// minimal valid file.
		file string
		full bool
		key  string // Error.Key, also required in the message
		want string // substring of the message
	}{
		// top level
		{name: "environment", file: `environment = "staging"`, key: "environment", want: `(got "staging")`},
		{name: "data_path missing", file: `shared_secret = "` + testSecret + `"`, full: true, key: "data_path", want: "data_path is required"},
		{name: "data_path relative", file: "data_path = \"var/lib/sindri\"\nshared_secret = \"" + testSecret + "\"", full: true, key: "data_path", want: "absolute path"},
		{name: "data_path root", file: "data_path = \"/\"\nshared_secret = \"" + testSecret + "\"", full: true, key: "data_path", want: "root directory"},
		{name: "database_url scheme", file: `database_url = "mysql://u@h/db"`, key: "database_url", want: `postgres:// or postgresql:// (got scheme "mysql")`},
		{name: "database_url no scheme", file: `database_url = "host=db user=x"`, key: "database_url", want: "postgres://"},
		{name: "database_url unparsable hides password", file: `database_url = "postgres://u:hunter2@h:badport/db"`, key: "database_url", want: "not a valid URL"},
		{name: "shared_secret missing", file: `data_path = "/var/lib/sindri"`, full: true, key: "shared_secret", want: "shared_secret is required"},
		{name: "shared_secret short", file: "data_path = \"/var/lib/sindri\"\nshared_secret = \"0123456789abcde\"", full: true, key: "shared_secret", want: "at least 16 characters outside environment = \"development\" (got 15;"},
		{name: "shared_secret short in test", file: "environment = \"test\"\ndata_path = \"/var/lib/sindri\"\nshared_secret = \"short\"", full: true, key: "shared_secret", want: "at least 16"},
		{name: "shared_secret empty in development", file: "environment = \"development\"\ndata_path = \"/var/lib/sindri\"\nshared_secret = \"\"", full: true, key: "shared_secret", want: "required"},
		{name: "trusted domain without @", file: `trusted_user_email_domain = "example.com"`, key: "trusted_user_email_domain", want: `starting with "@"`},
		{name: "trusted domain only @", file: `trusted_user_email_domain = "@"`, key: "trusted_user_email_domain", want: `(got "@")`},
		{name: "trusted domain address", file: `trusted_user_email_domain = "@me@example.com"`, key: "trusted_user_email_domain", want: "@example.com"},
		{name: "public_hostname scheme", file: `public_hostname = "https://db.example.com"`, key: "public_hostname", want: "without scheme, port or path"},
		{name: "public_hostname port", file: `public_hostname = "db.example.com:5432"`, key: "public_hostname", want: "without scheme, port or path"},
		{name: "public_hostname slash", file: `public_hostname = "db.example.com/"`, key: "public_hostname", want: "without scheme, port or path"},
		{name: "public_hostname empty", file: `public_hostname = ""`, key: "public_hostname", want: "must not be empty"},

		// [http]
		{name: "listen_address no port", file: "[http]\nlisten_address = \"8443\"", key: "http.listen_address", want: "host:port"},
		{name: "listen_address port 0", file: "[http]\nlisten_address = \":0\"", key: "http.listen_address", want: "between 1 and 65535"},
		{name: "listen_address port too big", file: "[http]\nlisten_address = \":65536\"", key: "http.listen_address", want: "between 1 and 65535"},
		{name: "listen_address named port", file: "[http]\nlisten_address = \":https\"", key: "http.listen_address", want: "between 1 and 65535"},
		{name: "listen_address empty", file: "[http]\nlisten_address = \"\"", key: "http.listen_address", want: "must not be empty"},
		{name: "insecure_listen_address", file: "[http]\ninsecure_listen_address = \"localhost\"", key: "http.insecure_listen_address", want: "or empty to disable"},
		{name: "tls cert without key", file: "[http]\ntls_certificate = \"" + cert + "\"", key: "http.tls_private_key", want: "must be set when http.tls_certificate is set"},
		{name: "tls key without cert", file: "[http]\ntls_private_key = \"" + key + "\"", key: "http.tls_certificate", want: "must be set when http.tls_private_key is set"},
		{name: "tls cert missing", file: "[http]\ntls_certificate = \"" + missing + "\"\ntls_private_key = \"" + key + "\"", key: "http.tls_certificate", want: "cannot be read: no such file or directory"},
		{name: "tls key is a directory", file: "[http]\ntls_certificate = \"" + cert + "\"\ntls_private_key = \"" + dir + "\"", key: "http.tls_private_key", want: "is a directory"},
		{name: "max_body_bytes zero", file: "[http]\nmax_body_bytes = \"0\"", key: "http.max_body_bytes", want: "positive size"},
		{name: "max_body_bytes words", file: "[http]\nmax_body_bytes = \"lots\"", key: "http.max_body_bytes", want: `"lots" is not a size (use a number of bytes or a unit such as 20GiB)`},
		{name: "max_body_bytes negative", file: "[http]\nmax_body_bytes = -1", key: "http.max_body_bytes", want: "must not be negative"},
		{name: "max_body_bytes float", file: "[http]\nmax_body_bytes = 1.5", key: "http.max_body_bytes", want: "not a size"},

		// [oauth]
		{name: "oauth without secret", file: "trusted_user_email_domain = \"@example.com\"\n[oauth]\nclient_id = \"id\"\nredirect_url = \"https://s.example.com/cb\"", key: "oauth.client_secret", want: "required when oauth.client_id is set"},
		{name: "oauth without redirect", file: "trusted_user_email_domain = \"@example.com\"\n[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"", key: "oauth.redirect_url", want: "required when oauth.client_id is set"},
		{name: "oauth secret without id", file: "[oauth]\nclient_secret = \"s\"", key: "oauth.client_id", want: "must be set when oauth.client_secret is set"},
		{name: "redirect_url relative", file: "[oauth]\nredirect_url = \"/oauth_callback\"", key: "oauth.redirect_url", want: "absolute http:// or https:// URL"},
		{name: "redirect_url ftp", file: "[oauth]\nredirect_url = \"ftp://s.example.com/cb\"", key: "oauth.redirect_url", want: "absolute http:// or https:// URL"},
		{name: "auth_url", file: "[oauth]\nauth_url = \"accounts.google.com\"", key: "oauth.auth_url", want: "absolute http:// or https:// URL"},
		{name: "token_url empty with client", file: "trusted_user_email_domain = \"@example.com\"\n[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\nredirect_url = \"https://s.example.com/cb\"\ntoken_url = \"\"", key: "oauth.token_url", want: "required when oauth.client_id is set"},
		{name: "userinfo_url", file: "[oauth]\nuserinfo_url = \"openidconnect\"", key: "oauth.userinfo_url", want: "absolute http:// or https:// URL"},
		{name: "scopes empty with client", file: "trusted_user_email_domain = \"@example.com\"\n[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\nredirect_url = \"https://s.example.com/cb\"\nscopes = []", key: "oauth.scopes", want: "must not be empty"},
		{name: "scope with space", file: "[oauth]\nscopes = [\"openid email\"]", key: "oauth.scopes", want: `(got "openid email")`},
		{name: "scopes not an array", file: "[oauth]\nscopes = \"openid\"", key: "oauth.scopes", want: "oauth.scopes must be an array, not a string"},

		// [storage]
		{name: "driver", file: "[storage]\ndriver = \"ext4\"", key: "storage.driver", want: `(got "ext4")`},
		{name: "zfs without dataset", file: "[storage]\ndriver = \"zfs\"", key: "storage.zfs_dataset", want: `required when storage.driver = "zfs"`},
		{name: "zfs_dataset leading slash", file: "[storage]\nzfs_dataset = \"/tank/sindri\"", key: "storage.zfs_dataset", want: `no leading "/"`},
		{name: "zfs_dataset snapshot", file: "[storage]\nzfs_dataset = \"tank/sindri@snap\"", key: "storage.zfs_dataset", want: `no "@"`},
		{name: "zfs_dataset dotdot", file: "[storage]\nzfs_dataset = \"tank/../sindri\"", key: "storage.zfs_dataset", want: `".."`},
		{name: "zfs_dataset dotdot inside", file: "[storage]\nzfs_dataset = \"tank/a..b\"", key: "storage.zfs_dataset", want: `".."`},
		{name: "zfs_dataset space", file: "[storage]\nzfs_dataset = \"tank/my data\"", key: "storage.zfs_dataset", want: "no spaces"},
		{name: "loopback_size small", file: "[storage]\nloopback_size = \"100MiB\"", key: "storage.loopback_size", want: "at least 256MiB, or 0 to disable the loopback file (got 100MiB)"},
		{name: "loopback_size words", file: "[storage]\nloopback_size = \"20 gigs\"", key: "storage.loopback_size", want: `storage.loopback_size: "20 gigs" is not a size (use a number of bytes or a unit such as 20GiB)`},
		{name: "loopback_size too large", file: "[storage]\nloopback_size = \"9EiB\"", key: "storage.loopback_size", want: "too large"},
		{name: "loopback_file relative", file: "[storage]\nloopback_file = \"sindri.img\"", key: "storage.loopback_file", want: "absolute path"},
		{name: "loopback_file inside data_path", file: "[storage]\nloopback_file = \"" + dataPath + "/btrfs.img\"", key: "storage.loopback_file", want: "must not be inside data_path"},
		{name: "secrets_key_file relative", file: "secrets_key_file = \"secrets.key\"", key: "secrets_key_file", want: "absolute path"},
		{name: "secrets_key_file in the metadata cluster", file: "secrets_key_file = \"" + dataPath + "/meta/secrets.key\"", key: "secrets_key_file", want: "must not be inside " + dataPath + "/meta"},
		{name: "secrets_key_file among uploads", file: "secrets_key_file = \"" + dataPath + "/image_uploads/k\"", key: "secrets_key_file", want: "must not be inside " + dataPath + "/image_uploads"},

		// [postgres]
		{name: "bin_dir relative", file: "[postgres]\nbin_dir = \"bin\"", key: "postgres.bin_dir", want: "absolute path"},
		{name: "bin_dir empty", file: "[postgres]\nbin_dir = \"\"", key: "postgres.bin_dir", want: "must not be empty"},
		{name: "user root", file: "[postgres]\nuser = \"root\"", key: "postgres.user", want: "must not be root"},
		{name: "user empty", file: "[postgres]\nuser = \"\"", key: "postgres.user", want: "must not be empty"},
		{name: "min above max", file: "[postgres]\nmin_port = 7000\nmax_port = 6000", key: "postgres.min_port", want: "postgres.min_port must be below postgres.max_port (got 7000 and 6000)"},
		{name: "min equals max", file: "[postgres]\nmin_port = 7000\nmax_port = 7000", key: "postgres.min_port", want: "must be below postgres.max_port"},
		{name: "min privileged", file: "[postgres]\nmin_port = 80", key: "postgres.min_port", want: "between 1024 and 65535 (got 80)"},
		{name: "max too big", file: "[postgres]\nmax_port = 70000", key: "postgres.max_port", want: "(got 70000"},
		{name: "port not an integer", file: "[postgres]\nmin_port = \"15432\"", key: "postgres.min_port", want: "postgres.min_port must be an integer, not a string"},
		{name: "shared_buffers empty", file: "[postgres]\nshared_buffers = \"\"", key: "postgres.shared_buffers", want: "must not be empty"},
		{name: "shared_buffers unit case", file: "[postgres]\nshared_buffers = \"32mb\"", key: "postgres.shared_buffers", want: "case matters"},
		{name: "socket_dir relative", file: "[postgres]\nsocket_dir = \"run\"", key: "postgres.socket_dir", want: "must be an absolute path"},
		{name: "socket_dir too long", file: "[postgres]\nsocket_dir = \"/" + strings.Repeat("x", 90) + "\"", key: "postgres.socket_dir", want: "at most 80 bytes"},
		{name: "allow_superuser string", file: "[postgres]\nallow_superuser = \"yes\"", key: "postgres.allow_superuser", want: "must be true or false, not a string"},

		// [instances]
		{name: "default_ttl bad", file: "[instances]\ndefault_ttl = \"2 days\"", key: "instances.default_ttl", want: `instances.default_ttl: "2 days" is not a duration`},
		{name: "max_ttl bad", file: "[instances]\nmax_ttl = \"1w\"", key: "instances.max_ttl", want: `"1w" is not a duration`},
		{name: "expiry_interval bad", file: "[instances]\nexpiry_interval = \"soon\"", key: "instances.expiry_interval", want: "is not a duration"},
		{name: "default_ttl integer", file: "[instances]\ndefault_ttl = 86400", key: "instances.default_ttl", want: "duration string"},
		{name: "default_ttl float", file: "[instances]\ndefault_ttl = 1.5", key: "instances.default_ttl", want: "instances.default_ttl"},
		{name: "default above max", file: "[instances]\ndefault_ttl = \"200h\"", key: "instances.default_ttl", want: `must not exceed instances.max_ttl (got "200h0m0s" and "168h0m0s")`},
		{name: "default no expiry with max", file: "[instances]\ndefault_ttl = \"0\"", key: "instances.default_ttl", want: "must not be 0 (no expiry) when instances.max_ttl is set"},
		{name: "default negative", file: "[instances]\ndefault_ttl = \"-1h\"", key: "instances.default_ttl", want: "must not be negative"},
		{name: "max negative", file: "[instances]\nmax_ttl = \"-1h\"\ndefault_ttl = \"0\"", key: "instances.max_ttl", want: "must not be negative"},
		{name: "expiry_interval short", file: "[instances]\nexpiry_interval = \"500ms\"", key: "instances.expiry_interval", want: `at least "1s" (got "500ms")`},

		// [backups]
		{name: "max_age bad", file: "[backups]\nmax_age = \"a month\"", key: "backups.max_age", want: "is not a duration"},
		{name: "max_age integer", file: "[backups]\nmax_age = 3600", key: "backups.max_age", want: "duration string"},
		{name: "max_age negative", file: "[backups]\nmax_age = \"-1h\"", key: "backups.max_age", want: "must not be negative"},

		// [sources]
		{name: "retry_max integer", file: "[sources]\nretry_max = 86400000000000", key: "sources.retry_max", want: "duration string"},
		{name: "retry_min short", file: "[sources]\nretry_min = \"10ms\"", key: "sources.retry_min", want: `at least "1s"`},
		{name: "retry_max below min", file: "[sources]\nretry_min = \"2m\"\nretry_max = \"1m\"", key: "sources.retry_max", want: "at least sources.retry_min"},
		{name: "standby_resync_after short", file: "[sources]\nstandby_resync_after = \"5s\"", key: "sources.standby_resync_after", want: `at least "1m"`},

		// [uploads]
		{name: "authorized_keys_file relative", file: "[uploads]\nauthorized_keys_file = \"authorized_keys\"", key: "uploads.authorized_keys_file", want: "absolute path"},
		{name: "account empty", file: "[uploads]\naccount = \"\"", key: "uploads.account", want: "must not be empty"},
		{name: "account root", file: "[uploads]\naccount = \"root\"", key: "uploads.account", want: "must not be root"},
		{name: "account uid 0", file: "[uploads]\naccount = \"0\"", key: "uploads.account", want: "must not be root"},
		{name: "account with slash", file: "[uploads]\naccount = \"../x\"", key: "uploads.account", want: "must be a user name"},
		{name: "account upper case", file: "[uploads]\naccount = \"Upload\"", key: "uploads.account", want: "must be a user name"},
		{name: "account integer", file: "[uploads]\naccount = 1000", key: "uploads.account", want: "uploads.account"},

		// OAuth and the e-mail domain
		{name: "oauth without a domain", file: "[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\nredirect_url = \"https://s.example.com/cb\"",
			key: "trusted_user_email_domain", want: "set oauth.allow_any_email = true"},
		{name: "allow_any_email with a domain", file: "trusted_user_email_domain = \"@example.com\"\n[oauth]\nallow_any_email = true",
			key: "oauth.allow_any_email", want: `contradicts trusted_user_email_domain = "@example.com"`},
		{name: "allow_any_email string", file: "[oauth]\nallow_any_email = \"yes\"", key: "oauth.allow_any_email", want: "true or false"},
		{name: "per address not below all", file: "[oauth]\nmax_pending_logins = 10\nmax_pending_logins_per_address = 10",
			key: "oauth.max_pending_logins_per_address", want: "below oauth.max_pending_logins (10)"},
		{name: "per address zero", file: "[oauth]\nmax_pending_logins_per_address = 0", key: "oauth.max_pending_logins_per_address", want: "at least 1"},
		{name: "max_pending_logins one", file: "[oauth]\nmax_pending_logins = 1", key: "oauth.max_pending_logins", want: "at least 2"},
		{name: "trusted_proxies bad", file: "[oauth]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.example.com\"]", key: "oauth.trusted_proxies", want: `"proxy.example.com" is neither an IP address nor a CIDR network`},
		// [limits]
		{name: "instances_per_user negative", file: "[limits]\ninstances_per_user = -1", key: "limits.instances_per_user", want: "must not be negative (got -1; 0 means no limit)"},
		{name: "running_backups negative", file: "[limits]\nrunning_backups = -2", key: "limits.running_backups", want: "must not be negative"},
		{name: "upload_user_instances negative", file: "[limits]\nupload_user_instances = -1", key: "limits.upload_user_instances", want: "must not be negative"},
		{name: "branches_per_user negative", file: "[limits]\nbranches_per_user = -1", key: "limits.branches_per_user", want: "must not be negative (got -1; 0 means no limit)"},
		{name: "upload_user_branches negative", file: "[limits]\nupload_user_branches = -3", key: "limits.upload_user_branches", want: "must not be negative"},
		{name: "instances_per_user string", file: "[limits]\ninstances_per_user = \"10\"", key: "limits.instances_per_user", want: "must be an integer, not a string"},
		{name: "disk_reserve words", file: "[limits]\ndisk_reserve = \"plenty\"", key: "limits.disk_reserve", want: `"plenty" is neither a size nor a percentage`},
		{name: "disk_reserve bad percent", file: "[limits]\ndisk_reserve = \"five%\"", key: "limits.disk_reserve", want: `"five%" is not a percentage`},
		{name: "disk_reserve negative percent", file: "[limits]\ndisk_reserve = \"-5%\"", key: "limits.disk_reserve", want: "is not a percentage"},
		{name: "disk_reserve all of it", file: "[limits]\ndisk_reserve = \"100%\"", key: "limits.disk_reserve", want: "under 100% of the disk (got 100%)"},
		{name: "disk_reserve over 100", file: "[limits]\ndisk_reserve = \"150%\"", key: "limits.disk_reserve", want: "more than 100%"},
		{name: "disk_reserve negative bytes", file: "[limits]\ndisk_reserve = -1", key: "limits.disk_reserve", want: "must not be negative"},
		{name: "backups_total_bytes float", file: "[limits]\nbackups_total_bytes = 0.5", key: "limits.backups_total_bytes", want: "neither a size nor a percentage"},

		// wrong shapes
		{name: "section not a table", file: "http = 5", key: "http", want: "http must be a table ([http])"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content := tt.file + "\n"
			if !tt.full {
				content = minimal(dataPath, content)
			}
			path := writeConfig(t, content)
			c, err := Load(path)
			if err == nil {
				t.Fatalf("Load succeeded (%+v), want an error naming %s", c, tt.key)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("errors.As(%T, *Error) failed: %v", err, err)
			}
			if ce.Key != tt.key {
				t.Errorf("Key = %q, want %q (error %q)", ce.Key, tt.key, msg)
			}
			if !strings.HasPrefix(msg, path+":") {
				t.Errorf("error %q does not start with the file name", msg)
			}
			if !strings.Contains(msg, tt.key) {
				t.Errorf("error %q does not name %s", msg, tt.key)
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not contain %q", msg, tt.want)
			}
			if strings.Contains(msg, "hunter2") {
				t.Errorf("error %q reveals the database password", msg)
			}
		})
	}
}

func TestValidValues(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	key := filepath.Join(dir, "key.pem")
	for _, f := range []string{cert, key} {
		if err := os.WriteFile(f, []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		file  string
		full  bool
		check func(*Config) any // returns the value to compare
		want  any
	}{
		{name: "short secret in development", file: "environment = \"development\"\ndata_path = \"/d\"\nshared_secret = \"dev\"", full: true,
			check: func(c *Config) any { return c.SharedSecret }, want: "dev"},
		{name: "database_url postgres", file: `database_url = "postgres://u:p@db.example.com:5432/sindri?sslmode=require"`,
			check: func(c *Config) any { return c.EmbeddedMetadataDB() }, want: false},
		{name: "database_url of several hosts", file: `database_url = "postgres://u:p@db1.example.com:5432,db2.example.com:5432/sindri?target_session_attrs=read-write"`,
			check: func(c *Config) any { return c.EmbeddedMetadataDB() }, want: false},
		{name: "database_url postgresql socket", file: `database_url = "postgresql:///sindri?host=/var/run/postgresql"`,
			check: func(c *Config) any { return c.DatabaseURL }, want: "postgresql:///sindri?host=/var/run/postgresql"},
		{name: "trusted domain", file: `trusted_user_email_domain = "@example.com"`,
			check: func(c *Config) any { return c.TrustedUserEmailDomain }, want: "@example.com"},
		{name: "public_hostname ipv4", file: `public_hostname = "10.1.2.3"`, check: func(c *Config) any { return c.PublicHostname }, want: "10.1.2.3"},
		{name: "public_hostname ipv6", file: `public_hostname = "2001:db8::1"`, check: func(c *Config) any { return c.PublicHostname }, want: "2001:db8::1"},
		{name: "public_hostname fqdn", file: `public_hostname = "db-1.example.com"`, check: func(c *Config) any { return c.PublicHostname }, want: "db-1.example.com"},
		{name: "insecure listener disabled", file: "[http]\ninsecure_listen_address = \"\"",
			check: func(c *Config) any { return c.HTTP.InsecureListenAddress }, want: ""},
		{name: "listen on ipv6", file: "[http]\nlisten_address = \"[::1]:443\"", check: func(c *Config) any { return c.HTTP.ListenAddress }, want: "[::1]:443"},
		{name: "tls pair", file: "[http]\ntls_certificate = \"" + cert + "\"\ntls_private_key = \"" + key + "\"",
			check: func(c *Config) any { return c.HTTP.TLSPrivateKey }, want: key},
		{name: "max_body_bytes integer", file: "[http]\nmax_body_bytes = 2048", check: func(c *Config) any { return c.HTTP.MaxBodyBytes }, want: ByteSize(2048)},
		{name: "max_body_bytes MiB", file: "[http]\nmax_body_bytes = \"2MiB\"", check: func(c *Config) any { return c.HTTP.MaxBodyBytes }, want: ByteSize(2 << 20)},
		{name: "max_body_bytes MB", file: "[http]\nmax_body_bytes = \"2MB\"", check: func(c *Config) any { return c.HTTP.MaxBodyBytes }, want: ByteSize(2_000_000)},
		{name: "oauth complete", file: "trusted_user_email_domain = \"@example.com\"\n[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\nredirect_url = \"http://localhost:8080/oauth_callback\"",
			check: func(c *Config) any { return c.OAuthEnabled() }, want: true},
		{name: "oauth any e-mail", file: "[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\nredirect_url = \"http://localhost:8080/oauth_callback\"\nallow_any_email = true",
			check: func(c *Config) any { return c.OAuth.AllowAnyEmail }, want: true},
		{name: "login bounds", file: "[oauth]\nmax_pending_logins = 50\nmax_pending_logins_per_address = 49",
			check: func(c *Config) any { return [2]int{c.OAuth.MaxPendingLogins, c.OAuth.MaxPendingLoginsPerAddress} }, want: [2]int{50, 49}},
		{name: "trusted proxies", file: "[oauth]\ntrusted_proxies = [\"10.1.2.3\", \"192.168.0.0/16\", \"::ffff:10.9.9.9\", \"2001:db8::/32\"]",
			check: func(c *Config) any {
				ps, err := c.OAuth.TrustedProxyPrefixes()
				if err != nil {
					return err
				}
				return fmt.Sprint(ps)
			}, want: "[10.1.2.3/32 192.168.0.0/16 10.9.9.9/32 2001:db8::/32]"},
		{name: "scopes replaced, not appended", file: "[oauth]\nscopes = [\"openid\"]", check: func(c *Config) any { return c.OAuth.Scopes }, want: []string{"openid"}},
		{name: "zfs", file: "[storage]\ndriver = \"zfs\"\nzfs_dataset = \"tank/sindri-1\"", check: func(c *Config) any { return c.Storage.ZFSDataset }, want: "tank/sindri-1"},
		{name: "loopback disabled with 0", file: "[storage]\nloopback_size = \"0\"", check: func(c *Config) any { return c.Storage.LoopbackSize }, want: ByteSize(0)},
		{name: "loopback disabled with empty", file: "[storage]\nloopback_size = \"\"", check: func(c *Config) any { return c.Storage.LoopbackSize }, want: ByteSize(0)},
		{name: "loopback 256MiB", file: "[storage]\nloopback_size = \"256MiB\"", check: func(c *Config) any { return c.Storage.LoopbackSize.Int64() }, want: int64(256 << 20)},
		{name: "secrets key file default", file: "", check: func(c *Config) any { return c.SecretsKeyFilePath() }, want: "/var/lib/sindri/secrets.key"},
		{name: "secrets key file elsewhere", file: "secrets_key_file = \"/etc/sindri/secrets.key\"", check: func(c *Config) any { return c.SecretsKeyFilePath() }, want: "/etc/sindri/secrets.key"},
		{name: "loopback file elsewhere", file: "[storage]\nloopback_file = \"/srv/sindri.img\"", check: func(c *Config) any { return c.LoopbackFilePath() }, want: "/srv/sindri.img"},
		{name: "bin_dir", file: "[postgres]\nbin_dir = \"/opt/pg{version}/bin\"", check: func(c *Config) any { return c.BinDir("15") }, want: "/opt/pg15/bin"},
		{name: "port range edges", file: "[postgres]\nmin_port = 1024\nmax_port = 65536",
			check: func(c *Config) any { return [2]int{c.Postgres.MinPort, c.Postgres.MaxPort} }, want: [2]int{1024, 65536}},
		{name: "shared_buffers GB", file: "[postgres]\nshared_buffers = \"1GB\"\nallow_superuser = true",
			check: func(c *Config) any { return c.Postgres.AllowSuperuser }, want: true},
		{name: "durations", file: "[instances]\ndefault_ttl = \"90m\"\nmax_ttl = \"2h\"\nexpiry_interval = \"1s\"",
			check: func(c *Config) any {
				return [3]time.Duration{c.Instances.DefaultTTL, c.Instances.MaxTTL, c.Instances.ExpiryInterval}
			},
			want: [3]time.Duration{90 * time.Minute, 2 * time.Hour, time.Second}},
		{name: "no expiry and no limit", file: "[instances]\ndefault_ttl = \"0\"\nmax_ttl = 0",
			check: func(c *Config) any { return c.Instances.DefaultTTL + c.Instances.MaxTTL }, want: time.Duration(0)},
		{name: "authorized_keys_file", file: "[uploads]\nauthorized_keys_file = \"/home/up/.ssh/authorized_keys\"",
			check: func(c *Config) any { return c.Uploads.AuthorizedKeysFile }, want: "/home/up/.ssh/authorized_keys"},
		{name: "account", file: "[uploads]\naccount = \"db_upload-2\"",
			check: func(c *Config) any { return c.Uploads.Account }, want: "db_upload-2"},
		{name: "disk_reserve bytes", file: "[limits]\ndisk_reserve = \"10GiB\"",
			check: func(c *Config) any { return c.Limits.DiskReserve }, want: SizeOrPercent{Bytes: 10 << 30}},
		{name: "disk_reserve fraction of a percent", file: "[limits]\ndisk_reserve = \"0.5%\"",
			check: func(c *Config) any { return c.Limits.DiskReserve.Of(1 << 40) }, want: int64(1<<40) / 200},
		{name: "disk_reserve off", file: "[limits]\ndisk_reserve = \"0\"",
			check: func(c *Config) any { return c.Limits.DiskReserve.IsZero() }, want: true},
		{name: "backups_total_bytes integer", file: "[limits]\nbackups_total_bytes = 1048576",
			check: func(c *Config) any { return c.Limits.BackupsTotalBytes.Of(1 << 40) }, want: int64(1 << 20)},
		{name: "counts off and upload user held", file: "[limits]\ninstances_per_user = 0\nupload_user_instances = 100",
			check: func(c *Config) any { return [2]int{c.Limits.InstancesPerUser, c.Limits.UploadUserInstances} }, want: [2]int{0, 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content := tt.file + "\n"
			if !tt.full {
				content = minimal("/var/lib/sindri", content)
			}
			c, err := Load(writeConfig(t, content))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := tt.check(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestSeveralProblemsOnePerLine(t *testing.T) {
	path := writeConfig(t, "environment = \"prod\"\nshared_secret = \"x\"\n[postgres]\nuser = \"root\"\n")
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	lines := strings.Split(err.Error(), "\n")
	wantKeys := []string{"environment", "data_path", "shared_secret", "postgres.user"}
	if len(lines) != len(wantKeys) {
		t.Fatalf("got %d lines, want %d: %q", len(lines), len(wantKeys), err)
	}
	for i, k := range wantKeys {
		if !strings.HasPrefix(lines[i], path+": "+k+" ") {
			t.Errorf("line %d = %q, want it to be about %s", i, lines[i], k)
		}
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "environment" {
		t.Errorf("errors.As gave %+v, want the first problem (environment)", ce)
	}
}

func TestSyntaxError(t *testing.T) {
	tests := []struct {
		name, content string
		line          int
	}{
		{"missing value", "data_path = \"/var/lib/sindri\"\nshared_secret = \"" + testSecret + "\"\n\n[http]\nlisten_address =\n", 5},
		{"unterminated string", "data_path = \"/var/lib/sindri\nshared_secret = \"x\"\n", 1},
		{"duplicate key", "data_path = \"/a\"\ndata_path = \"/b\"\n", 2},
		{"duplicate table", "[http]\n[oauth]\n[http]\n", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.content)
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("errors.As(%T) failed: %v", err, err)
			}
			if ce.Line != tt.line {
				t.Errorf("Line = %d, want %d (%v)", ce.Line, tt.line, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, path+":"+strconv.Itoa(tt.line)+": ") {
				t.Errorf("error %q does not start with %s:%d: ", msg, path, tt.line)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			var pe toml.ParseError
			if !errors.As(err, &pe) {
				t.Errorf("underlying toml.ParseError not reachable through Unwrap")
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("errors.As(%T) failed: %v", err, err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(err, fs.ErrNotExist) = false for %v", err)
	}
	if want := path + ": cannot read config file: no such file or directory"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestByteSize(t *testing.T) {
	good := []struct {
		in   string
		want int64
	}{
		{"", 0}, {"0", 0}, {"1048576", 1 << 20}, {"20GiB", 20 << 30}, {"20gib", 20 << 30}, {"20 GiB", 20 << 30},
		{"512MB", 512e6}, {"1.5GiB", 3 << 29}, {"1KiB", 1024}, {"1kB", 1000}, {"1TiB", 1 << 40},
	}
	for _, g := range good {
		got, err := ParseByteSize(g.in)
		if err != nil || int64(got) != g.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", g.in, got, err, g.want)
		}
	}
	for _, in := range []string{"20 gigs", "-5", "1e3", ".5GiB", "GiB", "lots", "9EiB", "99999999999999999999"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		} else if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("ParseByteSize(%q) error %q does not quote the input on one line", in, err)
		}
	}
	for _, s := range []struct {
		n    ByteSize
		want string
	}{{0, "0"}, {20 << 30, "20GiB"}, {1 << 20, "1MiB"}, {512e6, "512MB"}, {1000, "1kB"}, {1025, "1025"}} {
		if got := s.n.String(); got != s.want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(s.n), got, s.want)
		}
		back, err := ParseByteSize(s.n.String())
		if err != nil || back != s.n {
			t.Errorf("round trip of %d: %d, %v", int64(s.n), back, err)
		}
	}
	var b ByteSize
	if err := b.UnmarshalText([]byte("4KiB")); err != nil || b != 4096 {
		t.Errorf("UnmarshalText(4KiB) = %d, %v", b, err)
	}
}

func TestSizeOrPercent(t *testing.T) {
	for _, g := range []struct {
		in   string
		want SizeOrPercent
		str  string
		of   int64 // of a 1000-byte filesystem
	}{
		{"", SizeOrPercent{}, "0", 0}, {"0", SizeOrPercent{}, "0", 0}, {"0%", SizeOrPercent{}, "0", 0},
		{"5%", SizeOrPercent{Percent: 5}, "5%", 50}, {"0.5 %", SizeOrPercent{Percent: 0.5}, "0.5%", 5},
		{"100%", SizeOrPercent{Percent: 100}, "100%", 1000}, {"10GiB", SizeOrPercent{Bytes: 10 << 30}, "10GiB", 10 << 30},
		{"512", SizeOrPercent{Bytes: 512}, "512", 512},
	} {
		got, err := ParseSizeOrPercent(g.in)
		if err != nil || got != g.want {
			t.Errorf("ParseSizeOrPercent(%q) = %+v, %v; want %+v", g.in, got, err, g.want)
			continue
		}
		if s := got.String(); s != g.str {
			t.Errorf("%q: String() = %q, want %q", g.in, s, g.str)
		}
		if n := got.Of(1000); n != g.of {
			t.Errorf("%q: Of(1000) = %d, want %d", g.in, n, g.of)
		}
		if back, err := ParseSizeOrPercent(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q: %+v, %v", g.in, back, err)
		}
	}
	for _, in := range []string{"%", "x%", "-1%", "101%", "NaN%", "Inf%", "lots", "-5", ".5%"} {
		if got, err := ParseSizeOrPercent(in); err == nil {
			t.Errorf("ParseSizeOrPercent(%q) = %+v, want an error", in, got)
		} else if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("ParseSizeOrPercent(%q) error %q does not quote the input on one line", in, err)
		}
	}
}

// --- the example file -----------------------------------------------------

const examplePath = "../../config.toml.example"

func TestExampleLoads(t *testing.T) {
	c, err := Load(examplePath)
	if err != nil {
		t.Fatalf("Load(%s): %v", examplePath, err)
	}
	if c.DataPath == "" || c.SharedSecret == "" {
		t.Errorf("example does not set data_path and shared_secret")
	}
}

// configKeys walks Config's toml tags: "data_path", "http.listen_address", ...
func configKeys(t *testing.T) []string {
	t.Helper()
	var keys []string
	var walk func(typ reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				t.Fatalf("field %s%s has no toml tag", prefix, f.Name)
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) && f.Type != reflect.TypeOf(SizeOrPercent{}) {
				walk(f.Type, prefix+tag+".")
				continue
			}
			keys = append(keys, prefix+tag)
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	return keys
}

var (
	sectionRE = regexp.MustCompile(`^\[([a-z_]+)\]\s*$`)
	keyLineRE = regexp.MustCompile(`^(#\s*)?([a-z_]+)\s*=`)
)

// exampleKeys returns how often each section.key appears in the example,
// set or as a commented-out "# key = value" line.
func exampleKeys(t *testing.T) map[string]int {
	t.Helper()
	f, err := os.Open(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	counts := map[string]int{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := sectionRE.FindStringSubmatch(line); m != nil {
			section = m[1] + "."
			continue
		}
		if m := keyLineRE.FindStringSubmatch(line); m != nil {
			counts[section+m[2]]++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return counts
}

func TestExampleDocumentsEveryKey(t *testing.T) {
	keys := configKeys(t)
	if len(keys) < 30 || !slices.Contains(keys, "postgres.min_port") || !slices.Contains(keys, "data_path") {
		t.Fatalf("configKeys walked the struct wrongly: %q", keys)
	}
	counts := exampleKeys(t)
	for _, k := range keys {
		switch counts[k] {
		case 0:
			t.Errorf("config.toml.example does not mention %s (as a setting or a \"# %s = ...\" line in its section)", k, k[strings.LastIndex(k, ".")+1:])
		case 1:
		default:
			t.Errorf("config.toml.example mentions %s %d times; keep one line per key", k, counts[k])
		}
	}
	for k := range counts {
		if !slices.Contains(keys, k) {
			t.Errorf("config.toml.example mentions %s, which Config does not know", k)
		}
	}
}

// TestExampleDefaultsAreAccurate uncomments every "# key = value" line of
// the example and checks that the result decodes without unknown keys and
// that the values shown equal the defaults (except where the example shows
// what a value looks like).
func TestExampleDefaultsAreAccurate(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	uncomment := regexp.MustCompile(`(?m)^#\s*([a-z_]+\s*=)`)
	uncommented := uncomment.ReplaceAllString(string(data), "$1")
	c, errs := decode("uncommented example", uncommented)
	if c == nil || len(errs) > 0 {
		t.Fatalf("uncommented example does not decode: %v", errors.Join(errs...))
	}

	// Keys whose example value is an illustration, not the default.
	examples := map[string]bool{
		"data_path": true, "shared_secret": true,
		"http.tls_certificate": true, "http.tls_private_key": true,
		"oauth.redirect_url":           true,
		"storage.loopback_file":        true, // derived from data_path
		"secrets_key_file":             true, // derived from data_path
		"uploads.authorized_keys_file": true,
		"fleet.name":                   true,
		"fleet.peer_url":               true,
		"fleet.secret_file":            true,
		"fleet.peer_ca_file":           true,
	}
	def := Default()
	got, want := reflect.ValueOf(c).Elem(), reflect.ValueOf(def).Elem()
	for _, k := range configKeys(t) {
		if examples[k] {
			continue
		}
		g, w := got, want
		for _, part := range strings.Split(k, ".") {
			g, w = fieldByTag(t, g, part), fieldByTag(t, w, part)
		}
		if !reflect.DeepEqual(g.Interface(), w.Interface()) {
			t.Errorf("config.toml.example shows %s = %v, but the default is %v", k, g.Interface(), w.Interface())
		}
	}
	// The derived default shown for loopback_file must match data_path.
	if c.Storage.LoopbackFile != c.DataPath+LoopbackFileSuffix {
		t.Errorf("example loopback_file %q is not data_path + %q", c.Storage.LoopbackFile, LoopbackFileSuffix)
	}
	if c.SecretsKeyFile != filepath.Join(c.DataPath, SecretsKeyFileName) {
		t.Errorf("example secrets_key_file %q is not data_path/%s", c.SecretsKeyFile, SecretsKeyFileName)
	}
}

func fieldByTag(t *testing.T, v reflect.Value, tag string) reflect.Value {
	t.Helper()
	for i := 0; i < v.NumField(); i++ {
		if name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("toml"), ","); name == tag {
			return v.Field(i)
		}
	}
	t.Fatalf("no field with toml tag %q in %s", tag, v.Type())
	return reflect.Value{}
}
