package spec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// patroniCluster is a real Patroni cluster for one test: a one-node etcd
// and two PostgreSQL 15 members, each Patroni process with its own REST
// API, all on loopback ports picked for the test and in a directory of
// its own. Everything is stopped, and checked stopped, at cleanup.
type patroniCluster struct {
	t       *testing.T
	dir     string
	scope   string
	etcd    *exec.Cmd
	members []*patroniMember
}

type patroniMember struct {
	name               string
	pgPort, restPort   int
	config, data, logf string
	cmd                *exec.Cmd
	done               chan error
}

// patroniMemberState is a member as Patroni's REST API GET /cluster
// reports it.
type patroniMemberState struct {
	Name     string `json:"name"`
	Role     string `json:"role"` // leader, sync_standby, replica
	State    string `json:"state"`
	Port     int    `json:"port"`
	Timeline int    `json:"timeline"`
}

const (
	patroniSuperuserPassword = "patroni-superuser-secret"
	metaUser, metaPassword   = "sindri", "sindri-metadata-secret"
)

// startPatroniCluster starts etcd, then the members one after the other
// (the first bootstraps the cluster, the second is cloned from it), and
// waits until the cluster has a leader and a synchronous standby that
// streams from it. The Patroni settings are the README's, with timings
// short enough for a test: ttl 20 s, loop_wait 1 s, a crashed primary
// failed over at once (primary_start_timeout 0), and synchronous_mode, so
// that no commit a client was told of is lost in a failover.
func startPatroniCluster(t *testing.T) *patroniCluster {
	t.Helper()
	testenv.RequireRoot(t, "Patroni runs PostgreSQL as the postgres user")
	for _, bin := range []string{"etcd", "patroni", "patronictl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("needs %s (Debian's etcd-server and patroni, which `make deps` installs)", bin)
		}
	}
	owner := pgtest.Owner(t)
	c := &patroniCluster{t: t, dir: pgtest.Dir(t), scope: "sindri-test"}
	etcdClient, etcdPeer := pgtest.FreePort(t), pgtest.FreePort(t)
	c.etcd = exec.Command("etcd", "--name", "e1", "--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-cluster", fmt.Sprintf("e1=http://127.0.0.1:%d", etcdPeer))
	etcdLog, err := os.Create(filepath.Join(c.dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	c.etcd.Stdout, c.etcd.Stderr = etcdLog, etcdLog
	c.etcd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := c.etcd.Start(); err != nil {
		t.Fatal(err)
	}
	etcdDone := make(chan error, 1)
	go func() { etcdDone <- c.etcd.Wait(); etcdLog.Close() }()
	t.Cleanup(func() {
		// After the members (registered later, so run first).
		c.etcd.Process.Signal(syscall.SIGTERM)
		select {
		case <-etcdDone:
		case <-time.After(30 * time.Second):
			c.etcd.Process.Kill()
			<-etcdDone
			t.Errorf("etcd did not stop within 30 s of SIGTERM")
		}
	})

	for i := 1; i <= 2; i++ {
		m := &patroniMember{name: fmt.Sprintf("m%d", i), pgPort: pgtest.FreePort(t), restPort: pgtest.FreePort(t)}
		home := filepath.Join(c.dir, m.name)
		if err := os.Mkdir(home, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(home, int(owner.UID), int(owner.GID)); err != nil {
			t.Fatal(err)
		}
		m.config, m.data, m.logf = filepath.Join(c.dir, m.name+".yml"), filepath.Join(home, "data"), filepath.Join(c.dir, m.name+".log")
		if err := os.WriteFile(m.config, []byte(patroniConfig(c.scope, m, home, etcdClient)), 0o644); err != nil {
			t.Fatal(err)
		}
		c.members = append(c.members, m)
		c.startMember(m, owner)
		c.waitFor(fmt.Sprintf("member %s running", m.name), 90*time.Second, func(ms []patroniMemberState) bool {
			st, ok := find(ms, m.name)
			return ok && st.State == "running"
		})
	}
	c.waitHealthy(c.members[0].name)
	return c
}

func patroniConfig(scope string, m *patroniMember, home string, etcdPort int) string {
	return fmt.Sprintf(`scope: %s
name: %s
log: {level: INFO}
restapi:
  listen: 127.0.0.1:%d
  connect_address: 127.0.0.1:%d
etcd3:
  hosts: 127.0.0.1:%d
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    primary_start_timeout: 0
    synchronous_mode: true
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: 'on'
        max_connections: 60
        shared_buffers: 16MB
  initdb: [{encoding: UTF8}, {locale: C}, {auth-local: peer}]
  pg_hba:
    - local all all peer
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:%d
  connect_address: 127.0.0.1:%d
  data_dir: %s
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: %s
  authentication:
    superuser: {username: postgres, password: %s}
    replication: {username: replicator, password: patroni-replication-secret}
    rewind: {username: rewinder, password: patroni-rewind-secret}
  parameters:
    unix_socket_directories: %s
`, scope, m.name, m.restPort, m.restPort, etcdPort, m.pgPort, m.pgPort, m.data,
		filepath.Join(home, "pgpass"), patroniSuperuserPassword, home)
}

// startMember runs the member's Patroni as the postgres user; if the test
// process dies, Patroni gets SIGTERM and stops its PostgreSQL.
func (c *patroniCluster) startMember(m *patroniMember, owner postgres.OSUser) {
	t := c.t
	t.Helper()
	log, err := os.Create(m.logf)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command("/usr/bin/patroni", m.config)
	m.cmd.Dir = filepath.Dir(m.data)
	m.cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", "HOME=" + filepath.Dir(m.data)}
	m.cmd.Stdout, m.cmd.Stderr = log, log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: owner.UID, Gid: owner.GID},
		Pdeathsig:  syscall.SIGTERM,
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.done = make(chan error, 1)
	go func() { m.done <- m.cmd.Wait(); log.Close() }()
	t.Cleanup(func() { c.stopMember(m) })
}

// stopMember stops Patroni with SIGTERM (which stops its PostgreSQL
// first) and checks that no process is left in the member's directory.
func (c *patroniCluster) stopMember(m *patroniMember) {
	t := c.t
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		t.Errorf("patroni %s did not stop within 60 s of SIGTERM", m.name)
		m.cmd.Process.Kill()
		<-m.done
	}
	// Patroni stopped while it was starting PostgreSQL (a member that
	// rejoins) leaves that PostgreSQL running: stop it as an operator would.
	if st, err := postgres.Status(m.data); err == nil && st.Alive {
		t.Logf("patroni %s left its PostgreSQL (pid %d) running; stopping it", m.name, st.PID)
		if err := postgres.Stop(context.Background(), m.data, 30*time.Second); err != nil {
			t.Errorf("stopping the PostgreSQL of %s: %v", m.name, err)
		}
	}
	for _, pid := range processesUnder(filepath.Dir(m.data)) {
		t.Errorf("process %d left in %s after Patroni stopped; killed", pid, filepath.Dir(m.data))
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// processesUnder lists the live processes (not zombies) whose working
// directory is dir or below it.
func processesUnder(dir string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if state, _, ok := postgres.ProcessState(pid); !ok || state == 'Z' || state == 'X' {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func find(ms []patroniMemberState, name string) (patroniMemberState, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m, true
		}
	}
	return patroniMemberState{}, false
}

// state is the cluster as the first member's REST API that answers
// reports it.
func (c *patroniCluster) state() ([]patroniMemberState, error) {
	var last error
	client := http.Client{Timeout: 2 * time.Second}
	for _, m := range c.members {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/cluster", m.restPort))
		if err != nil {
			last = err
			continue
		}
		var doc struct {
			Members []patroniMemberState `json:"members"`
		}
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err != nil {
			last = err
			continue
		}
		return doc.Members, nil
	}
	return nil, last
}

func (c *patroniCluster) waitFor(what string, within time.Duration, ok func([]patroniMemberState) bool) []patroniMemberState {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ms, err := c.state()
		if err == nil && ok(ms) {
			return ms
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("Patroni: %s: not within %s: %+v %v\n%s", what, within, ms, err, c.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitHealthy waits until leader leads, on a new timeline if it changed,
// and the other member is its synchronous standby, running.
func (c *patroniCluster) waitHealthy(leader string) []patroniMemberState {
	c.t.Helper()
	return c.waitFor(leader+" leading, the other member its synchronous standby", 120*time.Second, func(ms []patroniMemberState) bool {
		var leaders, standbys int
		for _, m := range ms {
			switch {
			case m.Name == leader && m.Role == "leader" && m.State == "running":
				leaders++
			case m.Name != leader && m.Role == "sync_standby" && m.State == "running":
				standbys++
			}
		}
		return len(ms) == 2 && leaders == 1 && standbys == 1
	})
}

func (c *patroniCluster) leader() string {
	c.t.Helper()
	ms := c.waitFor("a leader", 60*time.Second, func(ms []patroniMemberState) bool {
		for _, m := range ms {
			if m.Role == "leader" && m.State == "running" {
				return true
			}
		}
		return false
	})
	for _, m := range ms {
		if m.Role == "leader" {
			return m.Name
		}
	}
	return ""
}

func (c *patroniCluster) member(name string) *patroniMember {
	for _, m := range c.members {
		if m.name == name {
			return m
		}
	}
	c.t.Fatalf("no member %s", name)
	return nil
}

func (c *patroniCluster) other(name string) string {
	for _, m := range c.members {
		if m.name != name {
			return m.name
		}
	}
	return ""
}

// switchover runs patronictl switchover from the leader to the candidate,
// as an operator does.
func (c *patroniCluster) switchover(leader, candidate string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "patronictl", "-c", c.members[0].config, "switchover", c.scope,
		"--leader", leader, "--candidate", candidate, "--force").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("Successfully switched over")) {
		c.t.Fatalf("patronictl switchover: %v\n%s\n%s", err, out, c.logs())
	}
}

// killPostmaster SIGKILLs the member's postmaster, as a crash of the
// leader's machine or of PostgreSQL itself would end it; its pid is the
// first line of postmaster.pid.
func (c *patroniCluster) killPostmaster(name string) int {
	c.t.Helper()
	pf, err := postgres.ReadPIDFile(c.member(name).data)
	if err != nil || !postgres.Running(pf.PID) {
		c.t.Fatalf("the postmaster of %s: %+v %v", name, pf, err)
	}
	if err := syscall.Kill(pf.PID, syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	return pf.PID
}

// superuserURL reaches one member's server as the superuser.
func (c *patroniCluster) superuserURL(name, db string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", patroniSuperuserPassword, c.member(name).pgPort, db)
}

// exec runs sql as the superuser on the named member.
func (c *patroniCluster) exec(name, db, sql string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.superuserURL(name, db))
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
}

// databaseURL is the multi-host URL sindrid is given: both members, the
// one that takes writes chosen at each connection.
func (c *patroniCluster) databaseURL() string {
	hosts := make([]string, len(c.members))
	for i, m := range c.members {
		hosts[i] = fmt.Sprintf("127.0.0.1:%d", m.pgPort)
	}
	return fmt.Sprintf("postgres://%s:%s@%s/sindri?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		metaUser, metaPassword, strings.Join(hosts, ","))
}

func (c *patroniCluster) logs() string {
	var b strings.Builder
	for _, m := range c.members {
		out, _ := os.ReadFile(m.logf)
		if len(out) > 4000 {
			out = out[len(out)-4000:]
		}
		fmt.Fprintf(&b, "--- patroni %s (tail)\n%s\n", m.name, out)
	}
	return b.String()
}
