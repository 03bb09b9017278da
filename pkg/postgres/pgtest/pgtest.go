// Package pgtest starts real PostgreSQL clusters for tests: a data
// directory made by initdb once per test binary and copied for each test,
// configured and started through a postgres.Cluster, stopped at cleanup.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// BinPattern is Debian's layout of PostgreSQL binaries.
const BinPattern = postgres.DefaultBinPattern

// Major is the PostgreSQL version the tests use.
const Major = "15"

// Dir makes a directory that the postgres OS user can traverse (a
// t.TempDir is private to root) and removes it at cleanup.
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sindri-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Owner is the postgres OS user; it fails tests not run as root (see
// testenv.RequireRoot).
func Owner(t testing.TB) postgres.OSUser {
	t.Helper()
	testenv.RequireRoot(t, "run PostgreSQL as the postgres user")
	u, err := postgres.LookupUser("postgres")
	if err != nil {
		t.Fatalf("%v (make deps installs postgresql-15, which makes the user)", err)
	}
	return u
}

// BinDir is the directory of the test version's binaries.
func BinDir(t testing.TB) string {
	t.Helper()
	dir, err := postgres.BinDir(BinPattern, Major)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// FreePort returns a TCP port that nothing listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

var template struct {
	once sync.Once
	dir  string
	err  error
}

// Template is an initdb'd, never started data directory, made once per
// test binary; copy it, don't start it.
func Template(t testing.TB) string {
	t.Helper()
	owner := Owner(t)
	template.once.Do(func() {
		dir, err := os.MkdirTemp("", "sindri-pgtemplate-")
		if err != nil {
			template.err = err
			return
		}
		os.Chmod(dir, 0o755)
		template.dir = filepath.Join(dir, "data")
		c := postgres.Cluster{BinDir: BinDir(t), DataDir: template.dir, Owner: owner}
		template.err = c.Init(context.Background())
	})
	if template.err != nil {
		t.Fatal(template.err)
	}
	return template.dir
}

// CopyTemplate copies the template data directory to dst (which must not
// exist), keeping owners and modes.
func CopyTemplate(t testing.TB, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", Template(t), dst).CombinedOutput(); err != nil {
		t.Fatalf("copying the template data directory: %v %s", err, out)
	}
}

// ClientFiles are an instance's client TLS files, as a client writes them.
type ClientFiles struct{ CA, Cert, Key string }

// Instance is a running cluster set up as sindri sets up an instance.
type Instance struct {
	postgres.Cluster
	Process      *postgres.Process
	PasswordRole string
	Password     string
	Certificates postgres.Certificates
	ClientFiles  ClientFiles
}

// StartInstance copies the template, configures it with fresh TLS
// material and a password role, starts it and waits until it is ready.
// Cleanup stops it.
func StartInstance(t testing.TB) *Instance {
	t.Helper()
	i := NewInstance(t)
	i.Start(t)
	return i
}

// NewInstance copies the template and chooses the instance's settings,
// TLS material and password role, without configuring or starting it:
// a test may change the data directory first.
func NewInstance(t testing.TB) *Instance {
	t.Helper()
	owner := Owner(t)
	base := Dir(t)
	i := &Instance{
		Cluster: postgres.Cluster{
			DataDir:   filepath.Join(base, "data"),
			SocketDir: filepath.Join(base, "socket"),
			Port:      FreePort(t),
			BinDir:    BinDir(t),
			Owner:     owner,
		},
		PasswordRole: "sindri",
		Password:     "test-password-123",
	}
	CopyTemplate(t, i.DataDir)
	if err := os.Mkdir(i.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := owner.Chown(i.SocketDir, false); err != nil {
		t.Fatal(err)
	}
	certs, err := postgres.NewCertificates([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	i.Certificates = certs
	i.Settings = postgres.Settings{
		ListenAddresses: "*", SharedBuffers: "16MB",
		TLS: &certs, PasswordRole: i.PasswordRole, ClusterName: "pgtest", Clone: true,
	}
	i.ClientFiles = writeClientFiles(t, base, certs)
	return i
}

// Start configures and starts the instance as sindri starts a new one
// (client roles set up through a session of sindri's own); cleanup stops
// it.
func (i *Instance) Start(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		if err := postgres.Stop(context.Background(), i.DataDir, 10*time.Second); err != nil {
			t.Errorf("stopping the test cluster: %v", err)
		}
	})
	i.Configure(t)
	session := i.start(t)
	defer session.Close(context.Background())
	verifier, err := postgres.PasswordVerifier(i.Password)
	if err != nil {
		t.Fatal(err)
	}
	if err := session.SetUpClientRoles(context.Background(), i.PasswordRole, verifier, false); err != nil {
		t.Fatal(err)
	}
}

// Configure writes sindri's settings into the data directory.
func (i *Instance) Configure(t testing.TB) {
	t.Helper()
	if err := i.Cluster.Configure(); err != nil {
		t.Fatal(err)
	}
}

// Restart starts the postmaster (again) and waits until it is ready.
func (i *Instance) Restart(t testing.TB) {
	t.Helper()
	i.start(t).Close(context.Background())
}

// start starts the postmaster and returns the first session of sindri's
// own in it, as an instance's start does.
func (i *Instance) start(t testing.TB) *postgres.Session {
	t.Helper()
	p, err := i.Cluster.Start()
	if err != nil {
		t.Fatal(err)
	}
	i.Process = p
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	session, err := i.Ready(c, p)
	if err != nil {
		t.Fatal(err)
	}
	return session
}

// SocketURL reaches the cluster as the superuser over its private socket.
func (i *Instance) SocketURL() string {
	return postgres.SocketURL(i.SocketDir, i.Port, "postgres", "postgres")
}

// SuperuserURL is SocketURL for a session like sindri's own (see
// postgres.SessionOptions).
func (i *Instance) SuperuserURL() string {
	return postgres.SuperuserURL(i.SocketDir, i.Port, "postgres")
}

// PasswordURL logs in over TLS as the password role, as a client does.
func (i *Instance) PasswordURL() string {
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/postgres?sslmode=require", i.PasswordRole, i.Password, i.Port)
}

func writeClientFiles(t testing.TB, dir string, c postgres.Certificates) ClientFiles {
	t.Helper()
	f := ClientFiles{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "client.crt"), Key: filepath.Join(dir, "client.key")}
	for path, content := range map[string]string{f.CA: c.CA, f.Cert: c.ClientCert, f.Key: c.ClientKey} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// String names the instance in test logs.
func (i *Instance) String() string { return fmt.Sprintf("cluster on port %d (%s)", i.Port, i.DataDir) }

// StartSource starts a copy of the template as a production server runs
// its own data: with Postgres's own configuration files and only the
// given settings ("name=value") besides its port and private socket on the
// command line, none of sindri's pins. It stands for the server a user
// uploads, pulls or replicates from. Cleanup stops it.
func StartSource(t testing.TB, settings ...string) *Instance {
	t.Helper()
	owner := Owner(t)
	base := Dir(t)
	i := &Instance{Cluster: postgres.Cluster{
		DataDir:   filepath.Join(base, "data"),
		SocketDir: filepath.Join(base, "socket"),
		Port:      FreePort(t),
		BinDir:    BinDir(t),
		Owner:     owner,
	}}
	CopyTemplate(t, i.DataDir)
	if err := os.Mkdir(i.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := owner.Chown(i.SocketDir, false); err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("-c port=%d -c listen_addresses='' -c unix_socket_directories=%s", i.Port, i.SocketDir)
	for _, s := range settings {
		opts += " -c " + s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := i.Command(ctx, "pg_ctl", nil,
		"-D", i.DataDir, "-o", opts, "-l", filepath.Join(i.SocketDir, "source.log"), "-w", "start")
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(i.SocketDir, "source.log"))
		t.Fatalf("starting the source server: %v\n%s\n%s", err, out, log)
	}
	t.Cleanup(func() {
		if err := postgres.Stop(context.Background(), i.DataDir, 10*time.Second); err != nil {
			t.Errorf("stopping the source server: %v", err)
		}
	})
	return i
}
