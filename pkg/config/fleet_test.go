package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const fleetSecret = "5f0c1e9a7b3d4c2e8f6a1b0c9d7e5f3a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e"

// writeSecret writes content to a fresh file of the given mode and
// returns its path.
func writeSecret(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fleet.secret")
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // not the umask's
		t.Fatal(err)
	}
	return path
}

// fleetFile is a valid fleet host's configuration with extra appended to
// its [fleet] section.
func fleetFile(secretFile, extra string) string {
	return minimal("/var/lib/sindri", `database_url = "postgres://a:5432,b:5432/sindri?target_session_attrs=read-write"
[fleet]
name = "sindri-a"
peer_url = "https://sindri-a.internal:8443"
secret_file = "`+secretFile+`"
`+extra)
}

func TestWithoutFleetSectionIsASingleHost(t *testing.T) {
	for _, content := range []string{minimal("/var/lib/sindri", ""), minimal("/var/lib/sindri", "[fleet]\n")} {
		c, err := Load(writeConfig(t, content))
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if c.Fleet.Enabled() {
			t.Errorf("fleet enabled without fleet.name: %+v", c.Fleet)
		}
	}
}

func TestFleetLoads(t *testing.T) {
	secretFile := writeSecret(t, fleetSecret+"\n", 0o600)
	c, err := Load(writeConfig(t, fleetFile(secretFile, "heartbeat_interval = \"2s\"\ndown_timeout = \"10s\"\nmax_instances = 40\n")))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	f := c.Fleet
	if !f.Enabled() || f.Name != "sindri-a" || f.PeerURL != "https://sindri-a.internal:8443" || f.SecretFile != secretFile ||
		f.HeartbeatInterval != 2*time.Second || f.DownTimeout != 10*time.Second || f.MaxInstances != 40 {
		t.Errorf("fleet = %+v", f)
	}
	secret, err := f.ReadSecret()
	if err != nil || string(secret) != fleetSecret {
		t.Errorf("ReadSecret = %q, %v; want the file's line without its newline", secret, err)
	}

	// Defaults.
	c, err = Load(writeConfig(t, fleetFile(secretFile, "")))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Fleet.HeartbeatInterval != 5*time.Second || c.Fleet.DownTimeout != 30*time.Second || c.Fleet.MaxInstances != 0 {
		t.Errorf("fleet defaults = %+v", c.Fleet)
	}
}

func TestFleetPlainHTTPOnlyOnLoopbackOrOutsideProduction(t *testing.T) {
	secretFile := writeSecret(t, fleetSecret, 0o400)
	for _, tc := range []struct {
		env, url string
		ok       bool
	}{
		{"production", "http://127.0.0.2:8080", true},
		{"production", "http://[::1]:8080", true},
		{"production", "http://localhost:8080", true},
		{"production", "http://10.0.0.5:8080", false},
		{"production", "http://sindri-a.internal:8080", false},
		{"test", "http://10.0.0.5:8080", true},
		{"development", "http://sindri-a.internal", true},
	} {
		content := strings.Replace(fleetFile(secretFile, ""), "https://sindri-a.internal:8443", tc.url, 1)
		content = "environment = \"" + tc.env + "\"\n" + content
		_, err := Load(writeConfig(t, content))
		if tc.ok && err != nil {
			t.Errorf("%s %s: %v", tc.env, tc.url, err)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "fleet.peer_url must be https://")) {
			t.Errorf("%s %s: err = %v, want a refusal of plain http", tc.env, tc.url, err)
		}
	}
}

