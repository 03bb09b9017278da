// Package config loads and validates sindrid's TOML configuration file.
//
// The keys at the top level and in the [http] and [oauth] sections keep
// the names used by GoCardless's Draupnir, so an existing Draupnir
// configuration needs few changes. config.toml.example at the root of the
// repository documents every key; the doc comments on the fields below
// mirror it.
//
// Load reads a file, applies defaults and validates it. Every problem is
// reported as a *Error whose message is one line naming the key and saying
// what to fix; when a file has several problems they are joined with
// errors.Join (one per line), and errors.As(err, &cfgErr) yields the first.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// Allowed values of Config.Environment.
const (
	EnvProduction  = "production"
	EnvDevelopment = "development"
	EnvTest        = "test"
)

// Allowed values of StorageConfig.Driver.
const (
	DriverAuto  = "auto"
	DriverBTRFS = "btrfs"
	DriverZFS   = "zfs"
)

// Defaults. Default returns a Config holding these.
const (
	DefaultEnvironment                = EnvProduction
	DefaultPublicHostname             = "localhost"
	DefaultListenAddress              = ":8443"
	DefaultInsecureListenAddress      = "127.0.0.1:8080"
	DefaultMaxBodyBytes               = 1 << 20 // 1MiB
	DefaultOAuthAuthURL               = "https://accounts.google.com/o/oauth2/auth"
	DefaultOAuthTokenURL              = "https://oauth2.googleapis.com/token"
	DefaultOAuthUserinfoURL           = "https://openidconnect.googleapis.com/v1/userinfo"
	DefaultMaxPendingLogins           = 1000
	DefaultMaxPendingLoginsPerAddress = 10
	DefaultStorageDriver              = DriverAuto
	DefaultLoopbackSize               = 20 << 30 // 20GiB
	DefaultPostgresBinDir             = postgres.DefaultBinPattern
	DefaultPostgresUser               = "postgres"
	DefaultMinPort                    = 15432
	DefaultMaxPort                    = 16432
	DefaultSharedBuffers              = "32MB"
	DefaultSocketDir                  = "/run/sindri"
	DefaultInstanceTTL                = 24 * time.Hour
	DefaultMaxInstanceTTL             = 168 * time.Hour
	DefaultExpiryInterval             = 30 * time.Second
	DefaultUploadAccount              = "sindri-upload"

	DefaultInstancesPerUser          = 50
	DefaultProtectedInstancesPerUser = 5
	DefaultBranchesPerUser           = 5
	DefaultRunningBackupsPerUser     = 2
	DefaultRunningBackups            = 4

	// LoopbackFileSuffix is appended to data_path to form the default
	// storage.loopback_file.
	LoopbackFileSuffix = ".btrfs.img"
	// SecretsKeyFileName is the default secrets_key_file's name in
	// data_path.
	SecretsKeyFileName = "secrets.key"
	// MinLoopbackSize is the smallest storage.loopback_size accepted
	// (other than 0, which disables the loopback file).
	MinLoopbackSize = 256 << 20 // 256MiB
	// MinSharedSecretLength is the shortest shared_secret accepted outside
	// environment = "development".
	MinSharedSecretLength = 16
)

// DefaultOAuthScopes is the default value of oauth.scopes.
var DefaultOAuthScopes = []string{"openid", "email"}

// Defaults of [limits] that are amounts: see LimitsConfig.
var (
	DefaultBackupsTotalBytes = SizeOrPercent{Percent: 50}
	DefaultDiskReserve       = SizeOrPercent{Percent: 5}
)

// Config is the whole configuration file.
type Config struct {
	// Environment is one of "production" (default), "development" or
	// "test". In development, a short shared_secret is accepted.
	Environment string `toml:"environment"`

	// DataPath is the directory holding everything sindrid stores:
	// images, instances, uploads, backups and (without database_url) the
	// embedded metadata Postgres. Required; must be an absolute path.
	DataPath string `toml:"data_path"`

	// DatabaseURL is a libpq URL (postgres:// or postgresql://) of the
	// metadata database. Empty (default) means sindrid runs its own
	// embedded metadata Postgres under data_path/meta. It may name several
	// hosts (a Patroni cluster's members) with
	// target_session_attrs=read-write: see store.Open.
	DatabaseURL string `toml:"database_url"`

	// SharedSecret authenticates trusted clients (automation) that send
	// it as their access token. Required; at least 16 characters outside
	// environment = "development".
	SharedSecret string `toml:"shared_secret"`

	// TrustedUserEmailDomain, when set (e.g. "@example.com"), is the
	// e-mail domain OAuth users must belong to. Must start with "@". With
	// OAuth on, leaving it empty needs oauth.allow_any_email = true.
	TrustedUserEmailDomain string `toml:"trusted_user_email_domain"`

	// PublicHostname is the host name or IP address clients use to reach
	// instances; it is put into the connection details handed out.
	// Default "localhost". No scheme, port or slash.
	PublicHostname string `toml:"public_hostname"`

	// SecretsKeyFile is the key file that seals the secrets kept in the
	// metadata database (instances' passwords and private keys, pending
	// pulls' source_url). Default: data_path/secrets.key (Load fills it
	// in; see SecretsKeyFilePath). Made (0600, root) at the first start;
	// must be absolute and not under data_path/meta,
	// data_path/image_uploads or data_path/backups.
	SecretsKeyFile string `toml:"secrets_key_file"`

	HTTP      HTTPConfig      `toml:"http"`
	OAuth     OAuthConfig     `toml:"oauth"`
	Storage   StorageConfig   `toml:"storage"`
	Postgres  PostgresConfig  `toml:"postgres"`
	Instances InstancesConfig `toml:"instances"`
	Backups   BackupsConfig   `toml:"backups"`
	Sources   SourcesConfig   `toml:"sources"`
	Uploads   UploadsConfig   `toml:"uploads"`
	Limits    LimitsConfig    `toml:"limits"`
	Fleet     FleetConfig     `toml:"fleet"`

	// file is the path Load read, used to prefix error messages.
	file string
}

