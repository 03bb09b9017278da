package config

import (
	"bytes"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Defaults of [fleet].
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultDownTimeout       = 30 * time.Second

	// MinFleetSecretLength is the shortest fleet secret accepted: the
	// secret lets a peer act for every user, so it is never short.
	MinFleetSecretLength = 32
	// maxFleetSecretLength bounds what is read from secret_file.
	maxFleetSecretLength = 4096
)

// FleetConfig is the [fleet] section: this host as one of several sindrid
// hosts sharing one metadata database. The fleet is on when name is set;
// without it (or without the section) sindrid is a single host, as
// before, and the other keys must be left out.
type FleetConfig struct {
	// Name is this host's name in the fleet, unique among the hosts: a
	// DNS label (lower-case letters, digits and hyphens, at most 63).
	Name string `toml:"name"`

	// PeerURL is how the other hosts reach this one's API, e.g.
	// "https://sindri-b.internal:8443". https, except on a loopback
	// address or outside environment = "production".
	PeerURL string `toml:"peer_url"`

	// SecretFile holds the fleet secret, which the hosts present to each
	// other: the same on every host, distinct from shared_secret, at least
	// 32 characters (e.g. openssl rand -hex 32), in a file only its owner
	// may read (mode 0600 or 0400). Absolute path; required.
	SecretFile string `toml:"secret_file"`

	// HeartbeatInterval is how often this host records that it is alive
	// and its free disk, instances and memory (default "5s", at least
	// "1s").
	HeartbeatInterval time.Duration `toml:"heartbeat_interval"`

	// DownTimeout is the age of a host's last heartbeat after which it is
	// down: no new instance is placed on it and its instances show
	// unavailable (default "30s"; at least three heartbeat intervals).
	DownTimeout time.Duration `toml:"down_timeout"`

	// MaxInstances caps the instances placed on this host (default 0: only
	// the port range and the disk reserve bound them).
	MaxInstances int `toml:"max_instances"`

	// PeerCAFile, if set, holds the PEM certificates (a CA's, or each
	// host's own self-signed one) that the other hosts' https:// peer_url
	// must be signed by; only these are trusted for peers then. Unset:
	// the system's roots. Absolute path.
	PeerCAFile string `toml:"peer_ca_file"`
}

// Enabled reports whether this host is part of a fleet.
func (f *FleetConfig) Enabled() bool { return f.Name != "" }

// ReadSecret reads the fleet secret from SecretFile, with surrounding
// white space (a trailing newline) removed, checking what Validate checks
// of the file.
func (f *FleetConfig) ReadSecret() ([]byte, error) {
	info, err := os.Lstat(f.SecretFile)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("cannot be read: %s", oneLine(err.Error()))
	}
	if !info.Mode().IsRegular() {
		return nil, errors.New("is not a regular file")
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("may be read by others (mode %04o): make it readable by its owner only (chmod 600)", perm)
	}
	file, err := os.Open(f.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("cannot be read: %s", oneLine(err.Error()))
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxFleetSecretLength+1))
	if err != nil {
		return nil, fmt.Errorf("cannot be read: %s", oneLine(err.Error()))
	}
	if len(data) > maxFleetSecretLength {
		return nil, fmt.Errorf("is longer than %d bytes: it must hold the secret alone", maxFleetSecretLength)
	}
	secret := bytes.TrimSpace(data)
	if len(secret) < MinFleetSecretLength {
		return nil, fmt.Errorf("must hold a secret of at least %d characters, such as the output of openssl rand -hex 32 (it holds %d)", MinFleetSecretLength, len(secret))
	}
	if bytes.ContainsAny(secret, " \t\r\n") {
		return nil, errors.New("must hold the secret alone, on one line without spaces")
	}
	return secret, nil
}

// SecretsEqual compares two secrets in constant time (for equal lengths).
func SecretsEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

var hostNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (c *Config) validateFleet(v *validator) {
	f := &c.Fleet
	if !f.Enabled() {
		for _, k := range []struct {
			key string
			set bool
		}{
			{"fleet.peer_url", f.PeerURL != ""},
			{"fleet.secret_file", f.SecretFile != ""},
			{"fleet.max_instances", f.MaxInstances != 0},
			{"fleet.heartbeat_interval", f.HeartbeatInterval != DefaultHeartbeatInterval},
			{"fleet.down_timeout", f.DownTimeout != DefaultDownTimeout},
			{"fleet.peer_ca_file", f.PeerCAFile != ""},
		} {
			if k.set {
				v.errorf("fleet.name", "fleet.name is required when %s is set (this host's name in the fleet, such as \"sindri-a\"), or remove the [fleet] keys to run a single host", k.key)
				break
			}
		}
		return
	}

	if !hostNameRE.MatchString(f.Name) {
		v.errorf("fleet.name", "fleet.name must be a DNS label: lower-case letters, digits and hyphens, at most 63, not starting or ending with a hyphen (got %q)", f.Name)
	}
	if c.DatabaseURL == "" {
		v.errorf("database_url", "database_url is required with [fleet]: the hosts of a fleet share one metadata database (the embedded one serves a single host)")
	}

	switch u, err := url.Parse(f.PeerURL); {
	case f.PeerURL == "":
		v.errorf("fleet.peer_url", "fleet.peer_url is required with [fleet]: the URL other hosts reach this one's API at, such as \"https://sindri-a.internal:8443\"")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "":
		v.errorf("fleet.peer_url", "fleet.peer_url must be an absolute http:// or https:// URL with a host, such as \"https://sindri-a.internal:8443\" (got %q)", f.PeerURL)
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		v.errorf("fleet.peer_url", "fleet.peer_url must be a scheme, host and port only, without user, path, query or fragment (got %q)", f.PeerURL)
	case u.Scheme == "http" && c.Environment == EnvProduction && !isLoopbackHost(u.Hostname()):
		v.errorf("fleet.peer_url", "fleet.peer_url must be https:// (the fleet secret travels with every request between hosts); plain http:// is accepted only on a loopback address or outside environment = \"production\" (got %q)", f.PeerURL)
	}

	switch {
	case f.SecretFile == "":
		v.errorf("fleet.secret_file", "fleet.secret_file is required with [fleet]: a file holding the secret the hosts present to each other (the same on every host; e.g. openssl rand -hex 32 > /etc/sindri/fleet.secret; chmod 600)")
	case !filepath.IsAbs(f.SecretFile):
		v.errorf("fleet.secret_file", "fleet.secret_file must be an absolute path (got %q)", f.SecretFile)
	default:
		if filepath.IsAbs(c.DataPath) {
			for _, dir := range []string{c.MetaDir(), c.UploadsDir(), c.BackupsDir()} {
				if isWithin(dir, f.SecretFile) {
					v.errorf("fleet.secret_file", "fleet.secret_file must not be inside %s, which others can read (got %q)", dir, f.SecretFile)
					return
				}
			}
		}
		secret, err := f.ReadSecret()
		if err != nil {
			v.errorf("fleet.secret_file", "fleet.secret_file %q %s", f.SecretFile, err.Error())
		} else if SecretsEqual(secret, bytes.TrimSpace([]byte(c.SharedSecret))) {
			v.errorf("fleet.secret_file", "fleet.secret_file %q holds the shared_secret: the fleet secret must be a different one, since it lets a host act for every user", f.SecretFile)
		}
	}

	if f.PeerCAFile != "" {
		if !filepath.IsAbs(f.PeerCAFile) {
			v.errorf("fleet.peer_ca_file", "fleet.peer_ca_file must be an absolute path (got %q)", f.PeerCAFile)
		} else if _, err := f.PeerRoots(); err != nil {
			v.errorf("fleet.peer_ca_file", "fleet.peer_ca_file %q %s", f.PeerCAFile, err.Error())
		}
	}

	if f.HeartbeatInterval < time.Second {
		v.errorf("fleet.heartbeat_interval", "fleet.heartbeat_interval must be at least \"1s\" (got %q)", f.HeartbeatInterval.String())
	} else if f.DownTimeout < 3*f.HeartbeatInterval {
		v.errorf("fleet.down_timeout", "fleet.down_timeout must be at least three fleet.heartbeat_interval (%s), so that one late heartbeat does not take a host down (got %q)", (3 * f.HeartbeatInterval).String(), f.DownTimeout.String())
	}
	if f.MaxInstances < 0 {
		v.errorf("fleet.max_instances", "fleet.max_instances must not be negative (got %d; 0 means no limit)", f.MaxInstances)
	} else if n := c.Postgres.MaxPort - c.Postgres.MinPort; f.MaxInstances > n && n > 0 {
		v.errorf("fleet.max_instances", "fleet.max_instances (%d) is more than the ports of postgres.min_port..max_port (%d): lower it, or widen the range", f.MaxInstances, n)
	}
}

// isLoopbackHost reports whether h is "localhost" or a loopback IP address.
func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// PeerRoots reads PeerCAFile's certificates; nil (the system's roots)
// when it is unset.
func (f *FleetConfig) PeerRoots() (*x509.CertPool, error) {
	if f.PeerCAFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(f.PeerCAFile)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("cannot be read: %s", oneLine(err.Error()))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, errors.New("holds no PEM certificate")
	}
	return pool, nil
}