func TestFleetInvalid(t *testing.T) {
	good := writeSecret(t, fleetSecret, 0o600)
	for _, tc := range []struct {
		name, content, key, want string
	}{
		{"keys without a name", minimal("/var/lib/sindri", "[fleet]\npeer_url = \"https://a:8443\"\n"),
			"fleet.name", "fleet.name is required when fleet.peer_url is set"},
		{"bad name", strings.Replace(fleetFile(good, ""), `"sindri-a"`, `"Sindri_A"`, 1),
			"fleet.name", "must be a DNS label"},
		{"embedded metadata", strings.Replace(fleetFile(good, ""), "database_url", "# database_url", 1),
			"database_url", "database_url is required with [fleet]"},
		{"no peer url", strings.Replace(fleetFile(good, ""), `peer_url = "https://sindri-a.internal:8443"`, "", 1),
			"fleet.peer_url", "fleet.peer_url is required"},
		{"peer url with a path", strings.Replace(fleetFile(good, ""), ":8443", ":8443/api", 1),
			"fleet.peer_url", "without user, path, query or fragment"},
		{"peer url with a password", strings.Replace(fleetFile(good, ""), "https://", "https://u:p@", 1),
			"fleet.peer_url", "without user, path, query or fragment"},
		{"peer url not a url", strings.Replace(fleetFile(good, ""), "https://sindri-a.internal:8443", "sindri-a:8443", 1),
			"fleet.peer_url", "absolute http:// or https:// URL"},
		{"no secret file", strings.Replace(fleetFile(good, ""), "secret_file", "# secret_file", 1),
			"fleet.secret_file", "fleet.secret_file is required"},
		{"relative secret file", fleetFile("fleet.secret", ""),
			"fleet.secret_file", "must be an absolute path"},
		{"missing secret file", fleetFile("/nonexistent/fleet.secret", ""),
			"fleet.secret_file", "cannot be read: no such file or directory"},
		{"secret readable by others", fleetFile(writeSecret(t, fleetSecret, 0o644), ""),
			"fleet.secret_file", "may be read by others (mode 0644)"},
		{"short secret", fleetFile(writeSecret(t, "0123456789abcdef0123\n", 0o600), ""),
			"fleet.secret_file", "at least 32 characters"},
		{"two words", fleetFile(writeSecret(t, fleetSecret+" "+fleetSecret, 0o600), ""),
			"fleet.secret_file", "on one line without spaces"},
		{"the shared secret", strings.Replace(fleetFile(writeSecret(t, fleetSecret+"\n", 0o600), ""), testSecret, fleetSecret, 1),
			"fleet.secret_file", "holds the shared_secret"},
		{"secret under meta", fleetFile("/var/lib/sindri/meta/fleet.secret", ""),
			"fleet.secret_file", "must not be inside /var/lib/sindri/meta"},
		{"heartbeat too short", fleetFile(good, "heartbeat_interval = \"500ms\"\n"),
			"fleet.heartbeat_interval", "at least \"1s\""},
		{"integer heartbeat", fleetFile(good, "heartbeat_interval = 5\n"),
			"fleet.heartbeat_interval", "must be a duration string"},
		{"down timeout too short", fleetFile(good, "heartbeat_interval = \"10s\"\ndown_timeout = \"20s\"\n"),
			"fleet.down_timeout", "at least three fleet.heartbeat_interval (30s)"},
		{"negative max", fleetFile(good, "max_instances = -1\n"),
			"fleet.max_instances", "must not be negative"},
		{"max above ports", fleetFile(good, "max_instances = 5000\n"),
			"fleet.max_instances", "more than the ports"},
		{"relative peer CA file", fleetFile(good, "peer_ca_file = \"ca.pem\"\n"),
			"fleet.peer_ca_file", "must be an absolute path"},
		{"missing peer CA file", fleetFile(good, "peer_ca_file = \"/nonexistent/ca.pem\"\n"),
			"fleet.peer_ca_file", "cannot be read: no such file or directory"},
		{"peer CA file without certificates", fleetFile(good, "peer_ca_file = \""+good+"\"\n"),
			"fleet.peer_ca_file", "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.content))
			if err == nil {
				t.Fatal("Load accepted it")
			}
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error %T is not a *config.Error: %v", err, err)
			}
			found := false
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.Contains(line, tc.want) && strings.Contains(line, tc.key) {
					found = true
				}
			}
			if !found {
				t.Errorf("error %q does not say %q about %s", err, tc.want, tc.key)
			}
			if strings.Contains(err.Error(), fleetSecret) {
				t.Errorf("error shows the secret: %q", err)
			}
		})
	}
}

func TestSecretsEqual(t *testing.T) {
	if !SecretsEqual([]byte(fleetSecret), []byte(fleetSecret)) || SecretsEqual([]byte(fleetSecret), []byte(fleetSecret[:63]+"x")) ||
		SecretsEqual([]byte(fleetSecret), []byte(fleetSecret[:32])) || SecretsEqual(nil, []byte("x")) {
		t.Error("SecretsEqual is wrong")
	}
}