// HTTPConfig is the [http] section: the API server.
type HTTPConfig struct {
	// ListenAddress is the host:port the HTTPS API listens on
	// (default ":8443"). Plain HTTP when no TLS certificate is set.
	ListenAddress string `toml:"listen_address"`

	// InsecureListenAddress is an extra plain-HTTP host:port (default
	// "127.0.0.1:8080", meant for local clients). Empty disables it.
	InsecureListenAddress string `toml:"insecure_listen_address"`

	// TLSCertificate is the PEM certificate (chain) file. Set both
	// tls_certificate and tls_private_key or neither; the files must exist
	// and be readable.
	TLSCertificate string `toml:"tls_certificate"`

	// TLSPrivateKey is the PEM private key file of TLSCertificate.
	TLSPrivateKey string `toml:"tls_private_key"`

	// MaxBodyBytes limits the size of JSON request bodies (default 1MiB).
	// A size such as "1MiB" or a number of bytes.
	MaxBodyBytes ByteSize `toml:"max_body_bytes"`
}

// OAuthConfig is the [oauth] section: login of human users. OAuth is
// enabled when client_id is set; client_secret and redirect_url are then
// required.
type OAuthConfig struct {
	// ClientID is the OAuth client ID. Empty (default) disables OAuth.
	ClientID string `toml:"client_id"`

	// ClientSecret is the OAuth client secret.
	ClientSecret string `toml:"client_secret"`

	// RedirectURL is the absolute http(s) URL the provider redirects to
	// after login, e.g. "https://sindri.example.com:8443/oauth_callback".
	RedirectURL string `toml:"redirect_url"`

	// AuthURL is the provider's authorization endpoint (default Google's).
	AuthURL string `toml:"auth_url"`

	// TokenURL is the provider's token endpoint (default Google's).
	TokenURL string `toml:"token_url"`

	// UserinfoURL is the provider's OpenID Connect userinfo endpoint,
	// used to learn the user's e-mail address (default Google's).
	UserinfoURL string `toml:"userinfo_url"`

	// Scopes requested at login (default ["openid", "email"]).
	Scopes []string `toml:"scopes"`

	// AllowAnyEmail lets every account the provider vouches for (with a
	// verified address) log in when trusted_user_email_domain is empty.
	// Default false: OAuth with an empty domain is a configuration error,
	// since with Google as the provider it admits any Google account.
	AllowAnyEmail bool `toml:"allow_any_email"`

	// MaxPendingLogins bounds the logins in progress (default 1000);
	// MaxPendingLoginsPerAddress those begun from one client address, an
	// IPv4 address or an IPv6 /64 (default 10). Beyond them a login is
	// refused with 429; none in progress is dropped. The per-address
	// bound must be below the other, so one address never takes them all.
	MaxPendingLogins           int `toml:"max_pending_logins"`
	MaxPendingLoginsPerAddress int `toml:"max_pending_logins_per_address"`

	// TrustedProxies are the addresses or CIDR networks of reverse
	// proxies in front of sindrid whose X-Forwarded-For, X-Forwarded-Host
	// and X-Forwarded-Proto name the client. Default none: the client is
	// the connection's address and those headers are ignored.
	TrustedProxies []string `toml:"trusted_proxies"`
}

