package spec

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/testenv"
)

const uploadAccount = "sindri-upload"

// sshd is a real OpenSSH server on 127.0.0.1 whose configuration includes
// the packaged drop-in for the upload account.
type sshd struct {
	port, key string // the port, and the uploader's private key
	out       *testenv.SyncBuffer
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
// etc and the shell binary shell (the account itself is a real system
// account, made once), and starts sshd with the drop-in it installed.
func setupUploads(t *testing.T, etc, dataPath, shell string) *sshd {
	t.Helper()
	setup, err := filepath.Abs("../packaging/setup-upload-account")
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(etc, "upload_authorized_keys")
	env := append(os.Environ(), "SINDRI_DATA_PATH="+dataPath, "SINDRI_UPLOAD_AUTHORIZED_KEYS="+keys,
		"SINDRI_UPLOAD_SHELL="+shell, "SSHD_CONFIG_DIR="+filepath.Join(etc, "sshd_config.d"), "SSHD_RELOAD=no")
	runSetup := func() string {
		cmd := exec.Command(setup)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("setup-upload-account: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := runSetup(); strings.Contains(out, "warning") {
		t.Errorf("setup-upload-account: %s", out)
	}
	// Leave the account as safe as the test found it: sshd lets no one in
	// as an account whose shell is nologin.
	t.Cleanup(func() {
		exec.Command("usermod", "--shell", "/usr/sbin/nologin", "--home", "/nonexistent", uploadAccount).Run()
	})
	if again := runSetup(); strings.Contains(again, "made") || strings.Contains(again, "installed") || strings.Contains(again, "set the") {
		t.Errorf("setup-upload-account run again changed things: %s", again)
	}
	u, err := user.Lookup(uploadAccount)
	if err != nil {
		t.Fatal(err)
	}
	if u.Uid == "0" || u.HomeDir != dataPath+"/image_uploads" {
		t.Fatalf("upload account: %+v, want its home in %s/image_uploads", u, dataPath)
	}
	// sshd runs the ForceCommand through the account's login shell, which
	// runs nothing else.
	if got := strings.TrimSpace(strings.Split(runOK(t, "getent", "passwd", uploadAccount), ":")[6]); got != shell {
		t.Errorf("upload account's shell is %q, want %s", got, shell)
	}
	dropIn, err := os.ReadFile(filepath.Join(etc, "sshd_config.d", "sindri-upload.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Match User sindri-upload", "\tForceCommand " + shell + " " + dataPath + "/image_uploads\n",
		"AuthorizedKeysFile " + keys, "PermitTTY no", "AllowTcpForwarding no", "PasswordAuthentication no"} {
		if !strings.Contains(string(dropIn), want) {
			t.Errorf("installed drop-in lacks %q:\n%s", want, dropIn)
		}
	}
	if strings.Contains(string(dropIn), "\tChrootDirectory") || strings.Contains(string(dropIn), "internal-sftp\n") {
		t.Errorf("installed drop-in chroots or forces internal-sftp:\n%s", dropIn)
	}
	if fi, err := os.Stat(keys); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("authorized keys file: %v %v", fi, err)
	}

	s := &sshd{port: strconv.Itoa(pgtest.FreePort(t)), key: filepath.Join(etc, "uploader"), out: &testenv.SyncBuffer{}}
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
	// The SFTP subsystem is sshd's own internal-sftp, which the drop-in's
	// ForceCommand must override (Debian's default, the sftp-server
	// binary, is overridden the same way; pkg/uploadshell tests both
	// names).
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

// ssh runs a command (none: a shell) as the upload account.
func (s *sshd) ssh(command ...string) (string, error) {
	args := append(s.sshOptions("-p"), append([]string{uploadAccount + "@127.0.0.1"}, command...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", args...).CombinedOutput()
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

// TestSCPUpload uploads with the real scp, in its default SFTP mode and
// in the legacy SCP protocol (scp -O), through the real sshd and the
// packaged drop-in, whose ForceCommand is sindri-upload-shell; finalises
// the images; and checks the refusals: a ready image's directory, the
// uploads directory's top, paths out of it, symbolic links, other
// commands; nothing lands outside image_uploads/<id>/.
func TestSCPUpload(t *testing.T) {
	testenv.RequireRoot(t, "sshd, a system account, a loopback BTRFS")
	for _, bin := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen", "scp", "sftp", "useradd", "runuser"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("needs %s (openssh-server and openssh-client, which `make deps` installs; passwd and util-linux, which come with Debian)", bin)
		}
	}
	// The account must reach the uploads directory and run the shell:
	// every directory above them searchable (not /tmp's 0700 MkdirTemp).
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
	shell := filepath.Join(base, "bin", "sindri-upload-shell")
	build := exec.Command("go", "build", "-o", shell, "../cmd/sindri-upload-shell")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building sindri-upload-shell: %v\n%s", err, out)
	}
	dataPath := filepath.Join(base, "data")
	ssh := setupUploads(t, etc, dataPath, shell)
	u, err := user.Lookup(uploadAccount)
	if err != nil {
		t.Fatal(err)
	}
	accountUID, accountGID := mustAtoi(u.Uid), mustAtoi(u.Gid)

	s := startServerIn(t, base, "2GiB", "")
	uploads := filepath.Join(dataPath, "image_uploads")
	if uid, _, perm := statOwner(t, uploads); uid != 0 || perm != 0o755 {
		t.Fatalf("image_uploads: uid %d mode %v, want root's 0755", uid, perm)
	}
	tarball := filepath.Join(etc, "data.tgz")
	if err := os.WriteFile(tarball, pgTarball(t), 0o644); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(etc, "garbage.tgz")
	if err := os.WriteFile(garbage, []byte("not a tarball\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Outside the uploads directory, a directory and a file the account
	// could write if it got there: only the shell's confinement keeps it
	// out, not permissions.
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	outsideFile := filepath.Join(outside, "file")
	if err := os.WriteFile(outsideFile, []byte("outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{outside, outsideFile} {
		if err := os.Chown(p, int(accountUID), int(accountGID)); err != nil {
			t.Fatal(err)
		}
	}
	newImage := func() string {
		t.Helper()
		status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z"}))
		if status != 201 {
			t.Fatalf("POST /images: %d %s", status, body)
		}
		id := decode(t, body).one(t).ID
		uid, gid, perm := statOwner(t, filepath.Join(uploads, id))
		if uid != 0 || gid != accountGID || perm != 0o770 {
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
	modes := []struct {
		name   string
		legacy bool
	}{{"scp (SFTP)", false}, {"scp -O", true}}
	tarballSize := int64(len(pgTarball(t)))

	// Each mode, into a pending image's directory, then done: ready.
	var ready []string
	for i, m := range modes {
		img := newImage()
		remote := []string{"/" + img + "/data.tgz", img + "/"}[i%2]
		start := time.Now()
		if out, err := ssh.scp(tarball, remote, m.legacy); err != nil {
			t.Fatalf("%s to %s: %v\n%s\nsshd:\n%s", m.name, remote, err, out, ssh.out.String())
		}
		t.Logf("%s to %s: %v", m.name, remote, time.Since(start).Round(time.Millisecond))
		fi, err := os.Stat(filepath.Join(uploads, img, "data.tgz"))
		if err != nil || fi.Size() != tarballSize {
			t.Fatalf("%s: uploaded file: %v %v", m.name, fi, err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != accountUID {
			t.Errorf("%s: the upload is %d's, want the account's", m.name, st.Uid)
		}
		status, got, body := done(img)
		if status != 200 || got.Attributes["status"] != "ready" {
			t.Fatalf("done after %s: %d %s", m.name, status, body)
		}
		if uid, gid, perm := statOwner(t, filepath.Join(uploads, img)); uid != 0 || gid != 0 || perm != 0o750 {
			t.Errorf("upload dir of ready image: %d:%d %v, want root:root 0750", uid, gid, perm)
		}
		if entries, err := os.ReadDir(filepath.Join(uploads, img)); err != nil || len(entries) != 0 {
			t.Errorf("upload dir of ready image holds %v (%v); want the upload removed", entries, err)
		}
		ready = append(ready, img)
	}
	inst, creds := s.createInstance(t, s.secret, ready[1], nil)
	if n, err := query(certConnString(t, inst, creds), "select count(*)::text from people"); err != nil || n != "2" {
		t.Fatalf("instance of the image uploaded with scp -O: %q %v", n, err)
	}

	// A failed finalise gives the directory back: upload again (the other
	// mode), done again.
	retry := newImage()
	if out, err := ssh.scp(garbage, "/"+retry+"/data.tgz", true); err != nil {
		t.Fatalf("scp -O: %v %s", err, out)
	}
	if status, _, body := done(retry); status == 200 {
		t.Fatalf("done with garbage: %d %s", status, body)
	}
	if uid, gid, perm := statOwner(t, filepath.Join(uploads, retry)); uid != 0 || gid != accountGID || perm != 0o770 {
		t.Fatalf("upload dir after a failed finalise: %d:%d %v, want root:%s 0770 again", uid, gid, perm, uploadAccount)
	}
	if entries, err := os.ReadDir(filepath.Join(uploads, retry)); err != nil || len(entries) != 0 {
		t.Errorf("upload dir after a failed finalise holds %v (%v); want the upload removed", entries, err)
	}
	if out, err := ssh.scp(tarball, "/"+retry+"/", false); err != nil {
		t.Fatalf("scp after a failed finalise: %v %s", err, out)
	}
	if status, got, body := done(retry); status != 200 || got.Attributes["status"] != "ready" {
		t.Fatalf("done after uploading again: %d %s", status, body)
	}

	// Symbolic links: the account cannot make one, and one planted in a
	// pending image's directory (as root here) is not followed, neither
	// to /etc nor to a place the account could write.
	planted := newImage()
	pdir := filepath.Join(uploads, planted)
	if out, err := ssh.sftp(fmt.Sprintf("symlink /etc/shadow /%s/upload.tar\n", planted)); err == nil {
		t.Errorf("sftp symlink succeeded: %s", out)
	}
	for name, target := range map[string]string{"etc": "/etc", "out": outside, "data.tgz": outsideFile} {
		if err := os.Symlink(target, filepath.Join(pdir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range modes {
		for _, remote := range []string{"/" + planted + "/etc/x", "/" + planted + "/etc/", "/" + planted + "/out/x",
			"/" + planted + "/out/", "/" + planted + "/data.tgz", "/" + planted + "/"} {
			if out, err := ssh.scp(tarball, remote, m.legacy); err == nil {
				t.Errorf("%s through a symbolic link, to %s, succeeded: %s", m.name, remote, out)
			} else {
				t.Logf("%s to %s refused: %s", m.name, remote, strings.TrimSpace(out))
			}
		}
	}
	if status, _, body := done(planted); status == 200 || !strings.Contains(string(body), "symbolic link") {
		t.Errorf("done with planted symbolic links: %d %s", status, body)
	}

	// Refusals, in both modes: a ready image's directory, the top of the
	// uploads directory, paths out of it.
	pending := newImage()
	for _, m := range modes {
		for _, remote := range []string{"/" + ready[0] + "/more.tgz", "/" + ready[0] + "/data.tgz", "/" + ready[1] + "/",
			"/x", "/", "x", "", "/../x", "/../../x", "../x", "/" + pending + "/../../x", "/" + pending + "/../x",
			"/etc/", "/etc/cron.d/x", outside + "/", outsideFile} {
			out, err := ssh.scp(tarball, remote, m.legacy)
			if err == nil {
				t.Errorf("%s to %q succeeded: %s", m.name, remote, out)
				continue
			}
			msg := strings.TrimSpace(out)
			if msg == "" || strings.Contains(msg, "lost connection") || strings.Contains(msg, "Connection closed") {
				t.Errorf("%s to %q: %v, without a clear message: %q", m.name, remote, err, msg)
			}
			t.Logf("%s to %q refused: %s", m.name, remote, msg)
		}
	}
	if out, err := ssh.scp(tarball, "/"+ready[0]+"/", true); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("scp -O into a ready image: %v %s, want Permission denied", err, out)
	}
	// A final slash names a directory, which must exist. (Over SFTP,
	// pkg/sftp drops the slash before the shell sees the path, and the
	// file is written as /<id>/nodir: still inside the image's directory.)
	if out, err := ssh.scp(tarball, "/"+pending+"/nodir/", true); err == nil || !strings.Contains(out, "No such file or directory") {
		t.Errorf("scp -O to a missing directory: %v %s", err, out)
	}
	for _, batch := range []string{"mkdir /evil\n", "put " + tarball + " /x\n", fmt.Sprintf("get /%s/data.tgz %s/got\n", pending, etc),
		fmt.Sprintf("rename /%s/data.tgz /%s/data.tgz\n", ready[0], pending)} {
		if out, err := ssh.sftp(batch); err == nil {
			t.Errorf("sftp %q succeeded: %s", batch, out)
		}
	}
	// Neither a shell nor another command.
	for _, command := range [][]string{nil, {"id"}, {"cat", "/etc/passwd"}, {"scp", "-f", "/" + ready[0] + "/data.tgz"}} {
		out, err := ssh.ssh(command...)
		if err == nil || strings.Contains(out, "root:") || strings.Contains(out, "uid=") {
			t.Errorf("ssh %q: %v %s", command, err, out)
		}
		t.Logf("ssh %q refused: %s", command, strings.TrimSpace(out))
	}

	// Nothing landed outside image_uploads/<id>/.
	if entries, err := os.ReadDir(filepath.Join(uploads, ready[0])); err != nil || len(entries) != 0 {
		t.Errorf("ready image's upload dir: %v %v", entries, err)
	}
	// What the account can read in the data path: its upload into a
	// pending image until the image is ready, then nothing; but for the
	// disk reserve sindrid publishes for the upload shell, a number.
	reserveFile := filepath.Join(uploads, ".disk_reserve")
	readable := func() []string {
		t.Helper()
		// find exits 1 on the directories it may not enter: its output is
		// what counts, and it must have run as the account.
		cmd := exec.Command("runuser", "-u", uploadAccount, "--", "find", dataPath, "-type", "f", "-readable")
		out, err := cmd.Output()
		if err != nil && (cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1) {
			t.Fatalf("find as %s: %v", uploadAccount, err)
		}
		var files []string
		for _, f := range strings.Fields(string(out)) {
			if f != reserveFile {
				files = append(files, f)
			}
		}
		return files
	}
	if b, err := os.ReadFile(reserveFile); err != nil || strings.Trim(string(b), "0123456789\n") != "" {
		t.Errorf("%s holds %q (%v), want the reserve in bytes and nothing else", reserveFile, b, err)
	}
	if out, err := ssh.scp(tarball, "/"+pending+"/data.tgz", false); err != nil {
		t.Fatalf("scp into the pending image: %v %s", err, out)
	}
	if got := readable(); len(got) != 1 || got[0] != filepath.Join(uploads, pending, "data.tgz") {
		t.Fatalf("files the upload account can read with an upload pending: %v; want just that upload", got)
	}
	if status, got, body := done(pending); status != 200 || got.Attributes["status"] != "ready" {
		t.Fatalf("done: %d %s", status, body)
	}
	if got := readable(); len(got) != 0 {
		t.Errorf("files of the data path the upload account can read once the images are ready or failed: %v", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(uploads, pending)); len(entries) != 0 {
		t.Errorf("pending image's upload dir after refusals: %v", entries)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Errorf("outside: %v", entries)
	}
	if b, err := os.ReadFile(outsideFile); err != nil || string(b) != "outside\n" {
		t.Errorf("%s: %q %v", outsideFile, b, err)
	}
	for _, p := range []string{filepath.Join(uploads, "x"), filepath.Join(uploads, "data.tgz"), filepath.Join(uploads, "evil"),
		filepath.Join(dataPath, "x"), filepath.Join(base, "x"), "/x", "/etc/x", "/etc/cron.d/x", filepath.Join(etc, "got")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists after the refused uploads: %v", p, err)
		}
	}
	// Nothing the account owns outside the upload directories.
	filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if p == outside || p == outsideFile {
			return nil
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid == accountUID && filepath.Dir(filepath.Dir(p)) != uploads {
			t.Errorf("%s is the upload account's, outside an upload directory", p)
		}
		if fi.IsDir() && p != base && p != dataPath && !strings.HasPrefix(p, uploads) && p != outside && p != etc {
			return filepath.SkipDir
		}
		return nil
	})

	// Below sindri's disk reserve (5% by default, which sindrid tells the
	// upload shell in image_uploads/.disk_reserve), scp uploads are
	// refused in both modes, as PUT is, and so is done. The disk is filled
	// to the last byte, as running instances may fill it (the reserve
	// holds back sindri's own work only), and as BTRFS, whose free space
	// is counted in chunks, may leave it when asked for less: the
	// embedded metadata database, whose data is on this disk too, cannot
	// write either, and its postmaster ends at its next write. done still
	// answers no_disk_space, which says what to do, and once space is
	// freed the metadata database is back without a restart of sindrid.
	published, err := os.ReadFile(filepath.Join(uploads, ".disk_reserve"))
	if err != nil {
		t.Fatalf("sindrid did not publish the disk reserve for the upload shell: %v", err)
	}
	reserve, err := strconv.ParseInt(strings.TrimSpace(string(published)), 10, 64)
	if err != nil || reserve <= 0 {
		t.Fatalf(".disk_reserve holds %q", published)
	}
	if uid, _, perm := statOwner(t, filepath.Join(uploads, ".disk_reserve")); uid != 0 || perm != 0o644 {
		t.Errorf(".disk_reserve: uid %d mode %v, want root's 0644", uid, perm)
	}
	full := newImage()
	filler := fillTo(t, dataPath, 1)
	for _, m := range modes {
		out, err := ssh.scp(tarball, "/"+full+"/", m.legacy)
		if err == nil {
			t.Errorf("%s below the disk reserve succeeded: %s", m.name, out)
			continue
		}
		if m.legacy && !strings.Contains(out, "under sindri's disk reserve (limits.disk_reserve)") {
			t.Errorf("%s below the disk reserve: %v %q, want the reserve named", m.name, err, out)
		}
		t.Logf("%s below the disk reserve refused: %s", m.name, strings.TrimSpace(out))
	}
	if entries, _ := os.ReadDir(filepath.Join(uploads, full)); len(entries) != 0 {
		t.Errorf("refused uploads left %v", entries)
	}
	// Twice: the first done's own writes to the metadata database may be
	// what ends it.
	for range 2 {
		status, _, body := done(full)
		expectErrorDetail(t, "done on a full disk", status, body, 503, "no_disk_space", "limits.disk_reserve")
		if strings.Contains(string(body), "SQLSTATE") || strings.Contains(string(body), "store:") {
			t.Errorf("done on a full disk tells the metadata database's error: %s", body)
		}
		t.Logf("done on a full disk: %d %s", status, body)
	}
	unfillTo(t, filler, dataPath, reserve*2)
	if out, err := ssh.scp(tarball, "/"+full+"/", false); err != nil {
		t.Fatalf("scp once space is freed: %v %s", err, out)
	}
	// The contract's answer while the metadata database starts again is
	// 503 metadata_unavailable with Retry-After: 2, after which the
	// request may be sent again as it is.
	deadline := time.Now().Add(90 * time.Second)
	for {
		status, got, body := done(full)
		if status == 503 && strings.Contains(string(body), "metadata_unavailable") && time.Now().Before(deadline) {
			time.Sleep(2 * time.Second)
			continue
		}
		if status != 200 || got.Attributes["status"] != "ready" {
			t.Fatalf("done once space is freed: %d %s", status, body)
		}
		break
	}
}

func mustAtoi(s string) uint32 {
	n, _ := strconv.ParseUint(s, 10, 32)
	return uint32(n)
}
