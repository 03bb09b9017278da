package spec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// fleetSection is a [fleet] section; it follows [instances], the last
// section of startServerWith's file. The peer URL is not called by this
// version (no host forwards to another yet), so it names no listener.
func fleetSection(name, secretFile string) string {
	return fmt.Sprintf(`
[fleet]
name = %q
peer_url = "http://127.0.0.1:9"
secret_file = %q
heartbeat_interval = "1s"
down_timeout = "3s"
max_instances = 10
`, name, secretFile)
}

// hosts is GET /hosts as token.
func (s *server) hosts(t *testing.T, token string) (int, []resource) {
	t.Helper()
	status, body := s.call(t, "GET", "/hosts", token, nil)
	if status != 200 {
		return status, nil
	}
	var doc struct {
		Data []resource `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("GET /hosts: %v: %s", err, body)
	}
	return status, doc.Data
}

// sindridHost runs `sindrid host ARGS -config config`.
func sindridHost(t *testing.T, config string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sindrid, append(append([]string{"host"}, args...), "-config", config)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("sindrid host %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// TestFleetHost runs a real sindrid with [fleet] on a shared metadata
// Postgres: it registers, beats with its real figures, is listed by
// GET /hosts to the upload user only, is drained and undrained by
// `sindrid host`, shows down once stopped for the down timeout; a second
// host on the same database is refused while the first is alive or holds
// records, since the engine does not yet keep to its own host's.
func TestFleetHost(t *testing.T) {
	meta := pgtest.StartInstance(t)
	secretFile := filepath.Join(t.TempDir(), "fleet.secret")
	if err := os.WriteFile(secretFile, []byte("6a1f0c2e9b8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	top := fmt.Sprintf("database_url = %q", meta.SocketURL())
	a := startServerWith(t, serverOptions{base: pgtest.Dir(t), size: "1GiB", top: []string{top}, extra: fleetSection("spec-a", secretFile)})

	status, hosts := a.hosts(t, a.secret)
	if status != 200 || len(hosts) != 1 {
		t.Fatalf("GET /hosts: %d %+v", status, hosts)
	}
	h := hosts[0]
	attr := func(k string) float64 { v, _ := h.Attributes[k].(float64); return v }
	total, free, reserve := attr("total_bytes"), attr("free_bytes"), attr("reserve_bytes")
	if h.Type != "hosts" || h.ID != "spec-a" || h.Attributes["name"] != "spec-a" || h.Attributes["state"] != "active" ||
		h.Attributes["storage_driver"] != "btrfs" || h.Attributes["public_hostname"] != "localhost" ||
		h.Attributes["peer_url"] != "http://127.0.0.1:9" || attr("max_instances") != 10 || attr("instances") != 0 {
		t.Errorf("host: %+v", h)
	}
	// A 1 GiB loopback BTRFS, the default reserve of 5%.
	if total < 900<<20 || total > 1<<30 || free <= 0 || free > total || reserve != float64(int64(total*5/100)) {
		t.Errorf("disk figures: total %v, free %v, reserve %v", total, free, reserve)
	}
	if attr("memory_total_bytes") <= 0 || attr("memory_available_bytes") <= 0 {
		t.Errorf("memory figures: %v", h.Attributes)
	}
	first, err := time.Parse(time.RFC3339, h.Attributes["last_heartbeat_at"].(string))
	if err != nil || time.Since(first) > time.Minute {
		t.Fatalf("last_heartbeat_at %v: %v", h.Attributes["last_heartbeat_at"], err)
	}

	if status, body := a.call(t, "GET", "/hosts", a.token(t, "ci"), nil); status != 403 || !strings.Contains(string(body), "upload user") {
		t.Errorf("GET /hosts with an API token: %d %s", status, body)
	}

	// An instance is this host's: counted placed, then running.
	imageID := a.readyImage(t, "")
	inst, _ := a.createInstance(t, a.secret, imageID, nil)
	if inst.Attributes["host"] != "spec-a" {
		t.Errorf("instance's host: %v", inst.Attributes["host"])
	}
	// The image is ready on this host; the peer route refuses users,
	// whatever their credential.
	if status, body := a.call(t, "GET", "/images/"+imageID, a.secret, nil); status != 200 || !strings.Contains(string(body), `"hosts":["spec-a"]`) {
		t.Errorf("GET /images/%s: %d %s; want hosts [spec-a]", imageID, status, body)
	}
	for name, token := range map[string]string{"the shared secret": a.secret, "an API token": a.token(t, "ci-peer")} {
		status, body := a.call(t, "GET", "/fleet/images/"+imageID+"/stream?format=btrfs-send", token, nil)
		if status != 403 || !strings.Contains(string(body), "not_a_peer") {
			t.Errorf("the peer route with %s: %d %s; want 403 not_a_peer", name, status, body)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, hosts = a.hosts(t, a.secret)
		h = hosts[0]
		if attr("instances") == 1 && attr("running_instances") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host after an instance was made: %+v", h.Attributes)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if later, _ := time.Parse(time.RFC3339, h.Attributes["last_heartbeat_at"].(string)); !later.After(first) {
		t.Errorf("heartbeat did not advance: %v then %v", first, later)
	}

	// Drain and undrain, from the command line.
	if _, stderr, code := sindridHost(t, a.config, "drain", "spec-a"); code != 0 || !strings.Contains(stderr, "drained") {
		t.Fatalf("sindrid host drain: %d %s", code, stderr)
	}
	if _, hosts = a.hosts(t, a.secret); hosts[0].Attributes["state"] != "draining" {
		t.Errorf("drained host: %v", hosts[0].Attributes["state"])
	}
	if out, _, code := sindridHost(t, a.config, "list"); code != 0 || !regexp.MustCompile(`(?m)^spec-a\s+draining\s+1\s`).MatchString(out) {
		t.Errorf("sindrid host list: %d\n%s", code, out)
	}
	if _, stderr, code := sindridHost(t, a.config, "undrain", "spec-a"); code != 0 || !strings.Contains(stderr, "active") {
		t.Fatalf("sindrid host undrain: %d %s", code, stderr)
	}
	if _, hosts = a.hosts(t, a.secret); hosts[0].Attributes["state"] != "active" {
		t.Errorf("undrained host: %v", hosts[0].Attributes["state"])
	}
	if _, stderr, code := sindridHost(t, a.config, "drain", "nope"); code != 1 || !strings.Contains(stderr, `no host named "nope"`) {
		t.Errorf("sindrid host drain nope: %d %s", code, stderr)
	}
	if _, stderr, code := sindridHost(t, a.config, "drain"); code != 2 || !strings.Contains(stderr, "usage") {
		t.Errorf("sindrid host drain without a name: %d %s", code, stderr)
	}

	// A second host on the same database is refused while the first is
	// alive, and, once it is down, while it holds records.
	bBase := pgtest.Dir(t)
	cfgA, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	cfgB := strings.NewReplacer(a.data, filepath.Join(bBase, "data"), `"spec-a"`, `"spec-b"`,
		a.http, freePort(t), a.https, freePort(t)).Replace(string(cfgA))
	configB := filepath.Join(bBase, "config.toml")
	if err := os.WriteFile(configB, []byte(cfgB), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("umount", filepath.Join(bBase, "data")).Run() })
	startB := func() (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, sindrid, "-config", configB).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("second host: %v\n%s", err, out)
		}
		return string(out), exit.ExitCode()
	}
	if out, code := startB(); code != 1 || !strings.Contains(out, `host "spec-a"`) || !strings.Contains(out, "is active") {
		t.Errorf("second host while the first is alive: exit %d\n%s", code, out)
	}

	if err := a.stop(); err != nil {
		t.Fatalf("stopping sindrid: %v", err)
	}
	time.Sleep(4 * time.Second) // the down timeout, 3s
	if out, _, code := sindridHost(t, a.config, "list"); code != 0 || !regexp.MustCompile(`(?m)^spec-a\s+down\s+1\s`).MatchString(out) {
		t.Errorf("sindrid host list with spec-a stopped for the down timeout: %d\n%s", code, out)
	}
	if out, code := startB(); code != 1 || !strings.Contains(out, "holds 1 instances and 1 image copies") {
		t.Errorf("second host while the first, down, holds records: exit %d\n%s", code, out)
	}
}