// TrustedProxyPrefixes parses TrustedProxies; a bare address is a
// network of one.
func (o *OAuthConfig) TrustedProxyPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range o.TrustedProxies {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("oauth.trusted_proxies: %q is neither an IP address nor a CIDR network such as \"10.0.0.0/8\"", s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// StorageConfig is the [storage] section: where images and instances live.
type StorageConfig struct {
	// Driver is "auto" (default: use whatever file system data_path is
	// on, or the loopback BTRFS file), "btrfs" or "zfs".
	Driver string `toml:"driver"`

	// ZFSDataset is the dataset holding images and instances, e.g.
	// "tank/sindri". Required when driver = "zfs".
	ZFSDataset string `toml:"zfs_dataset"`

	// LoopbackSize is the size of the embedded loopback BTRFS file
	// created when data_path is on neither BTRFS nor ZFS (default
	// "20GiB"). "0" or "" disables it; at least 256MiB when set.
	LoopbackSize ByteSize `toml:"loopback_size"`

	// LoopbackFile is the path of that loopback file. Default: data_path
	// followed by ".btrfs.img". Must be absolute and not inside data_path.
	LoopbackFile string `toml:"loopback_file"`
}

// PostgresConfig is the [postgres] section: the postmasters of instances.
type PostgresConfig struct {
	// BinDir is the directory of the Postgres binaries (default
	// "/usr/lib/postgresql/{version}/bin"); "{version}" is replaced by the
	// major version of each data directory. See Config.BinDir.
	BinDir string `toml:"bin_dir"`

	// User is the OS user postmasters run as (default "postgres"). Must
	// not be root.
	User string `toml:"user"`

	// MinPort and MaxPort bound the ports given to instances: the range is
	// [min_port, max_port) (defaults 15432 and 16432), with
	// 1024 <= min_port < max_port <= 65536.
	MinPort int `toml:"min_port"`
	MaxPort int `toml:"max_port"`

	// SharedBuffers is passed to each instance's Postgres as
	// shared_buffers (default "32MB"), in Postgres's own units
	// (B, kB, MB, GB, TB). Small because a host runs dozens of clones and
	// the page cache, shared by all clones of an image, does the caching.
	SharedBuffers string `toml:"shared_buffers"`

	// AllowSuperuser lets instance users be Postgres superusers
	// (default false).
	AllowSuperuser bool `toml:"allow_superuser"`

	// SocketDir holds each instance's private unix socket directory
	// (default "/run/sindri"). Keep it short: a socket path has at most
	// 107 bytes.
	SocketDir string `toml:"socket_dir"`
}

// InstancesConfig is the [instances] section: lifetime of clones.
type InstancesConfig struct {
	// DefaultTTL is how long an instance lives when its creator does not
	// say (Go duration, default "24h"); "0" means no expiry.
	DefaultTTL time.Duration `toml:"default_ttl"`

	// MaxTTL is the longest lifetime a client may ask for (default
	// "168h"); "0" means no limit. default_ttl must not exceed it.
	MaxTTL time.Duration `toml:"max_ttl"`

	// ExpiryInterval is how often expired instances are destroyed
	// (default "30s", at least "1s").
	ExpiryInterval time.Duration `toml:"expiry_interval"`
}

// BackupsConfig is the [backups] section: how long backups are kept.
type BackupsConfig struct {
	// MaxAge is how long a finished backup (done or failed) is kept
	// before the expiry sweep deletes it and its archive (Go duration,
	// default "0": kept until deleted).
	MaxAge time.Duration `toml:"max_age"`
}

// SourcesConfig is the [sources] section: how sources' refreshes are
// retried and their standbys looked after.
type SourcesConfig struct {
	// RetryMin is the wait before a failed refresh is tried again,
	// doubled with each failure in a row up to RetryMax (defaults "30s"
	// and "1h").
	RetryMin time.Duration `toml:"retry_min"`
	RetryMax time.Duration `toml:"retry_max"`
	// StandbyResyncAfter is how long a replica-mode source's standby may
	// go without streaming before it is made again from a new base backup
	// (default "10m").
	StandbyResyncAfter time.Duration `toml:"standby_resync_after"`
}

// Defaults of [sources].
const (
	DefaultSourceRetryMin           = 30 * time.Second
	DefaultSourceRetryMax           = time.Hour
	DefaultSourceStandbyResyncAfter = 10 * time.Minute
)

// UploadsConfig is the [uploads] section: uploads of data directories.
type UploadsConfig struct {
	// AuthorizedKeysFile is the authorized_keys file of the account that
	// uploads data directories with scp (optional; absolute path).
	AuthorizedKeysFile string `toml:"authorized_keys_file"`
	// Account is the OS account that uploads data directories with scp
	// (default "sindri-upload"): each pending image's upload directory is
	// made its own. Not root.
	Account string `toml:"account"`
}

// LimitsConfig is the [limits] section: how much one user may hold, and
// how much disk is kept free. A count of 0 means no limit. Counts are per
// owner: an OAuth user's e-mail, a named API token, or the upload user
// (the shared secret), whom only the upload_user_* keys and disk_reserve
// hold.
type LimitsConfig struct {
	// InstancesPerUser is how many instances one user may have (default
	// 50: a twentieth of the default port range).
	InstancesPerUser int `toml:"instances_per_user"`

	// ProtectedInstancesPerUser is how many of them may be protected
	// (default 5): a protected instance never expires.
	ProtectedInstancesPerUser int `toml:"protected_instances_per_user"`

	// BranchesPerUser is how many branches (images of their instances)
	// one user may have, whatever their status (default 5): each one is a
	// copy of an instance's data that it no longer shares once either side
	// writes.
	BranchesPerUser int `toml:"branches_per_user"`

	// RunningBackupsPerUser is how many backups one user may have being
	// written at once (default 2).
	RunningBackupsPerUser int `toml:"running_backups_per_user"`

	// RunningBackups is how many backups may be written at once in all,
	// the upload user's included (default 4).
	RunningBackups int `toml:"running_backups"`

	// BackupsTotalBytes is how much disk the backups' archives may take
	// together before new backups are refused: a size, or a percentage of
	// the storage filesystem (default "50%"; "0": no limit).
	BackupsTotalBytes SizeOrPercent `toml:"backups_total_bytes"`

	// DiskReserve is the free space kept on the storage filesystem: below
	// it, new instances, uploads, finalises, restores, pulls and backups
	// are refused (running instances are never touched). A size, or a
	// percentage of the filesystem (default "5%"; "0": none); under 100%.
	DiskReserve SizeOrPercent `toml:"disk_reserve"`

	// UploadUserInstances, UploadUserProtectedInstances,
	// UploadUserBranches and UploadUserRunningBackups limit the upload
	// user (default 0: no limit).
	UploadUserInstances          int `toml:"upload_user_instances"`
	UploadUserProtectedInstances int `toml:"upload_user_protected_instances"`
	UploadUserBranches           int `toml:"upload_user_branches"`
	UploadUserRunningBackups     int `toml:"upload_user_running_backups"`
}

// Default returns a Config holding every default. DataPath and
// SharedSecret are empty, so it does not validate until they are set.
// LoopbackFile is empty and means data_path + ".btrfs.img" (Load fills it
// in; see LoopbackFilePath).
func Default() *Config {
	return &Config{
		Environment:    DefaultEnvironment,
		PublicHostname: DefaultPublicHostname,
		HTTP: HTTPConfig{
			ListenAddress:         DefaultListenAddress,
			InsecureListenAddress: DefaultInsecureListenAddress,
			MaxBodyBytes:          DefaultMaxBodyBytes,
		},
		OAuth: OAuthConfig{
			AuthURL:     DefaultOAuthAuthURL,
			TokenURL:    DefaultOAuthTokenURL,
			UserinfoURL: DefaultOAuthUserinfoURL,
			Scopes:      slices.Clone(DefaultOAuthScopes),

			MaxPendingLogins:           DefaultMaxPendingLogins,
			MaxPendingLoginsPerAddress: DefaultMaxPendingLoginsPerAddress,
			TrustedProxies:             []string{},
		},
		Storage: StorageConfig{
			Driver:       DefaultStorageDriver,
			LoopbackSize: DefaultLoopbackSize,
		},
		Postgres: PostgresConfig{
			BinDir:        DefaultPostgresBinDir,
			User:          DefaultPostgresUser,
			MinPort:       DefaultMinPort,
			MaxPort:       DefaultMaxPort,
			SharedBuffers: DefaultSharedBuffers,
			SocketDir:     DefaultSocketDir,
		},
		Instances: InstancesConfig{
			DefaultTTL:     DefaultInstanceTTL,
			MaxTTL:         DefaultMaxInstanceTTL,
			ExpiryInterval: DefaultExpiryInterval,
		},
		Sources: SourcesConfig{
			RetryMin:           DefaultSourceRetryMin,
			RetryMax:           DefaultSourceRetryMax,
			StandbyResyncAfter: DefaultSourceStandbyResyncAfter,
		},
		Uploads: UploadsConfig{
			Account: DefaultUploadAccount,
		},
		Limits: LimitsConfig{
			InstancesPerUser:          DefaultInstancesPerUser,
			ProtectedInstancesPerUser: DefaultProtectedInstancesPerUser,
			BranchesPerUser:           DefaultBranchesPerUser,
			RunningBackupsPerUser:     DefaultRunningBackupsPerUser,
			RunningBackups:            DefaultRunningBackups,
			BackupsTotalBytes:         DefaultBackupsTotalBytes,
			DiskReserve:               DefaultDiskReserve,
		},
		Fleet: FleetConfig{
			HeartbeatInterval: DefaultHeartbeatInterval,
			DownTimeout:       DefaultDownTimeout,
		},
	}
}

// Load reads the TOML file at path, applies defaults and validates it.
// Errors are *Error values (joined with errors.Join when there are
// several), each one line.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		cause := err
		var pe *fs.PathError
		if errors.As(err, &pe) {
			cause = pe.Err
		}
		return nil, &Error{File: path, Msg: "cannot read config file: " + oneLine(cause.Error()), Err: err}
	}
	c, errs := decode(path, string(data))
	if c == nil {
		return nil, errors.Join(errs...)
	}
	c.normalize()
	if err := c.Validate(); err != nil {
		errs = append(errs, unjoin(err)...)
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	return c, nil
}

// durationKeys are the keys decoded into time.Duration.
var durationKeys = map[string]bool{
	"instances.default_ttl":        true,
	"instances.max_ttl":            true,
	"instances.expiry_interval":    true,
	"backups.max_age":              true,
	"sources.retry_min":            true,
	"sources.retry_max":            true,
	"sources.standby_resync_after": true,
	"fleet.heartbeat_interval":     true,
	"fleet.down_timeout":           true,
}

// decode parses data over Default() and reports unknown keys and integer
// durations. It returns a nil Config when the file could not be decoded.
func decode(file, data string) (*Config, []error) {
	c := Default()
	c.file = file
	md, err := toml.Decode(data, c)
	if err != nil {
		return nil, []error{decodeError(file, err)}
	}

	var errs []error
	undecoded := md.Undecoded()
	seen := make(map[string]bool, len(undecoded))
	for _, k := range undecoded {
		seen[k.String()] = true
	}
outer:
	for _, k := range undecoded {
		// Report an unknown table once, not each key inside it.
		for i := 1; i < len(k); i++ {
			if seen[k[:i].String()] {
				continue outer
			}
		}
		errs = append(errs, &Error{File: file, Key: k.String(), Msg: fmt.Sprintf("unknown key %q", k.String())})
	}

	// BurntSushi/toml decodes a TOML integer into a time.Duration as
	// nanoseconds, which is never what is meant (except 0).
	for _, d := range []struct {
		section, name string
		val           time.Duration
	}{
		{"instances", "default_ttl", c.Instances.DefaultTTL},
		{"instances", "max_ttl", c.Instances.MaxTTL},
		{"instances", "expiry_interval", c.Instances.ExpiryInterval},
		{"backups", "max_age", c.Backups.MaxAge},
		{"sources", "retry_min", c.Sources.RetryMin},
		{"sources", "retry_max", c.Sources.RetryMax},
		{"sources", "standby_resync_after", c.Sources.StandbyResyncAfter},
		{"fleet", "heartbeat_interval", c.Fleet.HeartbeatInterval},
		{"fleet", "down_timeout", c.Fleet.DownTimeout},
	} {
		if md.Type(d.section, d.name) == "Integer" && d.val != 0 {
			key := d.section + "." + d.name
			errs = append(errs, &Error{File: file, Key: key, Msg: fmt.Sprintf(
				"%s must be a duration string such as \"24h\", \"90m\" or \"30s\" (got the integer %d)", key, int64(d.val))})
		}
	}
	return c, errs
}

var decodeErrRE = regexp.MustCompile(`^toml: line (\d+)(?: \(last key "([^"]*)"\))?: (.*)$`)

var incompatibleRE = regexp.MustCompile(`^incompatible types: TOML value has type (\w+); destination has type (\w+)$`)

// decodeError turns an error of toml.Decode into a one-line *Error.
func decodeError(file string, err error) *Error {
	e := &Error{File: file, Err: err}
	var pe toml.ParseError
	if errors.As(err, &pe) {
		e.Line = pe.Position.Line
		e.Key = pe.LastKey
		e.Msg = oneLine(pe.Message)
	} else if m := decodeErrRE.FindStringSubmatch(oneLine(err.Error())); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Key = m[2]
		e.Msg = m[3]
	} else {
		e.Msg = oneLine(strings.TrimPrefix(err.Error(), "toml: "))
		return e
	}
	if e.Key == "" {
		return e
	}
	switch msg := e.Msg; {
	case durationKeys[e.Key] && strings.HasPrefix(msg, "invalid duration: "):
		e.Msg = fmt.Sprintf("%s: %s is not a duration (use a Go duration such as \"24h\", \"90m\" or \"30s\")",
			e.Key, strings.TrimPrefix(msg, "invalid duration: "))
	case incompatibleRE.MatchString(msg):
		m := incompatibleRE.FindStringSubmatch(msg)
		e.Msg = fmt.Sprintf("%s must be %s, not %s", e.Key, typeName(m[2]), typeName(m[1]))
	case strings.Contains(msg, "expected table"):
		e.Msg = fmt.Sprintf("%s must be a table ([%s])", e.Key, e.Key)
	default:
		e.Msg = e.Key + ": " + msg
	}
	return e
}

