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
	"syscall"
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
// `sindrid host`, shows down once stopped for the down timeout.
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

	if err := a.stop(); err != nil {
		t.Fatalf("stopping sindrid: %v", err)
	}
	time.Sleep(4 * time.Second) // the down timeout, 3s
	if out, _, code := sindridHost(t, a.config, "list"); code != 0 || !regexp.MustCompile(`(?m)^spec-a\s+down\s+1\s`).MatchString(out) {
		t.Errorf("sindrid host list with spec-a stopped for the down timeout: %d\n%s", code, out)
	}
}

// instance is GET /instances/{id} as token: its attributes.
func (s *server) instance(t *testing.T, token, id string) map[string]any {
	t.Helper()
	status, body := s.call(t, "GET", "/instances/"+id, token, nil)
	if status != 200 {
		t.Fatalf("GET /instances/%s: %d %s", id, status, body)
	}
	return decode(t, body).one(t).Attributes
}

// listedStatuses is GET /instances as token: each instance's status and
// host by id.
func (s *server) listedStatuses(t *testing.T, token string) map[string][2]string {
	t.Helper()
	status, body := s.call(t, "GET", "/instances", token, nil)
	if status != 200 {
		t.Fatalf("GET /instances: %d %s", status, body)
	}
	var doc struct {
		Data []resource `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("GET /instances: %v: %s", err, body)
	}
	out := map[string][2]string{}
	for _, r := range doc.Data {
		status, _ := r.Attributes["status"].(string)
		host, _ := r.Attributes["host"].(string)
		out[r.ID] = [2]string{status, host}
	}
	return out
}

// TestTwoFleetHosts runs two real sindrids, each on its own loopback
// BTRFS, on one metadata Postgres: both start, each serves the other's
// instances in its listings; the one killed with SIGKILL has its
// instances read unavailable on the other within the down timeout, and
// once restarted it adopts its postmasters, which read running and
// answer again.
func TestTwoFleetHosts(t *testing.T) {
	meta := pgtest.StartInstance(t)
	secretFile := filepath.Join(t.TempDir(), "fleet.secret")
	if err := os.WriteFile(secretFile, []byte("6a1f0c2e9b8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	top := fmt.Sprintf("database_url = %q", meta.SocketURL())
	a := startServerWith(t, serverOptions{base: pgtest.Dir(t), size: "1GiB", top: []string{top}, extra: fleetSection("spec-a", secretFile)})
	// Every host seals and opens the instances' secrets with the same key.
	key := fmt.Sprintf("secrets_key_file = %q", filepath.Join(a.data, "secrets.key"))
	b := startServerWith(t, serverOptions{base: pgtest.Dir(t), size: "1GiB", top: []string{top, key}, extra: fleetSection("spec-b", secretFile)})

	// Until images are copied between hosts, each host makes its own.
	instA, _ := a.createInstance(t, a.secret, a.readyImage(t, ""), nil)
	instB, _ := b.createInstance(t, b.secret, b.readyImage(t, ""), nil)
	if instA.Attributes["host"] != "spec-a" || instB.Attributes["host"] != "spec-b" {
		t.Fatalf("hosts of the instances: %v and %v", instA.Attributes["host"], instB.Attributes["host"])
	}
	for _, s := range []*server{a, b} {
		got := s.listedStatuses(t, s.secret)
		if got[instA.ID] != [2]string{"running", "spec-a"} || got[instB.ID] != [2]string{"running", "spec-b"} {
			t.Errorf("GET /instances on %s: %v", s.http, got)
		}
	}
	if _, hosts := a.hosts(t, a.secret); len(hosts) != 2 {
		t.Errorf("hosts: %+v", hosts)
	}

	// B dies: its instances read unavailable on A within the down timeout
	// (3s) and a heartbeat (1s); A's run on.
	killed := time.Now()
	if err := syscall.Kill(b.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for a.instance(t, a.secret, instB.ID)["status"] != "unavailable" {
		if time.Since(killed) > 8*time.Second {
			t.Fatalf("B's instance 8s after B was killed: %v", a.instance(t, a.secret, instB.ID))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("B's instance read unavailable %s after B was killed", time.Since(killed).Round(100*time.Millisecond))
	// Its last heartbeat was at most a heartbeat (1s, late under load)
	// before the kill: unavailable any sooner than 1s means not by age.
	if time.Since(killed) < time.Second {
		t.Errorf("B's instance read unavailable %s after the kill, before its last heartbeat can have been 3s old", time.Since(killed))
	}
	if got := a.listedStatuses(t, a.secret); got[instA.ID][0] != "running" || got[instB.ID][0] != "unavailable" {
		t.Errorf("GET /instances on A with B down: %v", got)
	}
	if v, err := query(instA.Attributes["database_url"].(string), "select 'up'"); err != nil || v != "up" {
		t.Errorf("A's instance with B down: %q %v", v, err)
	}

	// B comes back: its postmaster, which outlived it, is adopted.
	startLogged(t, []string{sindrid, "-config", b.config}, b.http, nil)
	back := time.Now()
	for a.instance(t, a.secret, instB.ID)["status"] != "running" {
		if time.Since(back) > 10*time.Second {
			t.Fatalf("B's instance 10s after B restarted: %v", a.instance(t, a.secret, instB.ID))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if v, err := query(instB.Attributes["database_url"].(string), "select 'up'"); err != nil || v != "up" {
		t.Errorf("B's instance after B restarted: %q %v", v, err)
	}
	if got := b.listedStatuses(t, b.secret); got[instA.ID][0] != "running" || got[instB.ID][0] != "running" {
		t.Errorf("GET /instances on B restarted: %v", got)
	}
}
