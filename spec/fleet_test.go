package spec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/testenv"
	"github.com/sindri-db/sindri/pkg/testfs"
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

// fleetPeerSection is a [fleet] section whose peer_url is the host's own
// plain-http listener on loopback (see httpAddressPlaceholder): the other
// hosts reach it there for images, creates and forwarded requests.
func fleetPeerSection(name, secretFile string, maxInstances int) string {
	return fmt.Sprintf(`
[fleet]
name = %q
peer_url = "http://%s"
secret_file = %q
heartbeat_interval = "1s"
down_timeout = "3s"
max_instances = %d
`, name, httpAddressPlaceholder, secretFile, maxInstances)
}

// try is call without the testing.T, for goroutines: a request that could
// not be sent is the error.
func (s *server) try(method, path, token string, body any) (int, []byte, error) {
	data, _ := json.Marshal(body)
	req, err := http.NewRequest(method, "http://"+s.http+path, bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Draupnir-Version", apiVersion)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// fleetInstance is an instance as its create answered.
type fleetInstance struct {
	id, host, databaseURL string
	port                  float64
}

// createOn is POST /instances of image to s, from any goroutine.
func createOn(s *server, imageID string) (fleetInstance, error) {
	status, body, err := s.try("POST", "/instances", s.secret, resourceBody("instances", map[string]any{"image_id": imageID}))
	if err != nil {
		return fleetInstance{}, err
	}
	if status != 201 {
		return fleetInstance{}, fmt.Errorf("POST /instances to %s: %d %s", s.http, status, body)
	}
	var doc struct {
		Data resource `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return fleetInstance{}, fmt.Errorf("POST /instances: %w: %s", err, body)
	}
	a := doc.Data.Attributes
	host, _ := a["host"].(string)
	url, _ := a["database_url"].(string)
	port, _ := a["port"].(float64)
	if host == "" || url == "" || a["status"] != "running" {
		return fleetInstance{}, fmt.Errorf("POST /instances to %s answered %s", s.http, body)
	}
	return fleetInstance{id: doc.Data.ID, host: host, databaseURL: url, port: port}, nil
}

// eachOf runs f on every index of n, workers at a time, and returns the
// errors by index.
func eachOf(n, workers int, f func(i int) error) []error {
	errs := make([]error, n)
	work := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				errs[i] = f(i)
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return errs
}

// logLines returns the lines of a host's log that match re.
func logLines(t *testing.T, path string, re *regexp.Regexp) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if re.MatchString(line) {
			out = append(out, line)
		}
	}
	return out
}

// logTail is the last n lines of a host's log.
func logTail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// unmountPool unmounts every filesystem of a zfs-fuse pool, the deepest
// first: zfs-fuse's `zpool destroy -f` finds a pool busy while it has to
// unmount them itself.
func unmountPool(t *testing.T, pool string) {
	ctx := context.Background()
	out, err := testfs.Run(ctx, "zfs", "list", "-rH", "-t", "filesystem", "-o", "name,mounted,mountpoint", pool)
	if err != nil {
		t.Logf("listing %s: %v", pool, err)
		return
	}
	var mounted [][2]string // mountpoint, dataset
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if f := strings.SplitN(line, "\t", 3); len(f) == 3 && f[1] == "yes" {
			mounted = append(mounted, [2]string{f[2], f[0]})
		}
	}
	sort.Slice(mounted, func(i, j int) bool { return mounted[i][0] > mounted[j][0] })
	for _, m := range mounted {
		if _, err := testfs.Run(ctx, "zfs", "unmount", m[1]); err != nil {
			t.Errorf("unmounting %s: %v", m[1], err)
		}
	}
}

// leftoversUnder lists what is still running or mounted below the
// directories: processes working there (postmasters and their children)
// and mount points.
func leftoversUnder(dirs ...string) []string {
	under := func(p string) bool {
		for _, d := range dirs {
			if p == d || strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && under(cwd) && postgres.Running(pid) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			out = append(out, fmt.Sprintf("process %d in %s: %s", pid, cwd, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && under(f[4]) {
			out = append(out, "mount "+f[4])
		}
	}
	return out
}

// TestFleetOfThreeHosts is the fleet's proof on one machine: three real
// sindrids, each with its own filesystem (A and B a loopback BTRFS, C a
// zfs-fuse pool), port range and listeners, on one metadata Postgres. An
// image uploaded to A becomes ready on B (btrfs send) and C (tar.zst);
// 60 creates sent to A are spread over the three; C's API lists them all
// and resets and destroys instances of every host; B killed with SIGKILL
// has its instances read unavailable on A and C, and new instances go to
// A and C; B restarted adopts its postmasters, which answer again.
func TestFleetOfThreeHosts(t *testing.T) {
	testenv.RequireRoot(t, "sindrid mounts filesystems and runs Postgres")
	began := time.Now()
	const (
		creates      = 60
		maxInstances = 25 // a host's cap: none can take all 60
		portsEach    = 40
	)
	meta := pgtest.StartInstance(t)
	secretFile := filepath.Join(t.TempDir(), "fleet.secret")
	if err := os.WriteFile(secretFile, []byte("6a1f0c2e9b8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	baseA, baseB, baseC := pgtest.Dir(t), pgtest.Dir(t), pgtest.Dir(t)
	// Runs last of the test's own clean-ups: after every host's.
	t.Cleanup(func() {
		if left := leftoversUnder(baseA, baseB, baseC); len(left) > 0 {
			t.Errorf("left behind after the clean-up:\n%s", strings.Join(left, "\n"))
		}
	})

	// C's data path is a dataset of its own pool: the volumes and images
	// are datasets below it, mounted below the data path.
	pool := testfs.ZFSPool(t, 2<<30)
	dataset := pool + "/sindri"
	if _, err := testfs.Run(context.Background(), "zfs", "create", "-o", "mountpoint="+filepath.Join(baseC, "data"), dataset); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountPool(t, pool) })

	logs := map[string]string{}
	logTo := func(name string) *os.File {
		logs[name] = filepath.Join(t.TempDir(), name+".log")
		f, err := os.OpenFile(logs[name], os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	logA, logB, logC := logTo("spec-a"), logTo("spec-b"), logTo("spec-c")
	firstPort := pgtest.FreePort(t)
	top := fmt.Sprintf("database_url = %q", meta.SocketURL())
	a := startServerWith(t, serverOptions{base: baseA, size: "2GiB", top: []string{top}, minPort: firstPort, ports: portsEach, log: logA,
		extra: fleetPeerSection("spec-a", secretFile, maxInstances)})
	// Every host seals and opens the instances' secrets with the same key.
	key := fmt.Sprintf("secrets_key_file = %q", filepath.Join(a.data, "secrets.key"))
	b := startServerWith(t, serverOptions{base: baseB, size: "2GiB", top: []string{top, key}, minPort: firstPort + portsEach, ports: portsEach, log: logB,
		extra: fleetPeerSection("spec-b", secretFile, maxInstances)})
	c := startServerWith(t, serverOptions{base: baseC, size: "0", storage: fmt.Sprintf("driver = \"zfs\"\nzfs_dataset = %q", dataset),
		top: []string{top, key}, minPort: firstPort + 2*portsEach, ports: portsEach, log: logC,
		extra: fleetPeerSection("spec-c", secretFile, maxInstances)})
	servers := map[string]*server{"spec-a": a, "spec-b": b, "spec-c": c}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"spec-a", "spec-b", "spec-c"} {
				t.Logf("the end of %s's log:\n%s", name, logTail(logs[name], 30))
			}
		}
	})
	t.Logf("three hosts up after %s", time.Since(began).Round(100*time.Millisecond))

	_, hosts := c.hosts(t, c.secret)
	drivers := map[string]any{}
	for _, h := range hosts {
		drivers[h.ID] = h.Attributes["storage_driver"]
		if s := servers[h.ID]; s == nil || h.Attributes["state"] != "active" || h.Attributes["peer_url"] != "http://"+s.http {
			t.Errorf("host %s: %v", h.ID, h.Attributes)
		}
	}
	if len(hosts) != 3 || drivers["spec-a"] != "btrfs" || drivers["spec-b"] != "btrfs" || drivers["spec-c"] != "zfs" {
		t.Fatalf("GET /hosts on C: %d hosts, drivers %v", len(hosts), drivers)
	}

	// 1. An image uploaded to A becomes ready on B and C.
	imageID := a.readyImage(t, "")
	uploaded := time.Now()
	for {
		status, body := a.call(t, "GET", "/images/"+imageID, a.secret, nil)
		if status != 200 {
			t.Fatalf("GET /images/%s: %d %s", imageID, status, body)
		}
		got := fmt.Sprint(decode(t, body).one(t).Attributes["hosts"])
		if got == "[spec-a spec-b spec-c]" {
			break
		}
		if time.Since(uploaded) > 90*time.Second {
			t.Fatalf("image %s 90s after its upload is ready on %s, want all three hosts", imageID, got)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("image %s ready on every host %s after A finalised it", imageID, time.Since(uploaded).Round(100*time.Millisecond))
	// B, of A's driver, got the filesystem's own stream; C, on ZFS, the
	// tar.zst one, received into a read-only dataset of its pool.
	received := func(log, host, format string) []string {
		return logLines(t, log, regexp.MustCompile(`"engine: receiving an image" image_id=`+imageID+` host=`+host+` from=spec-[a-c] format=`+regexp.QuoteMeta(format)+`$`))
	}
	for _, r := range []struct{ host, format string }{{"spec-b", "btrfs-send"}, {"spec-c", "tar.zst"}} {
		if got := received(logs[r.host], r.host, r.format); len(got) != 1 {
			t.Errorf("%s's receives of image %s as %s: %q", r.host, imageID, r.format, got)
		} else {
			t.Logf("%s: %s", r.host, got[0][strings.Index(got[0], "msg="):])
		}
	}
	// Their /metrics count the copy each received (the count follows the
	// copy's ready mark by a moment: polled), A's none.
	for name, want := range map[string]string{"spec-a": "0", "spec-b": "1", "spec-c": "1"} {
		var body string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, raw := servers[name].call(t, "GET", "/metrics", "", nil)
			body = string(raw)
			if strings.Contains(body, "\nsindri_image_replications_total{result=\"ok\"} "+want+"\n") || time.Now().After(deadline) {
				break
			}
		}
		for _, line := range []string{`sindri_image_replications_total{result="ok"} ` + want, `sindri_image_replications_total{result="failed"} 0`} {
			if !strings.Contains(body, "\n"+line+"\n") {
				t.Errorf("%s's /metrics lacks %q", name, line)
			}
		}
		if received := regexp.MustCompile(`\nsindri_image_replication_bytes_total (\S+)\n`).FindStringSubmatch(body); received == nil || (want == "1") == (received[1] == "0") {
			t.Errorf("%s's /metrics: bytes received %q after %s copies", name, received, want)
		}
	}
	copyOnC := dataset + "/images/image-" + imageID
	// (zfs-fuse-compat reports readonly truly with these -o fields only.)
	if out, err := testfs.Run(context.Background(), "zfs", "get", "-H", "-o", "name,property,value,source", "type,readonly", copyOnC); err != nil ||
		!strings.Contains(out, "\ttype\tfilesystem\t") || !strings.Contains(out, "\treadonly\ton\t") {
		t.Errorf("C's copy %s: %q %v; want a read-only filesystem", copyOnC, out, err)
	}
	if _, err := testfs.Run(context.Background(), "zfs", "list", "-H", "-t", "snapshot", "-o", "name", copyOnC+"@frozen"); err != nil {
		t.Errorf("C's copy has no snapshot to clone from: %v", err)
	}

	// 2. 60 creates sent to A, six at a time, spread over the three hosts.
	sent := time.Now()
	made := make([]fleetInstance, creates)
	for i, err := range eachOf(creates, 6, func(i int) (err error) { made[i], err = createOn(a, imageID); return err }) {
		if err != nil {
			t.Fatalf("create %d of %d: %v", i+1, creates, err)
		}
	}
	took := time.Since(sent)
	byHost := map[string][]fleetInstance{}
	for _, inst := range made {
		byHost[inst.host] = append(byHost[inst.host], inst)
	}
	counts := fmt.Sprintf("spec-a %d, spec-b %d, spec-c %d", len(byHost["spec-a"]), len(byHost["spec-b"]), len(byHost["spec-c"]))
	t.Logf("%d creates sent to A took %s (%s each, six at a time); placed: %s", creates, took.Round(100*time.Millisecond), (took / creates).Round(time.Millisecond), counts)
	if len(byHost) != 3 {
		t.Fatalf("the %d instances went to %d hosts: %s", creates, len(byHost), counts)
	}
	for name, insts := range byHost {
		if len(insts) < 10 || len(insts) > maxInstances {
			t.Errorf("host %s got %d of the %d instances (placed: %s); want 10 to max_instances %d", name, len(insts), creates, counts, maxInstances)
		}
	}
	// Every one answers on its host's port; C's, cloned from the tar.zst
	// copy, hold the image's data.
	for i, err := range eachOf(creates, 6, func(i int) error {
		inst := made[i]
		sql, want := "select 'up'", "up"
		if inst.host == "spec-c" {
			sql, want = "select count(*)::text from people", "2"
		}
		if v, err := query(inst.databaseURL, sql); err != nil || v != want {
			return fmt.Errorf("instance %s on %s: %q %v, want %q", inst.id, inst.host, v, err, want)
		}
		return nil
	}) {
		if err != nil {
			t.Errorf("%d: %v", i, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// 3. Through C: all listed with their hosts; one of A's and one of B's
	// reset, one of each host's destroyed.
	listed := c.listedStatuses(t, c.secret)
	for _, inst := range made {
		if listed[inst.id] != [2]string{"running", inst.host} {
			t.Errorf("GET /instances on C: instance %s is %v, want running on %s", inst.id, listed[inst.id], inst.host)
		}
	}
	if len(listed) != creates {
		t.Errorf("GET /instances on C lists %d instances, want %d", len(listed), creates)
	}
	for _, host := range []string{"spec-a", "spec-b"} {
		inst := byHost[host][0]
		if err := execSQL(inst.databaseURL, "create table made_before_reset (x int)"); err != nil {
			t.Fatalf("instance %s on %s: %v", inst.id, host, err)
		}
		status, body := c.call(t, "POST", "/instances/"+inst.id+"/reset", c.secret, nil)
		if status != 200 {
			t.Fatalf("reset of %s's instance %s through C: %d %s", host, inst.id, status, body)
		}
		if got := decode(t, body).one(t).Attributes; got["host"] != host || got["port"] != inst.port || got["status"] != "running" {
			t.Errorf("reset of %s's instance %s through C answered %v", host, inst.id, got)
		}
		if v, err := query(inst.databaseURL, "select coalesce(to_regclass('made_before_reset')::text, 'gone') || ' ' || count(*) from people"); err != nil || v != "gone 2" {
			t.Errorf("%s's instance %s after its reset through C: %q %v, want the table gone and the image's 2 people", host, inst.id, v, err)
		}
	}
	for _, host := range []string{"spec-a", "spec-b", "spec-c"} {
		inst := byHost[host][len(byHost[host])-1]
		byHost[host] = byHost[host][:len(byHost[host])-1]
		if status, body := c.call(t, "DELETE", "/instances/"+inst.id, c.secret, nil); status != 204 {
			t.Fatalf("destroy of %s's instance %s through C: %d %s", host, inst.id, status, body)
		}
		if status, body := c.call(t, "GET", "/instances/"+inst.id, c.secret, nil); status != 404 {
			t.Errorf("%s's instance %s after its destroy: %d %s", host, inst.id, status, body)
		}
		if _, err := query(inst.databaseURL, "select 'up'"); err == nil {
			t.Errorf("%s's destroyed instance %s still answers", host, inst.id)
		}
		volume := "instance-" + inst.id
		if host == "spec-c" {
			if out, err := testfs.Run(context.Background(), "zfs", "list", "-H", "-o", "name", dataset+"/volumes/"+volume); err == nil {
				t.Errorf("C's destroyed instance %s left its dataset: %s", inst.id, out)
			}
		} else if _, err := os.Stat(filepath.Join(servers[host].data, "volumes", volume)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s's destroyed instance %s left its volume: %v", host, inst.id, err)
		}
	}

	// 4. B dies. Its postmasters run on; which ones they are is kept, to
	// tell adoption from a restart later.
	started := map[string]string{}
	for _, inst := range byHost["spec-b"] {
		v, err := query(inst.databaseURL, "select pg_postmaster_start_time()::text")
		if err != nil {
			t.Fatalf("B's instance %s: %v", inst.id, err)
		}
		started[inst.id] = v
	}
	killed := time.Now()
	if err := syscall.Kill(b.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	onB := byHost["spec-b"][0].id
	for a.instance(t, a.secret, onB)["status"] != "unavailable" || c.instance(t, c.secret, onB)["status"] != "unavailable" {
		if time.Since(killed) > 8*time.Second {
			t.Fatalf("B's instance %s 8s after B was killed: on A %v, on C %v", onB, a.instance(t, a.secret, onB)["status"], c.instance(t, c.secret, onB)["status"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("B's instances read unavailable on A and C %s after B was killed", time.Since(killed).Round(100*time.Millisecond))
	// Its last heartbeat was at most a heartbeat (1s, late under load)
	// before the kill: unavailable any sooner than 1s means not by age.
	if time.Since(killed) < time.Second {
		t.Errorf("B's instance read unavailable %s after the kill, before its last heartbeat can have been 3s old", time.Since(killed))
	}
	for name, s := range map[string]*server{"A": a, "C": c} {
		got := s.listedStatuses(t, s.secret)
		for host, insts := range byHost {
			want := "running"
			if host == "spec-b" {
				want = "unavailable"
			}
			for _, inst := range insts {
				if got[inst.id] != [2]string{want, host} {
					t.Errorf("GET /instances on %s with B down: instance %s is %v, want %s on %s", name, inst.id, got[inst.id], want, host)
				}
			}
		}
	}
	// New instances, asked of A and of C, go to A and C.
	var during []fleetInstance
	for _, s := range []*server{a, a, c, c} {
		inst, err := createOn(s, imageID)
		if err != nil {
			t.Fatalf("a create with B down: %v", err)
		}
		if inst.host != "spec-a" && inst.host != "spec-c" {
			t.Errorf("instance %s made with B down went to %s", inst.id, inst.host)
		}
		if v, err := query(inst.databaseURL, "select 'up'"); err != nil || v != "up" {
			t.Errorf("instance %s made with B down, on %s: %q %v", inst.id, inst.host, v, err)
		}
		during = append(during, inst)
	}
	t.Logf("with B down, four creates went to %s, %s, %s and %s", during[0].host, during[1].host, during[2].host, during[3].host)

	// 5. B comes back and adopts its postmasters, which outlived it.
	startLogged(t, []string{sindrid, "-config", b.config}, b.http, logB)
	back := time.Now()
	for _, inst := range byHost["spec-b"] {
		for a.instance(t, a.secret, inst.id)["status"] != "running" || c.instance(t, c.secret, inst.id)["status"] != "running" {
			if time.Since(back) > 15*time.Second {
				t.Fatalf("B's instance %s 15s after B restarted: on A %v, on C %v", inst.id, a.instance(t, a.secret, inst.id)["status"], c.instance(t, c.secret, inst.id)["status"])
			}
			time.Sleep(200 * time.Millisecond)
		}
		if v, err := query(inst.databaseURL, "select pg_postmaster_start_time()::text"); err != nil || v != started[inst.id] {
			t.Errorf("B's instance %s after B restarted: postmaster started at %q (%v), want the one of before, started at %s", inst.id, v, err, started[inst.id])
		}
	}
	t.Logf("B's %d instances read running again %s after B restarted, served by their postmasters of before", len(byHost["spec-b"]), time.Since(back).Round(100*time.Millisecond))
	if got := b.listedStatuses(t, b.secret); len(got) != creates-3+len(during) {
		t.Errorf("GET /instances on B restarted lists %d instances, want %d", len(got), creates-3+len(during))
	}
	t.Logf("the fleet's proof took %s", time.Since(began).Round(100*time.Millisecond))
}
