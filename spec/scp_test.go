package spec

import (
	"bytes"
	"context"
	"fmt"
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
	"time"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

const uploadAccount = "sindri-upload"

// sshd is a real OpenSSH server on 127.0.0.1 whose configuration includes
// the packaged drop-in for the upload account.
type sshd struct {
	port, key string // the port, and the uploader's private key
	out       *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func runOK(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// setupUploads runs packaging/setup-upload-account with its files under
// etc (the account itself is a real system account, made once), and
// starts sshd with the drop-in it installed.
func setupUploads(t *testing.T, etc, dataPath string) *sshd {
	t.Helper()
	setup, err := filepath.Abs("../packaging/setup-upload-account")
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(etc, "upload_authorized_keys")
	env := append(os.Environ(), "SINDRI_DATA_PATH="+dataPath, "SINDRI_UPLOAD_AUTHORIZED_KEYS="+keys,
		"SSHD_CONFIG_DIR="+filepath.Join(etc, "sshd_config.d"), "SSHD_RELOAD=no")
	runSetup := func() string {
		cmd := exec.Command(setup)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("setup-upload-account: %v\n%s", err, out)
		}
		return string(out)
	}
	runSetup()
	if again := runSetup(); strings.Contains(again, "made") || strings.Contains(again, "installed") {
		t.Errorf("setup-upload-account run again changed things: %s", again)
	}
	u, err := user.Lookup(uploadAccount)
	if err != nil {
		t.Fatal(err)
	}
	if u.Uid == "0" || u.HomeDir != "/nonexistent" {
		t.Fatalf("upload account: %+v", u)
	}
	if shell := strings.TrimSpace(strings.Split(runOK(t, "getent", "passwd", uploadAccount), ":")[6]); !strings.HasSuffix(shell, "nologin") {
		t.Errorf("upload account's shell is %q", shell)
	}
	dropIn, err := os.ReadFile(filepath.Join(etc, "sshd_config.d", "sindri-upload.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Match User sindri-upload", "ChrootDirectory " + dataPath + "/image_uploads",
		"ForceCommand internal-sftp", "AuthorizedKeysFile " + keys, "PermitTTY no"} {
		if !strings.Contains(string(dropIn), want) {
			t.Errorf("installed drop-in lacks %q:\n%s", want, dropIn)
		}
	}
	if fi, err := os.Stat(keys); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("authorized keys file: %v %v", fi, err)
	}

	s := &sshd{port: strconv.Itoa(pgtest.FreePort(t)), key: filepath.Join(etc, "uploader"), out: &syncBuffer{}}
	hostKey := filepath.Join(etc, "host_key")
	runOK(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey)
	runOK(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "uploader", "-f", s.key)
	pub, err := os.ReadFile(s.key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keys, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	// sshd's privilege separation directory, which the package makes.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(etc, "sshd_config")
	pidFile := filepath.Join(etc, "sshd.pid")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`ListenAddress 127.0.0.1
HostKey %s
PidFile %s
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile none
AllowUsers %s
Subsystem sftp internal-sftp
LogLevel VERBOSE
Include %s/*.conf
`, hostKey, pidFile, uploadAccount, filepath.Join(etc, "sshd_config.d"))), 0o600); err != nil {
		t.Fatal(err)
	}
	runOK(t, "/usr/sbin/sshd", "-t", "-f", config)
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", config, "-p", s.port)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", s.out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+s.port)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd does not listen: %v\n%s", err, s.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Run again against the running sshd: it checks the configuration and
	// reloads sshd, which keeps serving.
	env = append(env, "SSHD_RELOAD=yes", "SSHD_CONFIG="+config, "SSHD_PIDFILE="+pidFile)
	if out := runSetup(); !strings.Contains(out, "reloaded sshd") {
		t.Errorf("setup-upload-account did not reload the running sshd: %s", out)
	}
	time.Sleep(500 * time.Millisecond)
	return s
}

