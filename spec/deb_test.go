package spec

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// debVersion is the version the test builds the package with, to check
// that make deb passes VERSION through to the package.
const debVersion = "0.1.0+spec"

// TestDebPackage builds the Debian package with make deb, installs it with
// dpkg, checks its files, starts sindrid the way the installed systemd
// unit's ExecStart does (with a test configuration instead of
// /etc/sindri/config.toml; systemd is not PID 1 here), stops it with
// SIGTERM and purges the package.
func TestDebPackage(t *testing.T) {
	testenv.RequireRoot(t, "dpkg -i, and sindrid mounts a loopback BTRFS")
	for _, tool := range []string{"dpkg", "dpkg-query", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("no %s: %v (dpkg and dpkg-query come with every Debian system, make with `apt-get install make`)", tool, err)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "sindri").Output(); err == nil && strings.TrimSpace(string(out)) != "not-installed" {
		t.Skipf("a sindri package is installed already (%s); the test would replace and purge it", out)
	}

	// Build.
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("make", "-C", root, "deb", "VERSION="+debVersion)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	deb := filepath.Join(root, "bin", "sindri_"+debVersion+"_amd64.deb")
	if _, err := os.Stat(deb); err != nil {
		t.Fatalf("make deb did not make %s: %v", deb, err)
	}
	t.Cleanup(func() { os.Remove(deb) })

	// Install.
	t.Cleanup(func() { _ = exec.Command("dpkg", "--purge", "sindri").Run() })
	install := exec.Command("dpkg", "-i", deb)
	out, err := install.CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "systemctl enable --now sindrid") {
		t.Errorf("postinst does not say how to configure and start sindrid:\n%s", out)
	}
	status, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", "sindri").Output()
	if err != nil || string(status) != "installed "+debVersion {
		t.Fatalf("dpkg-query after dpkg -i: %q, %v; want installed %s", status, err, debVersion)
	}

	// Files and modes (all root's).
	files := []struct {
		path string
		mode os.FileMode
	}{
		{"/usr/bin/sindrid", 0o755},
		{"/usr/bin/sindri", 0o755},
		{"/usr/lib/sindri/sindri-upload-shell", 0o755},
		{"/lib/systemd/system/sindrid.service", 0o644},
		{"/etc/sindri", os.ModeDir | 0o750},
		{"/etc/sindri/config.toml.example", 0o644},
		{"/usr/share/sindri/setup-upload-account", 0o755},
		{"/usr/share/sindri/sshd_config.d/sindri-upload.conf", 0o644},
	}
	for _, f := range files {
		fi, err := os.Lstat(f.path)
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if fi.Mode() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode(), f.mode)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s: owned by %d:%d, want root", f.path, st.Uid, st.Gid)
		}
	}
	for installed, src := range map[string]string{
		"/etc/sindri/config.toml.example":                    "config.toml.example",
		"/lib/systemd/system/sindrid.service":                "packaging/sindrid.service",
		"/usr/share/sindri/setup-upload-account":             "packaging/setup-upload-account",
		"/usr/share/sindri/sshd_config.d/sindri-upload.conf": "packaging/sshd_config.d/sindri-upload.conf",
	} {
		got, err1 := os.ReadFile(installed)
		want, err2 := os.ReadFile(filepath.Join(root, src))
		if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s (%v, %v)", installed, src, err1, err2)
		}
	}
	if conffiles, err := exec.Command("dpkg-query", "-W", "-f", "${Conffiles}", "sindri").Output(); err != nil || !strings.Contains(string(conffiles), "/etc/sindri/config.toml.example") {
		t.Errorf("config.toml.example is not a conffile: %q, %v", conffiles, err)
	}
	if _, err := os.Stat("/etc/sindri/config.toml"); err == nil {
		t.Errorf("the package made /etc/sindri/config.toml; the administrator writes it")
	}
	if out, err := exec.Command("/usr/bin/sindri", "-h").CombinedOutput(); err != nil && len(out) == 0 {
		t.Errorf("installed sindri does not run: %v", err)
	}
	// Without its uploads directory, sindri-upload-shell says how it is run.
	if out, _ := exec.Command("/usr/lib/sindri/sindri-upload-shell").CombinedOutput(); !strings.Contains(string(out), "usage: sindri-upload-shell UPLOADS_DIR") {
		t.Errorf("installed sindri-upload-shell: %q", out)
	}

	// The unit.
	unit := readUnit(t, "/lib/systemd/system/sindrid.service")
	for key, want := range map[string]string{
		"KillMode":                 "process",
		"Restart":                  "on-failure",
		"RuntimeDirectory":         "sindri",
		"RuntimeDirectoryPreserve": "yes",
		"NoNewPrivileges":          "yes",
		"ProtectSystem":            "full",
		"ProtectHome":              "yes",
		"PrivateTmp":               "yes",
	} {
		if got := unit[key]; got != want {
			t.Errorf("sindrid.service: %s=%q, want %q", key, got, want)
		}
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		if out, err := exec.Command(sa, "verify", "/lib/systemd/system/sindrid.service").CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	} else {
		t.Log("no systemd-analyze; unit not verified")
	}
	argv := strings.Fields(unit["ExecStart"])
	if len(argv) == 0 || argv[0] != "/usr/bin/sindrid" {
		t.Fatalf("ExecStart=%q, want /usr/bin/sindrid ...", unit["ExecStart"])
	}
	replaced := false
	configPath := writeDebConfig(t)
	for i, a := range argv {
		if a == "/etc/sindri/config.toml" {
			argv[i], replaced = configPath, true
		}
	}
	if !replaced {
		t.Fatalf("ExecStart=%q does not name /etc/sindri/config.toml", unit["ExecStart"])
	}

	// Run it as the unit would, until the health check answers; SIGTERM
	// must stop it cleanly.
	stop := startArgv(t, argv, debAddr)
	if err := stop(); err != nil {
		t.Errorf("sindrid after SIGTERM: %v", err)
	}

	// Purge.
	if out, err := exec.Command("dpkg", "--purge", "sindri").CombinedOutput(); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	for _, f := range files {
		if _, err := os.Lstat(f.path); err == nil {
			t.Errorf("%s is still there after dpkg --purge", f.path)
		}
	}
	for _, dir := range []string{"/usr/share/sindri", "/usr/lib/sindri"} {
		if _, err := os.Lstat(dir); err == nil {
			t.Errorf("%s is still there after dpkg --purge", dir)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "sindri").Output(); err == nil && strings.TrimSpace(string(out)) != "not-installed" {
		t.Errorf("dpkg-query after purge: %q", out)
	}
}