func typeName(t string) string {
	switch t {
	case "integer", "int64":
		return "an integer"
	case "float", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool", "boolean":
		return "true or false"
	case "slice", "array":
		return "an array"
	case "map", "struct":
		return "a table"
	}
	return "a " + t
}

// normalize cleans paths and fills in defaults that depend on other keys.
func (c *Config) normalize() {
	if c.DataPath != "" {
		c.DataPath = filepath.Clean(c.DataPath)
	}
	// Derive loopback_file only from a usable data_path, so that a bad
	// data_path is reported once.
	if c.Storage.LoopbackFile == "" && filepath.IsAbs(c.DataPath) && c.DataPath != "/" {
		c.Storage.LoopbackFile = c.DataPath + LoopbackFileSuffix
	}
	if c.SecretsKeyFile == "" && filepath.IsAbs(c.DataPath) && c.DataPath != "/" {
		c.SecretsKeyFile = filepath.Join(c.DataPath, SecretsKeyFileName)
	}
}

// BinDir returns postgres.bin_dir with "{version}" replaced by major
// (e.g. "16").
func (c *Config) BinDir(major string) string {
	return postgres.BinPath(c.Postgres.BinDir, major)
}

// MetaDir is data_path/meta, home of the embedded metadata Postgres.
func (c *Config) MetaDir() string { return filepath.Join(c.DataPath, "meta") }