func (s *sshd) sshOptions(port string) []string {
	return []string{"-i", s.key, port, s.port, "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
}

// scp copies local to sindri-upload@127.0.0.1:remote with the real scp;
// legacy adds -O (the old SCP protocol instead of SFTP).
func (s *sshd) scp(local, remote string, legacy bool) (string, error) {
	args := s.sshOptions("-P")
	if legacy {
		args = append(args, "-O")
	}
	args = append(args, local, uploadAccount+"@127.0.0.1:"+remote)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "scp", args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("scp did not finish within 30s: %w", ctx.Err())
	}
	return string(out), err
}

// sftp runs a batch of sftp commands as the upload account.
func (s *sshd) sftp(batch string) (string, error) {
	args := append(s.sshOptions("-P"), "-b", "-", uploadAccount+"@127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sftp", args...)
	cmd.Stdin = strings.NewReader(batch)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func statOwner(t *testing.T, path string) (uid, gid uint32, perm os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

func TestSCPUploadThroughChrootedSFTP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: sshd, a system account, a loopback BTRFS")
	}
	for _, bin := range []string{"/usr/sbin/sshd", "ssh-keygen", "scp", "sftp", "useradd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (openssh-server, openssh-client, passwd)", bin)
		}
	}
	// The chroot's parents must be root's and not writable by others:
	// not under /tmp or /var/tmp (1777).
	base, err := os.MkdirTemp("/var/lib", "sindri-scp-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	etc := filepath.Join(base, "etc")
	if err := os.Mkdir(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	dataPath := filepath.Join(base, "data")
	ssh := setupUploads(t, etc, dataPath)
	u, err := user.Lookup(uploadAccount)
	if err != nil {
		t.Fatal(err)
	}
	accountGID, _ := strconv.ParseUint(u.Gid, 10, 32)

	// sshd's ChrootDirectory needs every directory above
	// data_path/image_uploads root's and not writable by others, which a
	// directory under /tmp is not: base is under /var/lib.
	s := startServerIn(t, base, "2GiB", "")
	uploads := filepath.Join(dataPath, "image_uploads")
	if uid, _, perm := statOwner(t, uploads); uid != 0 || perm != 0o755 {
		t.Fatalf("image_uploads: uid %d mode %v, want root's 0755 (sshd's ChrootDirectory)", uid, perm)
	}
	tarball := filepath.Join(etc, "data.tgz")
	if err := os.WriteFile(tarball, pgTarball(t), 0o644); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(etc, "garbage.tgz")
	if err := os.WriteFile(garbage, []byte("not a tarball\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	newImage := func() string {
		t.Helper()
		status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z"}))
		if status != 201 {
			t.Fatalf("POST /images: %d %s", status, body)
		}
		id := decode(t, body).one(t).ID
		uid, gid, perm := statOwner(t, filepath.Join(uploads, id))
		if uid != 0 || gid != uint32(accountGID) || perm != 0o770 {
			t.Fatalf("upload dir of pending image %s: %d:%d %v, want root:%s 0770", id, uid, gid, perm, uploadAccount)
		}
		return id
	}
	done := func(id string) (int, resource, []byte) {
		t.Helper()
		status, body := s.call(t, "POST", "/images/"+id+"/done", s.secret, nil)
		d := decode(t, body)
		if len(d.Errors) > 0 {
			return status, resource{}, body
		}
		return status, d.one(t), body
	}

	// scp (SFTP, the default since OpenSSH 9.0) into a pending image.
	img := newImage()
	if out, err := ssh.scp(tarball, "/"+img+"/data.tgz", false); err != nil {
		t.Fatalf("scp to a pending image: %v\n%s\nsshd:\n%s", err, out, ssh.out.String())
	}
	if fi, err := os.Stat(filepath.Join(uploads, img, "data.tgz")); err != nil || fi.Size() != int64(len(pgTarball(t))) {
		t.Fatalf("uploaded file: %v %v", fi, err)
	}
	status, got, body := done(img)
	if status != 200 || got.Attributes["status"] != "ready" {
		t.Fatalf("done after scp: %d %s", status, body)
	}
	if uid, gid, perm := statOwner(t, filepath.Join(uploads, img)); uid != 0 || gid != 0 || perm != 0o750 {
		t.Errorf("upload dir of ready image: %d:%d %v, want root:root 0750", uid, gid, perm)
	}
	inst, creds := s.createInstance(t, s.secret, img, nil)
	if n, err := query(certConnString(t, inst, creds), "select count(*)::text from people"); err != nil || n != "2" {
		t.Fatalf("instance of the scp'd image: %q %v", n, err)
	}

	// The legacy SCP protocol (scp -O) needs a remote scp command, which
	// ForceCommand internal-sftp does not run: it fails, and writes nothing.
	legacyImg := newImage()
	out, err := ssh.scp(tarball, "/"+legacyImg+"/data.tgz", true)
	if err == nil || !strings.Contains(out, "This service allows sftp connections only") {
		t.Fatalf("scp -O under ForceCommand internal-sftp: %v, want sshd's refusal \"This service allows sftp connections only\": %s", err, out)
	}
	t.Logf("scp -O (legacy protocol), refused as expected: %v: %s", err, strings.TrimSpace(out))
	if entries, _ := os.ReadDir(filepath.Join(uploads, legacyImg)); len(entries) != 0 {
		t.Errorf("scp -O left %v", entries)
	}

	// A failed finalise gives the directory back: upload again, done again.
	retry := newImage()
	if out, err := ssh.scp(garbage, "/"+retry+"/data.tgz", false); err != nil {
		t.Fatalf("scp: %v %s", err, out)
	}
	if status, _, body := done(retry); status == 200 {
		t.Fatalf("done with garbage: %d %s", status, body)
	}
	if uid, gid, perm := statOwner(t, filepath.Join(uploads, retry)); uid != 0 || gid != uint32(accountGID) || perm != 0o770 {
		t.Fatalf("upload dir after a failed finalise: %d:%d %v, want root:%s 0770 again", uid, gid, perm, uploadAccount)
	}
	if out, err := ssh.scp(tarball, "/"+retry+"/data.tgz", false); err != nil {
		t.Fatalf("scp after a failed finalise: %v %s", err, out)
	}
	if status, got, body := done(retry); status != 200 || got.Attributes["status"] != "ready" {
		t.Fatalf("done after uploading again: %d %s", status, body)
	}

	// A symbolic link planted by the account is not followed: finalise
	// fails with a clear message instead of reading root's file.
	planted := newImage()
	if out, err := ssh.sftp(fmt.Sprintf("symlink /etc/shadow /%s/upload.tar\n", planted)); err != nil {
		t.Fatalf("sftp symlink: %v %s", err, out)
	}
	if fi, err := os.Lstat(filepath.Join(uploads, planted, "upload.tar")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("planted symlink: %v %v", fi, err)
	}
	if status, _, body := done(planted); status == 200 || !strings.Contains(string(body), "symbolic link") {
		t.Errorf("done with a planted symbolic link: %d %s", status, body)
	}

	// Refusals: a ready image's directory, the chroot's root, above it.
	for _, remote := range []string{"/" + img + "/more.tgz", "/" + img + "/data.tgz", "/x", "/../x", "/../../x", "x"} {
		if out, err := ssh.scp(tarball, remote, false); err == nil {
			t.Errorf("scp to %s succeeded: %s", remote, out)
		} else {
			t.Logf("scp to %s refused: %s", remote, strings.TrimSpace(out))
		}
	}
	if out, err := ssh.sftp("mkdir /evil\n"); err == nil {
		t.Errorf("sftp mkdir in the chroot's root succeeded: %s", out)
	}
	if entries, err := os.ReadDir(filepath.Join(uploads, img)); err != nil || len(entries) != 1 {
		t.Errorf("ready image's upload dir: %v %v", entries, err)
	}
	for _, p := range []string{filepath.Join(uploads, "x"), filepath.Join(dataPath, "x"), filepath.Join(base, "x"), "/x", filepath.Join(uploads, "evil")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists after the refused uploads: %v", p, err)
		}
	}
	// Nothing the account owns outside the upload directories.
	filepath.Walk(dataPath, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid == mustAtoi(u.Uid) && filepath.Dir(filepath.Dir(p)) != uploads {
			t.Errorf("%s is the upload account's, outside an upload directory", p)
		}
		if fi.IsDir() && p != dataPath && !strings.HasPrefix(p, uploads) {
			return filepath.SkipDir
		}
		return nil
	})
}

func mustAtoi(s string) uint32 {
	n, _ := strconv.ParseUint(s, 10, 32)
	return uint32(n)
}
