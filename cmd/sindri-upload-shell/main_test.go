package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/sindri-db/sindri/pkg/testenv"
)

// The binary, built without cgo into a directory an unprivileged account
// can reach; and an uploads directory as sindrid lays it out: root's
// 0755, a pending image's directory (3) root:<the account's group> 0770,
// a ready one's (4) root:root 0750.
type fixture struct {
	bin, uploads string
	uid, gid     uint32
}

func setup(t *testing.T) fixture {
	t.Helper()
	testenv.RequireRoot(t, "runs the shell as an unprivileged account")
	uid, gid := uint32(65534), uint32(65534)
	if u, err := user.Lookup("nobody"); err == nil {
		a, _ := strconv.ParseUint(u.Uid, 10, 32)
		b, _ := strconv.ParseUint(u.Gid, 10, 32)
		uid, gid = uint32(a), uint32(b)
	}
	// Not t.TempDir(), whose parent is 0700.
	base, err := os.MkdirTemp("", "sindri-upload-shell-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	f := fixture{bin: filepath.Join(base, "sindri-upload-shell"), uploads: filepath.Join(base, "image_uploads"), uid: uid, gid: gid}
	build := exec.Command("go", "build", "-o", f.bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, d := range []struct {
		name string
		gid  uint32
		mode os.FileMode
	}{{"", 0, 0o755}, {"3", gid, 0o770}, {"4", 0, 0o750}} {
		p := filepath.Join(f.uploads, d.name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 0, int(d.gid)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(f.uploads, "4", "data.tgz"), []byte("ready"), 0o640); err != nil {
		t.Fatal(err)
	}
	return f
}

// start runs the shell as the account, the way sshd does: through the
// account's login shell (itself) with -c and the ForceCommand.
func (f fixture) start(t *testing.T, command string) (*exec.Cmd, io.WriteCloser, io.Reader, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(f.bin, "-c", f.bin+" "+f.uploads)
	cmd.Args[0] = "sindri-upload-shell"
	cmd.Env = []string{"SSH_ORIGINAL_COMMAND=" + command, "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: f.uid, Gid: f.gid}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, stdin, stdout, stderr
}

func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(20 * time.Second):
		t.Fatal("the shell did not exit")
		return -1
	}
}

// TestSCPShellLegacyAsTheAccount drives `scp -t` (what scp -O runs remotely)
// through the binary, as an unprivileged account: a pending image's
// directory takes the file; a ready image's directory, the top and a
// path out are refused with scp's error convention.
func TestSCPShellLegacyAsTheAccount(t *testing.T) {
	f := setup(t)
	for _, c := range []struct {
		target, want string
	}{
		{"/3/", ""},
		{"/4/", "scp: /4/data.tgz: Permission denied"},
		{"/4/data.tgz", "scp: /4/data.tgz: Permission denied"},
		{"/", "scp: /data.tgz: uploads go into the directory of a pending image"},
		{"/../../x", `scp: /../../x: ".." is not allowed`},
		{"/etc/passwd", "scp: /etc/passwd: /etc is not an image's upload directory"},
	} {
		t.Run(c.target, func(t *testing.T) {
			cmd, stdin, stdout, stderr := f.start(t, "scp -t -- "+c.target)
			r := bufio.NewReader(stdout)
			answer := func() string {
				b, err := r.ReadByte()
				if err != nil {
					t.Fatalf("reading: %v (stderr %q)", err, stderr)
				}
				if b == 0 {
					return ""
				}
				line, _ := r.ReadString('\n')
				return strings.TrimSpace(line)
			}
			// The first answer refuses a bad target at once, or else the
			// file record is answered.
			msg := answer()
			if msg == "" {
				fmt.Fprintf(stdin, "C0644 4 data.tgz\n")
				msg = answer()
			}
			if msg == "" {
				io.WriteString(stdin, "data\x00")
				msg = answer()
			}
			if c.want == "" && msg != "" || !strings.HasPrefix(msg, c.want) {
				t.Errorf("answer %q, want %q", msg, c.want)
			}
			stdin.Close()
			if code := exitCode(t, cmd); (code == 0) != (c.want == "") {
				t.Errorf("exit %d", code)
			}
		})
	}
	b, err := os.ReadFile(filepath.Join(f.uploads, "3", "data.tgz"))
	if err != nil || string(b) != "data" {
		t.Fatalf("uploaded: %q %v", b, err)
	}
	fi, _ := os.Stat(filepath.Join(f.uploads, "3", "data.tgz"))
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != f.uid {
		t.Errorf("the upload is %d's, want the account's %d", st.Uid, f.uid)
	}
	entries, _ := os.ReadDir(f.uploads)
	if len(entries) != 2 {
		t.Errorf("the uploads directory holds %v", entries)
	}
	if b, _ := os.ReadFile(filepath.Join(f.uploads, "4", "data.tgz")); string(b) != "ready" {
		t.Errorf("the ready image's file changed: %q", b)
	}
}

// TestSCPShellSFTPAsTheAccount serves the SFTP subsystem through the binary, as
// an unprivileged account, to pkg/sftp's client.
func TestSCPShellSFTPAsTheAccount(t *testing.T) {
	f := setup(t)
	cmd, stdin, stdout, stderr := f.start(t, "/usr/lib/openssh/sftp-server")
	c, err := sftp.NewClientPipe(stdout, stdin)
	if err != nil {
		t.Fatalf("%v (stderr %q)", err, stderr)
	}
	put := func(p string) error {
		w, err := c.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
		if err != nil {
			return err
		}
		if _, err := w.Write([]byte("data")); err != nil {
			w.Close()
			return err
		}
		return w.Close()
	}
	if err := put("/3/data.tgz"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/4/data.tgz", "/4/more.tgz", "/x", "/../x", "/3/../../x"} {
		if err := put(p); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("put %s: %v, want permission denied", p, err)
		}
	}
	if _, err := c.ReadDir("/4"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("ls /4: %v, want permission denied", err)
	}
	if err := c.Mkdir("/evil"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("mkdir /evil: %v", err)
	}
	c.Close()
	if code := exitCode(t, cmd); code != 0 {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if b, err := os.ReadFile(filepath.Join(f.uploads, "3", "data.tgz")); err != nil || string(b) != "data" {
		t.Errorf("uploaded: %q %v", b, err)
	}
	if entries, _ := os.ReadDir(f.uploads); len(entries) != 2 {
		t.Errorf("the uploads directory holds %v", entries)
	}
	if entries, _ := os.ReadDir(filepath.Join(f.uploads, "4")); len(entries) != 1 {
		t.Errorf("the ready image's directory holds %v", entries)
	}
}

// TestSCPShellRefusesAShell: no command (ssh HOST), or any other, is refused with
// one line on stderr.
func TestSCPShellRefusesAShell(t *testing.T) {
	f := setup(t)
	for _, command := range []string{"", "sh", "cat /etc/passwd"} {
		cmd, stdin, stdout, stderr := f.start(t, command)
		stdin.Close()
		out, _ := io.ReadAll(stdout)
		if code := exitCode(t, cmd); code != 1 || len(out) != 0 ||
			!strings.HasPrefix(stderr.String(), "sindri-upload-shell: ") || strings.Count(stderr.String(), "\n") != 1 ||
			!strings.Contains(stderr.String(), "scp FILE ACCOUNT@HOST:/<image id>/") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", command, code, out, stderr)
		}
	}
}
