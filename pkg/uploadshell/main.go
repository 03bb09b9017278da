package uploadshell

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// Name is the program's name, and the base name sshd's ForceCommand must
// name.
const Name = "sindri-upload-shell"

const allowed = "this account only takes uploads into a pending image's directory: " +
	"scp FILE ACCOUNT@HOST:/<image id>/ (scp's SFTP mode, or scp -O), or sftp"

// Main runs sindri-upload-shell and returns its exit status. args are the
// process's arguments, command is $SSH_ORIGINAL_COMMAND (what the client
// asked for). Two ways to be run:
//
//   - sindri-upload-shell UPLOADS_DIR: as sshd's ForceCommand;
//   - sindri-upload-shell -c "…/sindri-upload-shell UPLOADS_DIR": as the
//     account's login shell, through which sshd runs the ForceCommand
//     (sshd runs every command, ForceCommand included, as
//     "SHELL -c COMMAND"). Anything else given with -c is refused, so the
//     account can run nothing but uploads, whatever sshd is told.
//
// The client's command decides what is served: the SFTP subsystem
// (SSH_ORIGINAL_COMMAND is then sshd's configured Subsystem command:
// "internal-sftp", "/usr/lib/openssh/sftp-server", with its arguments),
// or `scp -t [-d] [-p] [-r] [-v] [--] PATH` (scp -O). Everything else,
// a shell included, is refused with one line on stderr and status 1.
func Main(args []string, command string, stdin io.Reader, stdout io.WriteCloser, stderr io.Writer) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, Name+": "+format+"\n", a...)
		return 1
	}
	dir, err := uploadsDir(args)
	if err != nil {
		return fail("%v", err)
	}
	words, err := splitWords(command)
	if err != nil {
		return fail("cannot parse the command %q: %v; %s", command, err, allowed)
	}
	switch {
	case len(words) == 0:
		return fail("no shell here: %s", allowed)
	case isSFTPServer(words[0]):
		u, err := OpenUploads(dir)
		if err != nil {
			return fail("%v", err)
		}
		defer u.Close()
		if err := ServeSFTP(u, stdin, stdout); err != nil {
			return fail("sftp: %v", err)
		}
		return 0
	case path.Base(words[0]) == "scp":
		opt, target, err := parseSCP(words[1:])
		if err != nil {
			// The client reads scp's error convention and prints it.
			io.WriteString(stdout, "\x01scp: "+oneLine(err.Error())+"\n")
			return 1
		}
		u, err := OpenUploads(dir)
		if err != nil {
			io.WriteString(stdout, "\x01scp: "+oneLine(err.Error())+"\n")
			return 1
		}
		defer u.Close()
		return ServeSCPSink(u, target, opt, stdin, stdout)
	}
	return fail("%q is not allowed: %s", oneLine(command), allowed)
}

// uploadsDir finds the uploads directory in the arguments.
func uploadsDir(args []string) (string, error) {
	a := args
	if len(a) > 0 {
		a = a[1:]
	}
	switch {
	case len(a) == 1 && a[0] != "-c":
		return a[0], nil
	case len(a) == 2 && a[0] == "-c":
		words, err := splitWords(a[1])
		if err == nil && len(words) == 2 && path.Base(words[0]) == Name {
			return words[1], nil
		}
		return "", fmt.Errorf("as the upload account's shell I only run sshd's ForceCommand \"/usr/lib/sindri/%s UPLOADS_DIR\" (see sindri-upload.conf), not %q", Name, oneLine(a[1]))
	}
	return "", fmt.Errorf("usage: %s UPLOADS_DIR (as sshd's ForceCommand for the upload account); %s", Name, allowed)
}

// isSFTPServer tells whether the command is sshd's SFTP subsystem.
func isSFTPServer(cmd string) bool {
	switch path.Base(cmd) {
	case "internal-sftp", "sftp-server":
		return true
	}
	return false
}

// parseSCP parses the arguments of the remote scp that the client runs:
// `scp -t [-d] [-p] [-r] [-v] [--] PATH`.
func parseSCP(args []string) (SCPOptions, string, error) {
	var opt SCPOptions
	var to, from bool
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		for _, c := range a[1:] {
			switch c {
			case 't':
				to = true
			case 'f':
				from = true
			case 'd':
				opt.TargetIsDir = true
			case 'p':
				opt.Preserve = true
			case 'r':
				opt.Recursive = true
			case 'v':
			default:
				return opt, "", fmt.Errorf("scp option -%c is not supported; %s", c, allowed)
			}
		}
	}
	switch {
	case from:
		return opt, "", errors.New("downloads are refused: " + allowed)
	case !to:
		return opt, "", errors.New("only scp -t (an upload) runs here: " + allowed)
	case len(args)-i != 1:
		return opt, "", errors.New("ambiguous target")
	}
	return opt, args[i], nil
}

// splitWords splits a command line the way a POSIX shell splits words:
// blanks separate words, '…' quotes literally, "…" quotes with \" \\ \$
// \` escapes, a backslash escapes the next character. Nothing is expanded
// nor run: this is only to read scp's arguments.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	in := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ' ', '\t', '\n':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated '")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			in = true
		case '"':
			in = true
			for i++; ; i++ {
				if i >= len(s) {
					return nil, errors.New("unterminated \"")
				}
				if s[i] == '"' {
					break
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`\n", s[i+1]) >= 0 {
					i++
					if s[i] == '\n' {
						continue
					}
				}
				cur.WriteByte(s[i])
			}
		case '\\':
			if i+1 >= len(s) {
				return nil, errors.New("trailing backslash")
			}
			i++
			if s[i] != '\n' {
				cur.WriteByte(s[i])
				in = true
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}
