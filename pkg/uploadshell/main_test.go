package uploadshell

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestSplitWords(t *testing.T) {
	for in, want := range map[string][]string{
		"":                                     nil,
		"  scp   -t  /3/ ":                     {"scp", "-t", "/3/"},
		`scp -t 'a b'/c`:                       {"scp", "-t", "a b/c"},
		`scp -t "a \"b\" \\ \$x"`:              {"scp", "-t", `a "b" \ $x`},
		`scp -t a\ b`:                          {"scp", "-t", "a b"},
		`/usr/lib/openssh/sftp-server -l INFO`: {"/usr/lib/openssh/sftp-server", "-l", "INFO"},
		`''`:                                   {""},
	} {
		got, err := splitWords(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("splitWords(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{`scp -t 'a`, `scp -t "a`, `scp -t a\`} {
		if got, err := splitWords(in); err == nil {
			t.Errorf("splitWords(%q) = %q, want an error", in, got)
		}
	}
}

func TestParseSCP(t *testing.T) {
	for in, want := range map[string]struct {
		opt    SCPOptions
		target string
	}{
		"-t /3/":                 {SCPOptions{}, "/3/"},
		"-t -- /3/":              {SCPOptions{}, "/3/"},
		"-v -r -p -d -t -- -odd": {SCPOptions{TargetIsDir: true, Preserve: true, Recursive: true}, "-odd"},
		"-prt 3":                 {SCPOptions{Preserve: true, Recursive: true}, "3"},
		"-t .":                   {SCPOptions{}, "."},
	} {
		opt, target, err := parseSCP(strings.Fields(in))
		if err != nil || opt != want.opt || target != want.target {
			t.Errorf("parseSCP(%q) = %+v %q %v, want %+v %q", in, opt, target, err, want.opt, want.target)
		}
	}
	for in, want := range map[string]string{
		"-f /3/x":     "downloads are refused",
		"-t -f /3/x":  "downloads are refused",
		"/3/x":        "only scp -t",
		"-t":          "ambiguous target",
		"-t a b":      "ambiguous target",
		"-t -S x /3/": "option -S is not supported",
	} {
		if _, _, err := parseSCP(strings.Fields(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseSCP(%q): %v, want %q", in, err, want)
		}
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// run runs Main with args and the client's command and empty input.
func run(args []string, command string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(args, command, strings.NewReader(""), nopCloser{&out}, &errb)
	return code, out.String(), errb.String()
}

func TestMainRefusals(t *testing.T) {
	dir, _ := newUploads(t)
	self := "/usr/lib/sindri/sindri-upload-shell"
	forced := []string{"sindri-upload-shell", "-c", self + " " + dir}
	for _, c := range []struct {
		name    string
		args    []string
		command string
		stdout  string // scp's error convention, to stdout
		stderr  string // one line
	}{
		{"a shell", forced, "", "", "no shell here: this account only takes uploads"},
		{"a command", forced, "ls -l /", "", `"ls -l /" is not allowed: this account only takes uploads`},
		{"bash -c", forced, "bash -c 'cat /etc/passwd'", "", "is not allowed"},
		{"rsync", []string{self, dir}, "rsync --server . /3/", "", "is not allowed"},
		{"bad quoting", forced, "scp -t 'x", "", "cannot parse the command"},
		{"scp -f", forced, "scp -f /3/data.tgz", "\x01scp: downloads are refused", ""},
		{"scp without -t", forced, "scp /3/data.tgz", "\x01scp: only scp -t", ""},
		{"not the forced command", []string{"sindri-upload-shell", "-c", "scp -t /3/"}, "scp -t /3/", "",
			`only run sshd's ForceCommand "/usr/lib/sindri/sindri-upload-shell UPLOADS_DIR"`},
		{"-c with something else", []string{"sindri-upload-shell", "-c", "/bin/sh " + dir}, "internal-sftp", "", "only run sshd's ForceCommand"},
		{"no uploads directory", []string{self}, "internal-sftp", "", "usage: sindri-upload-shell UPLOADS_DIR"},
		{"relative uploads directory", []string{self, "image_uploads"}, "internal-sftp", "", "not an absolute path"},
		{"missing uploads directory", []string{self, dir + "/nope"}, "internal-sftp", "", "cannot open the uploads directory"},
		{"missing uploads directory, scp", []string{self, dir + "/nope"}, "scp -t /3/", "\x01scp: cannot open the uploads directory", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := run(c.args, c.command)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			if c.stdout == "" && stdout != "" || !strings.HasPrefix(stdout, c.stdout) || c.stdout != "" && !strings.HasSuffix(stdout, "\n") {
				t.Errorf("stdout %q, want %q...", stdout, c.stdout)
			}
			if c.stderr == "" && stderr != "" || !strings.Contains(stderr, c.stderr) ||
				c.stderr != "" && (!strings.HasPrefix(stderr, "sindri-upload-shell: ") || strings.Count(stderr, "\n") != 1) {
				t.Errorf("stderr %q, want one line with %q", stderr, c.stderr)
			}
		})
	}
}

func TestMainServes(t *testing.T) {
	dir, _ := newUploads(t)
	for _, args := range [][]string{
		{"/usr/lib/sindri/sindri-upload-shell", dir},
		{"sindri-upload-shell", "-c", "/usr/lib/sindri/sindri-upload-shell " + dir},
		{"sindri-upload-shell", "-c", "'/opt/sindri/bin/sindri-upload-shell' '" + dir + "'"},
	} {
		// scp -t: the first answer, then the client's end.
		if code, stdout, stderr := run(args, "scp -t -- /3/"); code != 0 || stdout != "\x00" || stderr != "" {
			t.Errorf("%q, scp -t: %d %q %q", args, code, stdout, stderr)
		}
		// The SFTP subsystem, however sshd names it: the client goes away
		// at once.
		for _, sub := range []string{"internal-sftp", "/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server -l INFO"} {
			if code, stdout, stderr := run(args, sub); code != 0 || stdout != "" || stderr != "" {
				t.Errorf("%q, %s: %d %q %q", args, sub, code, stdout, stderr)
			}
		}
	}
}
