package uploadshell

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// scpClient plays the client side of `scp -O` (scp.c's source()) against
// ServeSCPSink over pipes.
type scpClient struct {
	t    *testing.T
	w    io.WriteCloser
	r    *bufio.Reader
	exit chan int
}

func startSink(t *testing.T, u *Uploads, target string, opt SCPOptions) *scpClient {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &scpClient{t: t, w: inW, r: bufio.NewReader(outR), exit: make(chan int, 1)}
	go func() {
		code := ServeSCPSink(u, target, opt, inR, outW)
		outW.Close()
		inR.Close()
		c.exit <- code
	}()
	return c
}

// resp reads the sink's answer: "" for 0, else the error line.
func (c *scpClient) resp() string {
	c.t.Helper()
	b, err := c.r.ReadByte()
	if err != nil {
		c.t.Fatalf("reading the sink's answer: %v", err)
	}
	switch b {
	case 0:
		return ""
	case 1, 2:
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading the sink's error: %v", err)
		}
		return strings.TrimSuffix(line, "\n")
	}
	c.t.Fatalf("the sink answered %q", b)
	return ""
}

func (c *scpClient) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.w, s); err != nil {
		c.t.Fatal(err)
	}
}

// file sends one file as scp does and returns the sink's error ("" for
// none).
func (c *scpClient) file(name string, data string) string {
	c.t.Helper()
	c.send(fmt.Sprintf("C0644 %d %s\n", len(data), name))
	if msg := c.resp(); msg != "" {
		return msg
	}
	c.send(data + "\x00")
	return c.resp()
}