// UploadsDir is data_path/image_uploads, where uploaded data directories
// arrive.
func (c *Config) UploadsDir() string { return filepath.Join(c.DataPath, "image_uploads") }

// BackupsDir is data_path/backups.
func (c *Config) BackupsDir() string { return filepath.Join(c.DataPath, "backups") }

// LoopbackFilePath is storage.loopback_file, or its default
// data_path + ".btrfs.img" when empty ("" when data_path is empty too).
func (c *Config) LoopbackFilePath() string {
	if c.Storage.LoopbackFile != "" || c.DataPath == "" {
		return c.Storage.LoopbackFile
	}
	return filepath.Clean(c.DataPath) + LoopbackFileSuffix
}

// SecretsKeyFilePath is secrets_key_file, or its default
// data_path/secrets.key when empty.
func (c *Config) SecretsKeyFilePath() string {
	if c.SecretsKeyFile != "" || c.DataPath == "" {
		return c.SecretsKeyFile
	}
	return filepath.Join(c.DataPath, SecretsKeyFileName)
}

// EmbeddedMetadataDB reports whether sindrid runs its own metadata
// Postgres (database_url is empty).
func (c *Config) EmbeddedMetadataDB() bool { return c.DatabaseURL == "" }

// OAuthEnabled reports whether oauth.client_id is set.
func (c *Config) OAuthEnabled() bool { return c.OAuth.ClientID != "" }

// Validate checks every value. It returns nil, a *Error, or several
// *Error joined with errors.Join (one per line, in file order).
func (c *Config) Validate() error {
	v := &validator{file: c.file}
	c.validateTop(v)
	c.validateHTTP(v)
	c.validateOAuth(v)
	c.validateStorage(v)
	c.validatePostgres(v)
	c.validateInstances(v)
	if c.Backups.MaxAge < 0 {
		v.errorf("backups.max_age", "backups.max_age must not be negative (got %q; 0 keeps backups until they are deleted)", c.Backups.MaxAge.String())
	}
	c.validateSources(v)
	c.validateUploads(v)
	c.validateLimits(v)
	c.validateFleet(v)
	return joinErrors(v.errs)
}

type validator struct {
	file string
	errs []error
}

func (v *validator) errorf(key, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.file, Key: key, Msg: oneLine(fmt.Sprintf(format, args...))})
}

