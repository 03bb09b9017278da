package store

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/testenv"
)

// pgBin is Debian's directory of PostgreSQL 15's binaries.
const pgBin = "/usr/lib/postgresql/15/bin"

// pgPort only names the server's socket file: it listens on no TCP port.
const pgPort = 5432

// server is the one PostgreSQL the package's tests share; each test gets
// a database of its own (newDB). sockDir is "" when not running as root.
var server struct {
	sockDir string
	dbs     atomic.Int64
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() == 0 {
		stop, err := startServer()
		if err != nil {
			fmt.Fprintln(os.Stderr, "store tests: start PostgreSQL:", err)
			return 1
		}
		defer stop()
	}
	return m.Run()
}

// startServer runs initdb and postgres as the postgres OS user in a fresh
// directory under /tmp, waits until the server accepts connections, and
// returns how to stop it and remove the directory.
func startServer() (stop func(), err error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}

	dir, err := os.MkdirTemp("", "sindri-store-test-")
	if err != nil {
		return nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	for _, step := range []func() error{
		func() error { return os.Chmod(dir, 0o755) },
		func() error { return os.Mkdir(data, 0o700) },
		func() error { return os.Chown(data, uid, gid) },
		func() error { return os.Mkdir(sock, 0o755) },
		func() error { return os.Chown(sock, uid, gid) },
	} {
		if err := step(); err != nil {
			cleanup()
			return nil, err
		}
	}
	asPostgres := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(pgBin, name), args...)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT}
		return cmd
	}

	initdb := asPostgres("initdb", "-D", data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		cleanup()
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}

	logFile, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		cleanup()
		return nil, err
	}
	pg := asPostgres("postgres", "-D", data, "-k", sock, "-c", "listen_addresses=",
		"-p", strconv.Itoa(pgPort), "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	pg.Stdout, pg.Stderr = logFile, logFile
	if err := pg.Start(); err != nil {
		logFile.Close()
		cleanup()
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- pg.Wait() }()
	stop = func() {
		pg.Process.Signal(syscall.SIGINT) // fast shutdown
		<-exited
		logFile.Close()
		cleanup()
	}

	server.sockDir = sock
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, serverURL("postgres"))
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return stop, nil
		}
		select {
		case werr := <-exited:
			exited <- werr
		default:
			if time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		stop()
		log, _ := os.ReadFile(logFile.Name())
		return nil, fmt.Errorf("postgres does not accept connections: %v\n%s", err, log)
	}
}

func serverURL(db string) string {
	return fmt.Sprintf("postgres://postgres@/%s?host=%s&port=%d", db, server.sockDir, pgPort)
}

// newDB creates a fresh, empty database for t, dropped at cleanup, and
// returns its URL. It fails t when not running as root (see
// testenv.RequireRoot).
func newDB(t testing.TB) string {
	t.Helper()
	testenv.RequireRoot(t, "run PostgreSQL as the postgres user")
	name := fmt.Sprintf("store_test_%d", server.dbs.Add(1))
	admin := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, serverURL("postgres"))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := admin("create database " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := admin("drop database " + name + " with (force)"); err != nil {
			t.Error(err)
		}
	})
	return serverURL(name)
}

// openDB opens a Store on a fresh, unmigrated database.
func openDB(t testing.TB) (*Store, string) {
	t.Helper()
	url := newDB(t)
	return openURL(t, url), url
}

func openURL(t testing.TB, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// newStore opens a Store on a fresh, migrated database, with a new
// secrets key file of its own.
func newStore(t testing.TB) *Store {
	t.Helper()
	s, _ := openDB(t)
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadKeyring(context.Background(), filepath.Join(t.TempDir(), "secrets.key"), true); err != nil {
		t.Fatal(err)
	}
	return s
}