// debAddr is the plain-HTTP address of the sindrid TestDebPackage runs; set
// by writeDebConfig.
var debAddr string

// writeDebConfig writes a configuration for a small loopback BTRFS under a
// directory the postgres user can traverse, and registers the cleanup of
// what sindrid leaves (postmasters, the mount).
func writeDebConfig(t *testing.T) string {
	t.Helper()
	base := pgtest.Dir(t)
	sock, err := os.MkdirTemp("", "ss")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	data := filepath.Join(base, "data")
	debAddr = freePort(t)
	minPort := pgtest.FreePort(t)
	body := fmt.Sprintf(`environment = "test"
data_path = %q
shared_secret = "spec-shared-secret-0123456789abcdef"
public_hostname = "localhost"
[http]
listen_address = %q
insecure_listen_address = %q
[storage]
loopback_size = "1GiB"
[postgres]
socket_dir = %q
min_port = %d
max_port = %d
shared_buffers = "16MB"
`, data, freePort(t), debAddr, sock, minPort, minPort+20)
	path := filepath.Join(base, "config.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vols, _ := os.ReadDir(filepath.Join(data, "volumes"))
		for _, v := range vols {
			postgres.StopAll(context.Background(), filepath.Join(data, "volumes", v.Name()), 10*time.Second)
		}
		_ = exec.Command("umount", data).Run()
	})
	return path
}

// readUnit returns the Key=value settings of a systemd unit file (the last
// one wins; no continuation lines).
func readUnit(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}