func (c *Config) validateTop(v *validator) {
	switch c.Environment {
	case EnvProduction, EnvDevelopment, EnvTest:
	default:
		v.errorf("environment", "environment must be %q, %q or %q (got %q)", EnvProduction, EnvDevelopment, EnvTest, c.Environment)
	}

	switch {
	case c.DataPath == "":
		v.errorf("data_path", "data_path is required (the directory where sindrid keeps its data, e.g. \"/var/lib/sindri\")")
	case !filepath.IsAbs(c.DataPath):
		v.errorf("data_path", "data_path must be an absolute path (got %q)", c.DataPath)
	case filepath.Clean(c.DataPath) == "/":
		v.errorf("data_path", "data_path must not be the root directory; use a directory such as \"/var/lib/sindri\"")
	}

	if c.DatabaseURL != "" {
		// Never echo the URL: it may hold a password.
		u, err := url.Parse(c.DatabaseURL)
		switch {
		case err != nil:
			v.errorf("database_url", "database_url is not a valid URL; use postgres://user:password@host:port/dbname or leave it empty for the embedded database")
		case u.Scheme != "postgres" && u.Scheme != "postgresql":
			v.errorf("database_url", "database_url must start with postgres:// or postgresql:// (got scheme %q)", u.Scheme)
		}
	}

	switch {
	case c.SharedSecret == "":
		v.errorf("shared_secret", "shared_secret is required (generate one with: openssl rand -hex 32)")
	case c.Environment != EnvDevelopment && len(c.SharedSecret) < MinSharedSecretLength:
		v.errorf("shared_secret", "shared_secret must be at least %d characters outside environment = %q (got %d; generate one with: openssl rand -hex 32)",
			MinSharedSecretLength, EnvDevelopment, len(c.SharedSecret))
	}

	if d := c.TrustedUserEmailDomain; d != "" {
		rest, ok := strings.CutPrefix(d, "@")
		if !ok || rest == "" || strings.ContainsAny(rest, "@ \t") || !validHostname(rest) {
			v.errorf("trusted_user_email_domain", "trusted_user_email_domain must be an e-mail domain starting with \"@\", such as \"@example.com\" (got %q)", d)
		}
	}

	if f := c.SecretsKeyFile; f != "" {
		if !filepath.IsAbs(f) {
			v.errorf("secrets_key_file", "secrets_key_file must be an absolute path (got %q)", f)
		} else if filepath.IsAbs(c.DataPath) {
			for _, dir := range []string{c.MetaDir(), c.UploadsDir(), c.BackupsDir()} {
				if isWithin(dir, f) {
					v.errorf("secrets_key_file", "secrets_key_file must not be inside %s, which others can read (got %q)", dir, f)
					break
				}
			}
		}
	}

	if h := c.PublicHostname; h == "" {
		v.errorf("public_hostname", "public_hostname must not be empty (the host name clients use to reach instances; default %q)", DefaultPublicHostname)
	} else if net.ParseIP(h) == nil && !validHostname(h) {
		v.errorf("public_hostname", "public_hostname must be a bare host name or IP address, without scheme, port or path (got %q)", h)
	}
}

func (c *Config) validateHTTP(v *validator) {
	if c.HTTP.ListenAddress == "" {
		v.errorf("http.listen_address", "http.listen_address must not be empty (a host:port such as %q)", DefaultListenAddress)
	} else if msg := checkHostPort(c.HTTP.ListenAddress); msg != "" {
		v.errorf("http.listen_address", "http.listen_address %s (got %q)", msg, c.HTTP.ListenAddress)
	}
	if a := c.HTTP.InsecureListenAddress; a != "" {
		if msg := checkHostPort(a); msg != "" {
			v.errorf("http.insecure_listen_address", "http.insecure_listen_address %s, or empty to disable it (got %q)", msg, a)
		}
	}

	cert, key := c.HTTP.TLSCertificate, c.HTTP.TLSPrivateKey
	switch {
	case cert != "" && key == "":
		v.errorf("http.tls_private_key", "http.tls_private_key must be set when http.tls_certificate is set")
	case cert == "" && key != "":
		v.errorf("http.tls_certificate", "http.tls_certificate must be set when http.tls_private_key is set")
	}
	if cert != "" {
		if msg := checkReadableFile(cert); msg != "" {
			v.errorf("http.tls_certificate", "http.tls_certificate %q %s", cert, msg)
		}
	}
	if key != "" {
		if msg := checkReadableFile(key); msg != "" {
			v.errorf("http.tls_private_key", "http.tls_private_key %q %s", key, msg)
		}
	}

	if c.HTTP.MaxBodyBytes <= 0 {
		v.errorf("http.max_body_bytes", "http.max_body_bytes must be a positive size such as \"1MiB\" (got %d)", int64(c.HTTP.MaxBodyBytes))
	}
}

func (c *Config) validateOAuth(v *validator) {
	o := &c.OAuth
	if o.ClientID != "" {
		if o.ClientSecret == "" {
			v.errorf("oauth.client_secret", "oauth.client_secret is required when oauth.client_id is set")
		}
		if o.RedirectURL == "" {
			v.errorf("oauth.redirect_url", "oauth.redirect_url is required when oauth.client_id is set (e.g. \"https://sindri.example.com:8443/oauth_callback\")")
		}
		for _, f := range []struct{ key, val string }{
			{"oauth.auth_url", o.AuthURL}, {"oauth.token_url", o.TokenURL}, {"oauth.userinfo_url", o.UserinfoURL},
		} {
			if f.val == "" {
				v.errorf(f.key, "%s is required when oauth.client_id is set", f.key)
			}
		}
		if len(o.Scopes) == 0 {
			v.errorf("oauth.scopes", "oauth.scopes must not be empty when oauth.client_id is set (e.g. [\"openid\", \"email\"])")
		}
		if c.TrustedUserEmailDomain == "" && !o.AllowAnyEmail {
			v.errorf("trusted_user_email_domain", "trusted_user_email_domain is empty, so the OAuth login would let in any account the provider knows (with Google, anybody's): set trusted_user_email_domain (e.g. \"@example.com\"), or set oauth.allow_any_email = true to accept every verified address")
		}
	} else if o.ClientSecret != "" {
		v.errorf("oauth.client_id", "oauth.client_id must be set when oauth.client_secret is set")
	}
	for _, f := range []struct{ key, val string }{
		{"oauth.redirect_url", o.RedirectURL}, {"oauth.auth_url", o.AuthURL},
		{"oauth.token_url", o.TokenURL}, {"oauth.userinfo_url", o.UserinfoURL},
	} {
		if f.val != "" && !isHTTPURL(f.val) {
			v.errorf(f.key, "%s must be an absolute http:// or https:// URL (got %q)", f.key, f.val)
		}
	}
	for _, s := range o.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
			v.errorf("oauth.scopes", "oauth.scopes must be non-empty words without spaces (got %q)", s)
			break
		}
	}
	if o.AllowAnyEmail && c.TrustedUserEmailDomain != "" {
		v.errorf("oauth.allow_any_email", "oauth.allow_any_email = true contradicts trusted_user_email_domain = %q: remove one of them", c.TrustedUserEmailDomain)
	}
	switch {
	case o.MaxPendingLogins < 2:
		v.errorf("oauth.max_pending_logins", "oauth.max_pending_logins must be at least 2 (got %d; default %d)", o.MaxPendingLogins, DefaultMaxPendingLogins)
	case o.MaxPendingLoginsPerAddress < 1 || o.MaxPendingLoginsPerAddress >= o.MaxPendingLogins:
		v.errorf("oauth.max_pending_logins_per_address", "oauth.max_pending_logins_per_address must be at least 1 and below oauth.max_pending_logins (%d), so that one address never takes every slot (got %d; default %d)",
			o.MaxPendingLogins, o.MaxPendingLoginsPerAddress, DefaultMaxPendingLoginsPerAddress)
	}
	if _, err := o.TrustedProxyPrefixes(); err != nil {
		v.errorf("oauth.trusted_proxies", "%s", err.Error())
	}
}

var zfsComponentRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]+$`)

func (c *Config) validateStorage(v *validator) {
	s := &c.Storage
	switch s.Driver {
	case DriverAuto, DriverBTRFS, DriverZFS:
	default:
		v.errorf("storage.driver", "storage.driver must be %q, %q or %q (got %q)", DriverAuto, DriverBTRFS, DriverZFS, s.Driver)
	}

	if s.ZFSDataset == "" {
		if s.Driver == DriverZFS {
			v.errorf("storage.zfs_dataset", "storage.zfs_dataset is required when storage.driver = %q (a dataset such as \"tank/sindri\")", DriverZFS)
		}
	} else if msg := checkZFSDataset(s.ZFSDataset); msg != "" {
		v.errorf("storage.zfs_dataset", "storage.zfs_dataset must be a dataset name such as \"tank/sindri\": %s (got %q)", msg, s.ZFSDataset)
	}

	if s.LoopbackSize < 0 {
		v.errorf("storage.loopback_size", "storage.loopback_size must not be negative (got %d)", int64(s.LoopbackSize))
	} else if s.LoopbackSize > 0 && s.LoopbackSize < MinLoopbackSize {
		v.errorf("storage.loopback_size", "storage.loopback_size must be at least 256MiB, or 0 to disable the loopback file (got %s)", s.LoopbackSize)
	}

	if f := s.LoopbackFile; f != "" {
		if !filepath.IsAbs(f) {
			v.errorf("storage.loopback_file", "storage.loopback_file must be an absolute path (got %q)", f)
		} else if filepath.IsAbs(c.DataPath) && isWithin(c.DataPath, f) {
			v.errorf("storage.loopback_file", "storage.loopback_file must not be inside data_path %q (got %q)", c.DataPath, f)
		}
	}
}

func checkZFSDataset(name string) string {
	switch {
	case strings.HasPrefix(name, "/"):
		return "no leading \"/\""
	case strings.HasSuffix(name, "/"):
		return "no trailing \"/\""
	case strings.Contains(name, "@"):
		return "no \"@\" (that names a snapshot)"
	case strings.Contains(name, "#"):
		return "no \"#\" (that names a bookmark)"
	case strings.ContainsAny(name, " \t\r\n"):
		return "no spaces"
	}
	for i, part := range strings.Split(name, "/") {
		switch {
		case part == "":
			return "no empty component (\"//\")"
		case part == "." || part == "..":
			return "no \".\" or \"..\" component"
		case !zfsComponentRE.MatchString(part):
			return "only letters, digits and _ - . : in each component"
		case i == 0 && !(part[0] >= 'A' && part[0] <= 'Z' || part[0] >= 'a' && part[0] <= 'z'):
			return "the pool name must start with a letter"
		}
	}
	if strings.Contains(name, "..") {
		return "no \"..\""
	}
	return ""
}

var sharedBuffersRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?\s*(B|kB|MB|GB|TB)?$`)

func (c *Config) validatePostgres(v *validator) {
	p := &c.Postgres
	if p.BinDir == "" {
		v.errorf("postgres.bin_dir", "postgres.bin_dir must not be empty (default %q)", DefaultPostgresBinDir)
	} else if !filepath.IsAbs(p.BinDir) {
		v.errorf("postgres.bin_dir", "postgres.bin_dir must be an absolute path (got %q)", p.BinDir)
	}

	switch p.User {
	case "":
		v.errorf("postgres.user", "postgres.user must not be empty (the OS user postmasters run as; default %q)", DefaultPostgresUser)
	case "root", "0":
		v.errorf("postgres.user", "postgres.user must not be root (Postgres refuses to run as root; default %q)", DefaultPostgresUser)
	}

	portsOK := true
	if p.MinPort < 1024 || p.MinPort > 65535 {
		v.errorf("postgres.min_port", "postgres.min_port must be between 1024 and 65535 (got %d)", p.MinPort)
		portsOK = false
	}
	if p.MaxPort < 1025 || p.MaxPort > 65536 {
		v.errorf("postgres.max_port", "postgres.max_port must be between 1025 and 65536 (got %d; the range excludes max_port)", p.MaxPort)
		portsOK = false
	}
	if portsOK && p.MinPort >= p.MaxPort {
		v.errorf("postgres.min_port", "postgres.min_port must be below postgres.max_port (got %d and %d)", p.MinPort, p.MaxPort)
	}

	if !filepath.IsAbs(p.SocketDir) || len(p.SocketDir) > 80 {
		v.errorf("postgres.socket_dir", "postgres.socket_dir must be an absolute path of at most 80 bytes (a unix socket path has at most 107) (got %q)", p.SocketDir)
	}
	if p.SharedBuffers == "" {
		v.errorf("postgres.shared_buffers", "postgres.shared_buffers must not be empty (default %q)", DefaultSharedBuffers)
	} else if !sharedBuffersRE.MatchString(p.SharedBuffers) {
		v.errorf("postgres.shared_buffers", "postgres.shared_buffers must be a Postgres memory size such as \"32MB\" (units B, kB, MB, GB, TB; case matters) (got %q)", p.SharedBuffers)
	}
}

