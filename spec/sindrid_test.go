// Package spec drives the real sindrid and sindri binaries end to end.
package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/testenv"
)

var sindrid string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sindri-spec-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sindrid = filepath.Join(dir, "sindrid")
	if out, err := exec.Command("go", "build", "-o", sindrid, "../cmd/sindrid").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building sindrid: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigErrorsExitTwoWithOneLine(t *testing.T) {
	data := t.TempDir()
	base := fmt.Sprintf("data_path = %q\nshared_secret = \"0123456789abcdef0123\"\n", data)
	cases := []struct {
		name, config, want string
	}{
		{"unknown key", base + "[http]\nlisten_adress = \":1\"\n", `"http.listen_adress"`},
		{"bad port range", base + "[postgres]\nmin_port = 7000\nmax_port = 6000\n", "postgres.min_port"},
		{"bad driver", base + "[storage]\ndriver = \"ext4\"\n", "storage.driver"},
		{"bad size", base + "[storage]\nloopback_size = \"lots\"\n", "storage.loopback_size"},
		{"no shared secret", fmt.Sprintf("data_path = %q\n", data), "shared_secret"},
		{"syntax", base + "[http\n", "to end table name"},
		{"oauth for anybody", base + "[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\nredirect_url = \"https://s.example.com/oauth_callback\"\n",
			"trusted_user_email_domain is empty, so the OAuth login would let in any account the provider knows (with Google, anybody's): set trusted_user_email_domain (e.g. \"@example.com\"), or set oauth.allow_any_email = true"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(sindrid, "-config", writeConfig(t, c.config))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2; stderr: %s", err, stderr.String())
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, c.want) {
				t.Fatalf("stderr = %q, want one line naming %s", msg, c.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		err := exec.Command(sindrid, "-config", filepath.Join(t.TempDir(), "nope.toml")).Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Fatalf("exit: %v, want status 2", err)
		}
	})
}

func freePort(t testing.TB) string {
	t.Helper()
	handedOutMu.Lock()
	defer handedOutMu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		// The kernel may hand a port it has just freed out again: a test
		// asking for two (sindrid's HTTPS and plain listeners) got the same.
		if !handedOut[addr] {
			handedOut[addr] = true
			return addr
		}
	}
}

// handedOut holds the addresses freePort has returned in this process.
var (
	handedOutMu sync.Mutex
	handedOut   = map[string]bool{}
)

// start runs sindrid with the config until its health check answers; see
// startArgv.
func start(t testing.TB, configPath, addr string) (stop func() error) {
	t.Helper()
	return startArgv(t, []string{sindrid, "-config", configPath}, addr)
}

// startArgv is start with a whole command line: it runs argv until the
// health check on addr answers and returns a function that stops it with
// SIGTERM and reports how it exited.
func startArgv(t testing.TB, argv []string, addr string) (stop func() error) {
	t.Helper()
	_, stop = startLogged(t, argv, addr, nil)
	return stop
}

// startLogged is startArgv that also copies the process's output to log,
// unless nil, and returns its pid.
func startLogged(t testing.TB, argv []string, addr string, log io.Writer) (pid int, stop func() error) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if log != nil {
		both := io.MultiWriter(&out, log)
		cmd.Stdout, cmd.Stderr = both, both
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	for ready := false; !ready; {
		if resp, err := http.Get("http://" + addr + "/health_check"); err == nil {
			resp.Body.Close()
			ready = resp.StatusCode == 200
		}
		if ready {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("%s exited before it was ready: %v\n%s", argv[0], err, out.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("%s not ready after 60s\n%s", argv[0], out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("%w\n%s", err, out.String())
			}
			return nil
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("%s did not stop within 30s after SIGTERM\n%s", argv[0], out.String())
		}
	}
	t.Cleanup(func() { _ = stop() })
	return cmd.Process.Pid, stop
}

func TestStartsOnLoopbackBtrfsAndMountsItAgain(t *testing.T) {
	testenv.RequireRoot(t, "mount the loopback BTRFS")
	base := t.TempDir()
	data := filepath.Join(base, "data")
	t.Cleanup(func() { _ = exec.Command("umount", data).Run() })
	addr := freePort(t)
	socketDir, err := os.MkdirTemp("", "ss")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(socketDir) })
	cfg := writeConfig(t, fmt.Sprintf(`environment = "development"
data_path = %q
shared_secret = "dev-secret"
[http]
insecure_listen_address = %q
[storage]
loopback_size = "512MiB"
[postgres]
socket_dir = %q
`, data, addr, socketDir))

	// The postgres user cannot pass a private temporary directory, and
	// sindrid says which one to open.
	cmd := exec.Command(sindrid, "-config", cfg)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "chmod o+x") {
		t.Fatalf("sindrid with a data_path the postgres user cannot reach: %v\n%s", err, out)
	}
	exec.Command("umount", data).Run()
	for d := base; d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}

	stop := start(t, cfg, addr)
	var st syscall.Statfs_t
	if err := syscall.Statfs(data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != 0x9123683e {
		t.Fatalf("data_path is not on BTRFS after start (statfs type %#x)", st.Type)
	}
	marker := filepath.Join(data, "marker")
	if err := os.WriteFile(marker, []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	metaData := filepath.Join(data, "meta", "data")
	if st, err := postgres.Status(metaData); err != nil || !st.Alive {
		t.Fatalf("embedded metadata Postgres not running: %+v, %v", st, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("sindrid exit after SIGTERM: %v", err)
	}
	if pids := postgres.Postmasters(metaData); len(pids) != 0 {
		t.Fatalf("the embedded metadata Postgres outlived sindrid: %v", pids)
	}

	// As after a reboot: nothing mounted, the loopback file still there.
	if out, err := exec.Command("umount", data).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("marker visible without the mount: %v", err)
	}
	stop = start(t, cfg, addr)
	if got, err := os.ReadFile(marker); err != nil || string(got) != "kept" {
		t.Fatalf("after restart the loopback filesystem is not back: %q, %v", got, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("sindrid exit after SIGTERM: %v", err)
	}
}