// end closes the client's side and returns the sink's exit status.
func (c *scpClient) end() int {
	c.t.Helper()
	c.w.Close()
	io.Copy(io.Discard, c.r)
	select {
	case code := <-c.exit:
		return code
	case <-time.After(10 * time.Second):
		c.t.Fatal("the sink did not end")
		return -1
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSCPSinkUploads(t *testing.T) {
	for _, c := range []struct {
		target, name, want string
	}{
		{"/3/", "data.tgz", "3/data.tgz"},
		{"/3", "data.tgz", "3/data.tgz"},
		{"3/", "data.tgz", "3/data.tgz"},
		{"3", "data.tgz", "3/data.tgz"},
		{"/3/other.tgz", "data.tgz", "3/other.tgz"},
		{"3/other.tgz", "data.tgz", "3/other.tgz"},
		{"~/3/", "data.tgz", "3/data.tgz"},
		{"//3//./", "data.tgz", "3/data.tgz"},
	} {
		t.Run(c.target, func(t *testing.T) {
			dir, u := newUploads(t)
			cl := startSink(t, u, c.target, SCPOptions{})
			if msg := cl.resp(); msg != "" {
				t.Fatalf("sink's first answer: %q", msg)
			}
			if msg := cl.file(c.name, "tarball bytes"); msg != "" {
				t.Fatalf("upload refused: %s", msg)
			}
			if code := cl.end(); code != 0 {
				t.Fatalf("exit %d", code)
			}
			if got := readFile(t, filepath.Join(dir, c.want)); got != "tarball bytes" {
				t.Fatalf("%s: %q", c.want, got)
			}
			if fi, _ := os.Stat(filepath.Join(dir, c.want)); fi.Mode().Perm()&^fileMode != 0 {
				t.Errorf("mode %v, want at most %v whatever the client asked", fi.Mode(), os.FileMode(fileMode))
			}
			onlyPlantedAnd(t, dir, c.want)
		})
	}
}

func TestSCPSinkReplacesAndTakesSeveralFiles(t *testing.T) {
	dir, u := newUploads(t)
	if err := os.WriteFile(filepath.Join(dir, "3", "a"), []byte("an older and longer upload"), 0o644); err != nil {
		t.Fatal(err)
	}
	cl := startSink(t, u, "/3/", SCPOptions{TargetIsDir: true})
	cl.resp()
	big := strings.Repeat("0123456789", 100000)
	for name, data := range map[string]string{"a": "new", "b": big, "empty": ""} {
		if msg := cl.file(name, data); msg != "" {
			t.Fatalf("%s: %s", name, msg)
		}
	}
	if code := cl.end(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if readFile(t, filepath.Join(dir, "3", "a")) != "new" || readFile(t, filepath.Join(dir, "3", "b")) != big {
		t.Fatal("contents differ")
	}
	onlyPlantedAnd(t, dir, "3/a", "3/b", "3/empty")
}

// Refusals of the target: scp's error, then exit 1; nothing written.
func TestSCPSinkRefusesTargets(t *testing.T) {
	for _, c := range []struct {
		target string
		opt    SCPOptions
		want   string
	}{
		{"/3/../../outside", SCPOptions{}, `".." is not allowed`},
		{"../outside", SCPOptions{}, `".." is not allowed`},
		{"/..", SCPOptions{}, `".." is not allowed`},
		{"/3/x", SCPOptions{TargetIsDir: true}, "/3/x: No such file or directory"},
		{"/3/etc", SCPOptions{TargetIsDir: true}, "/3/etc: a symbolic link, which is not followed"},
		{"/3/etc/", SCPOptions{}, "/3/etc: a symbolic link, which is not followed"},
		{"/3/four/", SCPOptions{}, "/3/four: a symbolic link, which is not followed"},
		{"/3/nodir/", SCPOptions{}, "/3/nodir: No such file or directory"},
		{"/4/x/", SCPOptions{}, "/4/x: No such file or directory"},
		{"/etc/", SCPOptions{}, "/etc: No such file or directory"},
	} {
		t.Run(c.target, func(t *testing.T) {
			dir, u := newUploads(t)
			cl := startSink(t, u, c.target, c.opt)
			if msg := cl.resp(); !strings.Contains(msg, c.want) || !strings.HasPrefix(msg, "scp: ") {
				t.Errorf("answer %q, want scp: ...%s", msg, c.want)
			}
			if code := cl.end(); code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			onlyPlantedAnd(t, dir)
		})
	}
}

// Refusals of a file: the client is told and skips it, the session goes
// on, and the exit status is 1.
func TestSCPSinkRefusesFiles(t *testing.T) {
	for _, c := range []struct {
		target, name, want string
	}{
		{"/", "data.tgz", "/data.tgz: uploads go into the directory of a pending image"},
		{"", "data.tgz", "/data.tgz: uploads go into the directory of a pending image"},
		{".", "data.tgz", "/data.tgz: uploads go into the directory of a pending image"},
		{"/x", "data.tgz", "/x: uploads go into the directory of a pending image"},
		{"/etc/passwd", "data.tgz", "/etc is not an image's upload directory"},
		{"/tmp/x", "data.tgz", "/tmp is not an image's upload directory"},
		{"/3/etc/passwd", "x", "/3/etc is a symbolic link, which is not followed"},
		{"/3/four/x", "x", "/3/four is a symbolic link, which is not followed"},
		{"/3/hostname", "x", "/3/hostname: not a regular file (a symbolic link)"},
		{"/3/nodir/x", "x", "/3/nodir/x: No such file or directory"},
		{"/3", "etc", "/3/etc: not a regular file (a symbolic link)"},
		{"/3", "four", "/3/four: not a regular file (a symbolic link)"},
		{"/3", "hostname", "/3/hostname: not a regular file (a symbolic link)"},
	} {
		t.Run(c.target+"+"+c.name, func(t *testing.T) {
			dir, u := newUploads(t)
			cl := startSink(t, u, c.target, SCPOptions{})
			if msg := cl.resp(); msg != "" {
				t.Fatalf("first answer %q", msg)
			}
			if msg := cl.file(c.name, "x"); !strings.Contains(msg, c.want) {
				t.Errorf("answer %q, want %q", msg, c.want)
			}
			// The session goes on: the next record is read (and this one
			// refused).
			if msg := cl.file("../x", "x"); !strings.Contains(msg, "unexpected filename") {
				t.Errorf("a C record named ../x: %q", msg)
			}
			if code := cl.end(); code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			onlyPlantedAnd(t, dir)
		})
	}
}

func TestSCPSinkRefusesBadRecords(t *testing.T) {
	for _, c := range []struct {
		record, want string
	}{
		{"C0644 1 ../x\n", "unexpected filename"},
		{"C0644 1 a/b\n", "unexpected filename"},
		{"C0644 1 ..\n", "unexpected filename"},
		{"C0644 1 .\n", "unexpected filename"},
		{"C0644 1 \n", "unexpected filename"},
		{"C0944 1 x\n", "bad mode"},
		{"C0644 -1 x\n", "size"},
		{"C0644 99999999999999999999 x\n", "size"},
		{"C0644 1x\n", "size not delimited"},
		{"D0755 0 dir\n", "received directory without -r"},
		{"T1 0\n", "bad times record"},
		{"No match.\n", "No match."},
		{"\n", "protocol error"},
		{"C" + strings.Repeat("0", 5000) + "\n", "record too long"},
	} {
		t.Run(c.record[:min(len(c.record), 12)], func(t *testing.T) {
			dir, u := newUploads(t)
			cl := startSink(t, u, "/3/", SCPOptions{})
			cl.resp()
			cl.send(c.record)
			if msg := cl.resp(); !strings.Contains(msg, c.want) {
				t.Errorf("answer %q, want %q", msg, c.want)
			}
			if code := cl.end(); code != 1 {
				t.Errorf("exit %d", code)
			}
			onlyPlantedAnd(t, dir)
		})
	}
}

func TestSCPSinkRecursiveAndTimes(t *testing.T) {
	dir, u := newUploads(t)
	cl := startSink(t, u, "/3/", SCPOptions{Recursive: true, Preserve: true})
	cl.resp()
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	steps := []string{
		fmt.Sprintf("T%d 0 %d 0\n", mtime.Unix(), mtime.Unix()), "D0755 0 tree\n",
		fmt.Sprintf("T%d 0 %d 0\n", mtime.Unix(), mtime.Unix()),
	}
	for _, s := range steps {
		cl.send(s)
		if msg := cl.resp(); msg != "" {
			t.Fatalf("%q: %s", s, msg)
		}
	}
	if msg := cl.file("a", "A"); msg != "" {
		t.Fatal(msg)
	}
	cl.send("D0700 0 sub\n")
	if msg := cl.resp(); msg != "" {
		t.Fatal(msg)
	}
	if msg := cl.file("b", "B"); msg != "" {
		t.Fatal(msg)
	}
	for range 2 {
		cl.send("E\n")
		if msg := cl.resp(); msg != "" {
			t.Fatal(msg)
		}
	}
	// A directory onto the symbolic link: refused, skipped.
	cl.send("D0755 0 etc\n")
	if msg := cl.resp(); !strings.Contains(msg, "/3/etc") {
		t.Errorf("D etc: %q", msg)
	}
	if code := cl.end(); code != 1 {
		t.Errorf("exit %d, want 1 (one refusal)", code)
	}
	onlyPlantedAnd(t, dir, "3/tree/", "3/tree/a", "3/tree/sub/", "3/tree/sub/b")
	for _, p := range []string{"3/tree/a", "3/tree"} {
		if fi, err := os.Stat(filepath.Join(dir, p)); err != nil || !fi.ModTime().Equal(mtime) {
			t.Errorf("%s: mtime %v %v, want %v", p, fi.ModTime(), err, mtime)
		}
	}
}

func TestSCPSinkDirectoriesInTheTopAreRefused(t *testing.T) {
	dir, u := newUploads(t)
	cl := startSink(t, u, "/", SCPOptions{Recursive: true})
	cl.resp()
	cl.send("D0755 0 evil\n")
	if msg := cl.resp(); !strings.Contains(msg, "/evil: uploads go into the directory of a pending image") {
		t.Errorf("D evil in /: %q", msg)
	}
	cl.send("D0755 0 5\n")
	if msg := cl.resp(); !strings.Contains(msg, "/5") {
		t.Errorf("D 5 in /: %q", msg)
	}
	if code := cl.end(); code != 1 {
		t.Errorf("exit %d", code)
	}
	onlyPlantedAnd(t, dir)
}

func TestSCPSinkClientErrors(t *testing.T) {
	dir, u := newUploads(t)
	cl := startSink(t, u, "/3/", SCPOptions{})
	cl.resp()
	// The client could not read its file after announcing it: it sends
	// the data it has and an error instead of 0.
	cl.send("C0644 3 a\n")
	cl.resp()
	cl.send("abc\x01scp: a: read error\n")
	if msg := cl.resp(); msg != "" {
		t.Errorf("answer %q", msg)
	}
	// A lost connection in the middle of a file.
	cl.send("C0644 10 b\n")
	cl.resp()
	cl.send("abc")
	cl.w.Close()
	if msg := cl.resp(); msg != "scp: lost connection" {
		t.Errorf("answer %q", msg)
	}
	if code := cl.end(); code != 1 {
		t.Errorf("exit %d", code)
	}
	onlyPlantedAnd(t, dir, "3/a", "3/b")
}