func (c *Config) validateInstances(v *validator) {
	in := &c.Instances
	if in.DefaultTTL < 0 {
		v.errorf("instances.default_ttl", "instances.default_ttl must not be negative (got %q; 0 means no expiry)", in.DefaultTTL.String())
	}
	if in.MaxTTL < 0 {
		v.errorf("instances.max_ttl", "instances.max_ttl must not be negative (got %q; 0 means no limit)", in.MaxTTL.String())
	}
	if in.MaxTTL > 0 && in.DefaultTTL >= 0 {
		if in.DefaultTTL == 0 {
			v.errorf("instances.default_ttl", "instances.default_ttl must not be 0 (no expiry) when instances.max_ttl is set (got max_ttl %q)", in.MaxTTL.String())
		} else if in.DefaultTTL > in.MaxTTL {
			v.errorf("instances.default_ttl", "instances.default_ttl must not exceed instances.max_ttl (got %q and %q)", in.DefaultTTL.String(), in.MaxTTL.String())
		}
	}
	if in.ExpiryInterval < time.Second {
		v.errorf("instances.expiry_interval", "instances.expiry_interval must be at least \"1s\" (got %q)", in.ExpiryInterval.String())
	}
}

func (c *Config) validateUploads(v *validator) {
	if f := c.Uploads.AuthorizedKeysFile; f != "" && !filepath.IsAbs(f) {
		v.errorf("uploads.authorized_keys_file", "uploads.authorized_keys_file must be an absolute path (got %q)", f)
	}
	switch a := c.Uploads.Account; {
	case a == "":
		v.errorf("uploads.account", "uploads.account must not be empty (the OS account that uploads with scp; default %q)", DefaultUploadAccount)
	case a == "root" || a == "0":
		v.errorf("uploads.account", "uploads.account must not be root (default %q)", DefaultUploadAccount)
	case !userNameRE.MatchString(a):
		v.errorf("uploads.account", "uploads.account must be a user name: a lower-case letter or _, then up to 31 lower-case letters, digits, _ or - (got %q)", a)
	}
}

func (c *Config) validateLimits(v *validator) {
	l := &c.Limits
	for _, f := range []struct {
		key string
		n   int
	}{
		{"limits.instances_per_user", l.InstancesPerUser},
		{"limits.protected_instances_per_user", l.ProtectedInstancesPerUser},
		{"limits.branches_per_user", l.BranchesPerUser},
		{"limits.running_backups_per_user", l.RunningBackupsPerUser},
		{"limits.running_backups", l.RunningBackups},
		{"limits.upload_user_instances", l.UploadUserInstances},
		{"limits.upload_user_protected_instances", l.UploadUserProtectedInstances},
		{"limits.upload_user_branches", l.UploadUserBranches},
		{"limits.upload_user_running_backups", l.UploadUserRunningBackups},
	} {
		if f.n < 0 {
			v.errorf(f.key, "%s must not be negative (got %d; 0 means no limit)", f.key, f.n)
		}
	}
	if l.DiskReserve.Percent >= 100 {
		v.errorf("limits.disk_reserve", "limits.disk_reserve must be under 100%% of the disk (got %s), or \"0\" for none", l.DiskReserve)
	}
}

// userNameRE is a portable user name as useradd accepts it by default.
var userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// checkHostPort returns "" when addr is a valid host:port with a numeric
// port in 1-65535, else what is wrong.
func checkHostPort(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "must be host:port, such as \":8443\" or \"127.0.0.1:8080\""
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "must have a port between 1 and 65535"
	}
	return ""
}

// checkReadableFile returns "" when path is a regular file that can be
// opened for reading, else what is wrong.
func checkReadableFile(path string) string {
	f, err := os.Open(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "cannot be read: " + oneLine(err.Error())
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "cannot be read: " + oneLine(err.Error())
	}
	if st.IsDir() {
		return "is a directory, not a file"
	}
	return ""
}

func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// validHostname reports whether h is a DNS host name (letters, digits and
// hyphens in dot-separated labels).
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// isWithin reports whether path is dir or inside it (both absolute).
func isWithin(dir, path string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	if err != nil {
		return false
	}
	return rel == "." || (rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)))
}

func (c *Config) validateSources(v *validator) {
	sc := c.Sources
	if sc.RetryMin < time.Second {
		v.errorf("sources.retry_min", "sources.retry_min must be at least \"1s\" (got %q)", sc.RetryMin.String())
	}
	if sc.RetryMax < sc.RetryMin {
		v.errorf("sources.retry_max", "sources.retry_max must be at least sources.retry_min (got %q and %q)", sc.RetryMax.String(), sc.RetryMin.String())
	}
	if sc.StandbyResyncAfter < time.Minute {
		v.errorf("sources.standby_resync_after", "sources.standby_resync_after must be at least \"1m\" (got %q): a standby reconnecting after its source restarted needs the time", sc.StandbyResyncAfter.String())
	}
}
