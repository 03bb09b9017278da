package store

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/secrets"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// pgServer is a PostgreSQL server of one test's own, on 127.0.0.1 (trust
// authentication) and a unix socket: a primary, or a streaming standby of
// one, to fail over between without Patroni (spec's TestMetadataFailover
// runs the real thing).
type pgServer struct {
	t      *testing.T
	data   string
	sock   string
	port   int
	cmd    *exec.Cmd
	exited chan error
}

func postgresCredential(t *testing.T) *syscall.Credential {
	t.Helper()
	testenv.RequireRoot(t, "run PostgreSQL as the postgres user")
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

func asPostgres(t *testing.T, dir, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(pgtest.BinDir(t), name), args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: postgresCredential(t), Pdeathsig: syscall.SIGINT}
	return cmd
}

// newPGDir makes a directory the postgres user owns, removed at cleanup.
func newPGDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sindri-store-failover-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cred := postgresCredential(t)
	check(t, os.Chmod(dir, 0o755))
	check(t, os.Chown(dir, int(cred.Uid), int(cred.Gid)))
	return dir
}

// startPrimary initdbs and starts a new server.
func startPrimary(t *testing.T) *pgServer {
	t.Helper()
	dir := newPGDir(t)
	p := &pgServer{t: t, data: filepath.Join(dir, "data"), sock: dir, port: freeTCPPort(t)}
	if out, err := asPostgres(t, dir, "initdb", "-D", p.data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.start()
	return p
}

// startStandby copies primary with pg_basebackup and starts the copy as
// its streaming standby.
func startStandby(t *testing.T, primary *pgServer) *pgServer {
	t.Helper()
	dir := newPGDir(t)
	s := &pgServer{t: t, data: filepath.Join(dir, "data"), sock: dir, port: freeTCPPort(t)}
	if out, err := asPostgres(t, dir, "pg_basebackup", "-D", s.data, "-R", "-X", "stream", "--no-sync",
		"-h", primary.sock, "-p", strconv.Itoa(primary.port), "-U", "postgres").CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	s.start()
	return s
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testLogger logs with -v, and nowhere without.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (p *pgServer) start() {
	t := p.t
	t.Helper()
	p.cmd = asPostgres(t, filepath.Dir(p.data), "postgres", "-D", p.data, "-k", p.sock,
		"-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(p.port), "-c", "fsync=off",
		"-c", "max_connections=50", "-c", "hot_standby=on")
	log, err := os.Create(filepath.Join(filepath.Dir(p.data), "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.exited = make(chan error, 1)
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(p.stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, p.url("postgres"))
		if err == nil {
			conn.Close(ctx)
			return
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("postgres on port %d does not accept connections: %v\n%s", p.port, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop shuts the server down fast (as a switchover does: its sessions get
// 57P01) and waits until it has exited.
func (p *pgServer) stop() {
	if p.cmd == nil || p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.exited:
		p.exited <- err
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
	}
}

func (p *pgServer) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, db)
}

func (p *pgServer) exec(sql string) {
	p.t.Helper()
	conn, err := pgx.Connect(ctx, p.url("postgres"))
	if err != nil {
		p.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		p.t.Fatalf("%s: %v", sql, err)
	}
}

// multiHost is a URL naming hosts in order, as database_url may.
func multiHost(db, attrs string, ports ...int) string {
	hosts := make([]string, len(ports))
	for i, p := range ports {
		hosts[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	u := fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable&connect_timeout=2", strings.Join(hosts, ","), db)
	if attrs != "" {
		u += "&target_session_attrs=" + attrs
	}
	return u
}

// A multi-host URL with target_session_attrs=read-write passes over a
// host that is down and one that is a standby, and connects to the
// primary, whatever the order; with no writable host, Open fails with
// ErrUnavailable (wait and retry), while a login the server refuses does
// not (a configuration error).
func TestMultiHostURLConnectsToTheWritableHost(t *testing.T) {
	primary := startPrimary(t)
	standby := startStandby(t, primary)
	down := freeTCPPort(t)

	s, err := Open(ctx, multiHost("postgres", "read-write", down, standby.port, primary.port))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var port int
	var recovering bool
	check(t, s.pool.QueryRow(ctx, "select inet_server_port(), pg_is_in_recovery()").Scan(&port, &recovering))
	if port != primary.port || recovering {
		t.Fatalf("connected to port %d (recovering: %v), want the primary's %d", port, recovering, primary.port)
	}
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}

	_, err = Open(ctx, multiHost("postgres", "read-write", down, standby.port))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("no writable host: %v, want ErrUnavailable", err)
	}
	// Without target_session_attrs the standby is taken, and a write
	// there is refused as read-only: unavailable too, not the caller's
	// fault.
	ro, err := Open(ctx, multiHost("postgres", "", standby.port))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	waitForReplay(t, ro, primary)
	_, err = ro.CreateImage(ctx, ImageInput{BackedUpAt: time.Now()})
	if !errors.Is(err, ErrUnavailable) || pgCode(err) != "25006" {
		t.Fatalf("a write on the standby: %v, want ErrUnavailable (SQLSTATE 25006)", err)
	}
	_, err = Open(ctx, multiHost("no_such_database", "read-write", down, primary.port))
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("an unknown database: %v, want an error other than ErrUnavailable", err)
	}
}

// waitForReplay waits until the standby that s is connected to has
// replayed everything written on primary so far.
func waitForReplay(t *testing.T, s *Store, primary *pgServer) {
	t.Helper()
	conn, err := pgx.Connect(ctx, primary.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var lsn string
	check(t, conn.QueryRow(ctx, "select pg_current_wal_lsn()::text").Scan(&lsn))
	waitFor(t, "the standby to replay "+lsn, func() bool {
		var ok bool
		check(t, s.pool.QueryRow(ctx, "select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok))
		return ok
	})
}

// A failover between a primary and its standby, as Patroni does it: the
// primary shuts down fast, the standby is promoted. Meanwhile every call
// fails with ErrUnavailable and nothing else; afterwards the store works
// on the new primary without being reopened, with what was written
// before, and the secrets lock is held again there.
func TestStoreFollowsAFailover(t *testing.T) {
	primary := startPrimary(t)
	standby := startStandby(t, primary)
	s, err := Open(ctx, multiHost("postgres", "read-write", primary.port, standby.port))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(t.TempDir(), "secrets.key")
	if _, err := s.LoadKeyring(ctx, keyPath, true); err != nil {
		t.Fatal(err)
	}
	lock, err := s.HoldSecretsLock(ctx, keyPath, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	img := newImage(t, s, "before")
	before := newInstance(t, s, img.ID, "ada@example.com")
	check(t, s.SetInstanceCredentials(ctx, before.ID, testCreds("before")))

	primary.stop()
	if _, err := s.GetInstance(ctx, before.ID); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a read with the primary gone: %v, want ErrUnavailable", err)
	}
	waitFor(t, "the secrets lock to be seen lost", func() bool { return !lock.Held() })
	if err := s.SetInstanceCredentials(ctx, before.ID, testCreds("between")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("sealing without the secrets lock: %v, want ErrUnavailable", err)
	}
	standby.exec("select pg_promote()")

	var tries int
	for deadline := time.Now().Add(30 * time.Second); ; tries++ {
		_, err := s.GetInstance(ctx, before.ID)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("during the failover: %v, want ErrUnavailable", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store does not answer 30 s after the promotion: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := s.GetInstance(ctx, before.ID)
	if err != nil || got.Credentials != testCreds("before") {
		t.Fatalf("the instance written before the failover: %+v %v", got.Credentials, err)
	}
	waitFor(t, "the secrets lock to be held again", lock.Held)
	var holders int
	check(t, s.pool.QueryRow(ctx, `select count(*) from pg_locks
		where locktype = 'advisory' and mode = 'ShareLock' and granted`).Scan(&holders))
	if holders != 1 {
		t.Fatalf("%d sessions hold the secrets lock on the new primary, want 1", holders)
	}
	after := newInstance(t, s, img.ID, "ada@example.com")
	check(t, s.SetInstanceCredentials(ctx, after.ID, testCreds("after")))
	if got := must[Instance](t)(s.GetInstance(ctx, after.ID)); got.Credentials != testCreds("after") {
		t.Fatalf("credentials sealed after the failover read back as %+v", got.Credentials)
	}
	_, err = s.LockSecrets(ctx, true)
	wantErr(t, err, ErrLocked) // a rotation is kept out again
	lock.Release()
	must[func()](t)(s.LockSecrets(ctx, true))()
}

// Once one pooled connection is found lost, the others (to the same
// server) are closed too: the calls after the first failure connect
// afresh instead of failing one by one on dead connections.
func TestALostConnectionClosesThePool(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	// Several connections in the pool, each used within the last second
	// (older ones are pinged when taken, which would hide dead ones).
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.pool.Exec(ctx, "select pg_sleep(0.2)")
			check(t, err)
		}()
	}
	wg.Wait()
	if n := s.pool.Stat().IdleConns(); n < 4 {
		t.Fatalf("%d idle connections, want at least 4", n)
	}
	terminateSessions(t, s, "")
	var failed int
	for range 6 {
		if _, err := s.ListImages(ctx); err != nil {
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("on a terminated connection: %v, want ErrUnavailable", err)
			}
			failed++
		}
	}
	if failed > 1 {
		t.Fatalf("%d of 6 calls failed after the server ended every session, want at most 1", failed)
	}
}

// terminateSessions ends the store's database's sessions (those running
// a query like `like` now, when given) from a connection of the test's own,
// as a server that shuts down does (SQLSTATE 57P01).
func terminateSessions(t *testing.T, s *Store, like string) int {
	t.Helper()
	admin, err := pgx.Connect(ctx, s.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var n int
	check(t, admin.QueryRow(ctx, `select count(pg_terminate_backend(pid)) from pg_stat_activity
		where datname = current_database() and pid <> pg_backend_pid() and ($1 = '' or (query like $1 and state = 'active'))`, like).Scan(&n))
	return n
}

// Migrate's advisory lock belongs to its session: a Migrate whose
// connection is lost fails with ErrUnavailable, the file under way rolled
// back, and a Migrate run again applies the rest once.
func TestMigrateWhoseConnectionIsLostIsRunAgain(t *testing.T) {
	t.Parallel()
	s, _ := openDB(t)
	slow := fstest.MapFS{
		"0001_a.sql": {Data: []byte("create table a (x int);")},
		"0002_b.sql": {Data: []byte("create table b (x int); select pg_sleep(60);")},
	}
	done := make(chan error, 1)
	var applied []string
	go func() {
		var err error
		applied, err = s.migrateFS(ctx, slow)
		done <- err
	}()
	waitFor(t, "the slow migration to run", func() bool {
		var n int
		check(t, s.pool.QueryRow(ctx, `select count(*) from pg_stat_activity
			where datname = current_database() and query like '%pg_sleep(60)%' and state = 'active' and pid <> pg_backend_pid()`).Scan(&n))
		return n == 1
	})
	if n := terminateSessions(t, s, "%pg_sleep(60)%"); n != 1 {
		t.Fatalf("terminated %d sessions, want the migration's", n)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "0002_b.sql") {
			t.Fatalf("the migration whose session ended: %v, want ErrUnavailable naming 0002_b.sql", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the migration did not end with its session")
	}
	if len(applied) != 1 || applied[0] != "0001_a" {
		t.Fatalf("applied %v before the loss, want [0001_a]", applied)
	}
	if tableExists(t, s, "b") {
		t.Fatal("table b of the interrupted file exists")
	}
	fixed := fstest.MapFS{"0001_a.sql": slow["0001_a.sql"], "0002_b.sql": {Data: []byte("create table b (x int);")}}
	again, err := s.migrateFS(ctx, fixed)
	if err != nil || len(again) != 1 || again[0] != "0002_b" {
		t.Fatalf("Migrate again: %v %v, want [0002_b]", again, err)
	}
	if got := recorded(t, s); strings.Join(got, ",") != "0001_a,0002_b" {
		t.Fatalf("schema_migrations %v", got)
	}
}

// A key rotation that takes the secrets lock in the moment sindrid's lock
// session is lost (its leader changed) is taken up, not undone: sindrid
// seals nothing while it cannot hold the lock, then holds it again and
// reads the key file again, so that it seals with the new key and opens
// what the rotation sealed again.
func TestSecretsLockLostToARotationIsTakenUp(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	keyPath := s.Keyring().Path()
	oldKey := s.Keyring().Current()
	img := newImage(t, s, "img")
	inst := newInstance(t, s, img.ID, "ada@example.com")
	check(t, s.SetInstanceCredentials(ctx, inst.ID, testCreds("a")))
	lock, err := s.HoldSecretsLock(ctx, keyPath, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()

	// The rotation queues for the exclusive lock, and gets it as soon as
	// sindrid's session ends.
	rotation, err := pgx.Connect(ctx, s.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer rotation.Close(ctx)
	locked := make(chan error, 1)
	go func() {
		_, err := rotation.Exec(ctx, "select pg_advisory_lock($1)", secretsLockKey)
		locked <- err
	}()
	waitFor(t, "the rotation to queue for the lock", func() bool {
		var n int
		check(t, s.pool.QueryRow(ctx, `select count(*) from pg_locks where locktype = 'advisory' and not granted`).Scan(&n))
		return n == 1
	})
	var lockPID int
	check(t, s.pool.QueryRow(ctx, `select pid from pg_locks where locktype = 'advisory' and mode = 'ShareLock' and granted`).Scan(&lockPID))
	var ended bool
	check(t, s.pool.QueryRow(ctx, "select pg_terminate_backend($1)", lockPID).Scan(&ended))
	if err := <-locked; err != nil || !ended {
		t.Fatalf("the rotation's lock: %v (terminated: %v)", err, ended)
	}
	waitFor(t, "the lock to be seen lost", func() bool { return !lock.Held() })
	if err := s.SetInstanceCredentials(ctx, inst.ID, testCreds("b")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("sealing while a rotation holds the lock: %v, want ErrUnavailable", err)
	}

	// The rotation, as `sindrid secrets rotate-key` does it.
	rotator := openURL(t, s.pool.Config().ConnString())
	if _, err := rotator.LoadKeyring(ctx, keyPath, false); err != nil {
		t.Fatal(err)
	}
	newKey, err := rotator.Keyring().Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rotator.SealSecrets(ctx, nil); err != nil {
		t.Fatal(err)
	}
	check(t, rotator.Keyring().Retain([]string{newKey}))
	if _, err := rotation.Exec(ctx, "select pg_advisory_unlock($1)", secretsLockKey); err != nil {
		t.Fatal(err)
	}

	waitFor(t, "the lock to be held again", lock.Held)
	if got := s.Keyring().Current(); got != newKey || got == oldKey {
		t.Fatalf("sindrid's key after the rotation: %s, want the new %s", got, newKey)
	}
	if got := must[Instance](t)(s.GetInstance(ctx, inst.ID)); got.Credentials != testCreds("a") {
		t.Fatalf("credentials sealed again by the rotation read back as %+v", got.Credentials)
	}
	check(t, s.SetInstanceCredentials(ctx, inst.ID, testCreds("c")))
	if v := raw(t, s, "instances", "password", inst.ID); !strings.HasPrefix(v, secrets.Prefix+newKey+":") {
		t.Fatalf("sealed after the rotation with %q, want key %s", v, newKey)
	}
	if ids := must[map[string]int64](t)(s.SealedKeyIDs(ctx)); len(ids) != 1 || ids[newKey] == 0 {
		t.Fatalf("sealed key ids %v, want only %s", ids, newKey)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20 s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
