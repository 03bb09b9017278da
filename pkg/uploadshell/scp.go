package uploadshell

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"time"
)

// The legacy SCP protocol, sink side: what `scp -t` runs on the remote
// host for `scp -O FILE host:PATH`. See OpenSSH's scp.c, sink().
//
// After each record the sink answers one byte: 0 for "go on", or 1
// followed by a message and a newline for an error the client prints
// ("\x01scp: /3/x: Permission denied\n"); the client then skips that file
// (or directory) and exits non-zero at the end. Records:
//
//	C<mode> <size> <name>\n  a file; size bytes follow, then the client's
//	                         status byte (0), then the sink's answer
//	D<mode> 0 <name>\n       a directory (scp -r): records follow until E
//	E\n                      end of directory
//	T<mtime> 0 <atime> 0\n   times of the next file or directory (scp -p)
//	\x01msg\n / \x02msg\n    the client's error, which the sink counts
//	                         (\x02: fatal)

// SCPOptions are the options of `scp -t`.
type SCPOptions struct {
	TargetIsDir bool // -d: the target must be a directory (several sources)
	Preserve    bool // -p: set times from T records
	Recursive   bool // -r: D records are allowed
}

// maxLine bounds a record line (scp's sink takes 2048 bytes).
const maxLine = 4096

// maxDepth bounds the nesting of directories sent with scp -r.
const maxDepth = 32

type scpSink struct {
	u    *Uploads
	opt  SCPOptions
	in   *bufio.Reader
	out  io.Writer
	errs int
}

// errFatal ends the session: the message has been sent.
var errFatal = errors.New("scp: fatal")

// ServeSCPSink runs `scp -t target` on in and out and returns scp's exit
// status: 0 if every record was taken, 1 otherwise.
func ServeSCPSink(u *Uploads, target string, opt SCPOptions, in io.Reader, out io.Writer) int {
	s := &scpSink{u: u, opt: opt, in: bufio.NewReaderSize(in, 64<<10), out: out}
	if err := s.serve(target); err != nil {
		return 1
	}
	if s.errs > 0 {
		return 1
	}
	return 0
}

func (s *scpSink) serve(target string) error {
	if strings.HasPrefix(target, "~") && (len(target) == 1 || target[1] == '/') {
		// The account's home, as scp users write it, is the top.
		target = target[1:]
	}
	rel, err := clean(target)
	if err != nil {
		return s.fatal(err.Error())
	}
	// With several files (-d) or a final slash, the target is a
	// directory that must exist.
	if s.opt.TargetIsDir || strings.HasSuffix(target, "/") {
		if fi, err := s.u.lstat(rel); err != nil {
			return s.fatal(describe(rel, err))
		} else if fi.Mode()&fs.ModeSymlink != 0 {
			return s.fatal(shown(rel) + ": a symbolic link, which is not followed")
		} else if !fi.IsDir() {
			return s.fatal(shown(rel) + ": Not a directory")
		}
	}
	return s.sink(rel, 0)
}

// sink takes the records for the target rel: scp.c's sink(), recursive
// for directories. It starts with the acknowledgement of the command (or
// of the D record).
func (s *scpSink) sink(targ string, depth int) error {
	if err := s.ack(); err != nil {
		return err
	}
	targIsDir := s.u.isDir(targ)
	var times *[2]time.Time // atime, mtime
	for first := true; ; first = false {
		line, err := s.readLine(false)
		if errors.Is(err, io.EOF) && line == "" {
			return nil
		}
		if errors.Is(err, io.EOF) {
			return s.fatal("lost connection")
		}
		if err != nil {
			return s.fatal("protocol error: " + err.Error())
		}
		switch line[0] {
		case '\x01', '\x02':
			s.errs++
			if line[0] == '\x02' {
				return errFatal
			}
			continue
		case 'E':
			return s.ack()
		case 'T':
			t, err := parseTimes(line)
			if err != nil {
				return s.fatal("protocol error: " + err.Error())
			}
			times = t
			if err := s.ack(); err != nil {
				return err
			}
			continue
		case 'C', 'D':
		default:
			if first {
				return s.fatal(line)
			}
			return s.fatal("protocol error: expected control record")
		}
		size, name, err := parseRecord(line)
		if err != nil {
			return s.fatal(err.Error())
		}
		np := targ
		if targIsDir {
			np = joinRel(targ, name)
		}
		t := times
		times = nil
		if line[0] == 'D' {
			if !s.opt.Recursive {
				return s.fatal("protocol error: received directory without -r")
			}
			if depth >= maxDepth {
				return s.fatal(fmt.Sprintf("%s: directories nested too deep", shown(np)))
			}
			if err := s.u.mkdir(np, true); err != nil {
				if err := s.refuse(describe(np, err)); err != nil {
					return err
				}
				continue
			}
			if err := s.sink(np, depth+1); err != nil {
				return err
			}
			if t != nil && s.opt.Preserve {
				s.u.chtimes(np, t[0], t[1]) // as scp: failures to set a directory's times are not reported
			}
			continue
		}
		if err := s.file(np, size, t); err != nil {
			return err
		}
	}
}

// file takes one C record's data into np.
func (s *scpSink) file(np string, size int64, times *[2]time.Time) error {
	f, err := s.u.create(np, true, false, false)
	if err != nil {
		return s.refuse(describe(np, err))
	}
	if err := s.ack(); err != nil {
		f.Close()
		return err
	}
	// Keep reading after a write error, to stay in step with the client.
	w := &stickyWriter{w: f}
	if _, err := io.CopyN(w, s.in, size); err != nil {
		f.Close()
		return s.fatal("lost connection")
	}
	werr := w.err
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	// The client's status after the data.
	if err := s.response(); err != nil {
		return err
	}
	if werr == nil && times != nil && s.opt.Preserve {
		if err := s.u.chtimes(np, times[0], times[1]); err != nil {
			werr = fmt.Errorf("set times: %w", err)
		}
	}
	if werr != nil {
		return s.refuse(describe(np, werr))
	}
	return s.ack()
}

// response reads the client's status byte: 0, or 1/2 and a message.
func (s *scpSink) response() error {
	b, err := s.in.ReadByte()
	if err != nil {
		return s.fatal("lost connection")
	}
	switch b {
	case 0:
		return nil
	case 1, 2:
		if _, err := s.readLine(true); err != nil {
			return s.fatal("lost connection")
		}
		s.errs++
		if b == 2 {
			return errFatal
		}
		return nil
	}
	return s.fatal("protocol error: bad response")
}

func (s *scpSink) ack() error {
	if _, err := s.out.Write([]byte{0}); err != nil {
		return errFatal
	}
	return nil
}

// refuse answers a record with an error the client prints; the session
// goes on.
func (s *scpSink) refuse(msg string) error {
	s.errs++
	if _, err := io.WriteString(s.out, "\x01scp: "+oneLine(msg)+"\n"); err != nil {
		return errFatal
	}
	return nil
}

// fatal answers with an error and ends the session.
func (s *scpSink) fatal(msg string) error {
	s.errs++
	io.WriteString(s.out, "\x01scp: "+oneLine(msg)+"\n")
	return errFatal
}

// readLine reads a record up to its newline, which it drops; io.EOF
// if the input ends first.
func (s *scpSink) readLine(emptyOK bool) (string, error) {
	var b []byte
	for {
		c, err := s.in.ReadByte()
		if err != nil {
			return string(b), err
		}
		if c == '\n' {
			if len(b) == 0 && !emptyOK {
				return "", errors.New("unexpected <newline>")
			}
			return string(b), nil
		}
		b = append(b, c)
		if len(b) > maxLine {
			return "", errors.New("record too long")
		}
	}
}

// parseRecord parses "C0644 1234 name" (or D...): the size and the name.
// The mode is checked and ignored.
func parseRecord(line string) (int64, string, error) {
	rest := line[1:]
	if len(rest) < 5 || rest[4] != ' ' {
		return 0, "", errors.New("protocol error: mode not delimited")
	}
	for _, c := range rest[:4] {
		if c < '0' || c > '7' {
			return 0, "", errors.New("protocol error: bad mode")
		}
	}
	rest = rest[5:]
	sz, name, ok := strings.Cut(rest, " ")
	if !ok {
		return 0, "", errors.New("protocol error: size not delimited")
	}
	size, err := strconv.ParseInt(sz, 10, 64)
	if err != nil || size < 0 || sz[0] < '0' || sz[0] > '9' {
		return 0, "", errors.New("protocol error: size out of range")
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return 0, "", fmt.Errorf("error: unexpected filename: %q", name)
	}
	return size, name, nil
}

// parseTimes parses "T<mtime> <usec> <atime> <usec>".
func parseTimes(line string) (*[2]time.Time, error) {
	f := strings.Split(line[1:], " ")
	if len(f) != 4 {
		return nil, errors.New("bad times record")
	}
	var n [4]int64
	for i, s := range f {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 || (i%2 == 1 && v > 999999) {
			return nil, errors.New("bad times record")
		}
		n[i] = v
	}
	return &[2]time.Time{time.Unix(n[2], n[3]*1000), time.Unix(n[0], n[1]*1000)}, nil
}

func joinRel(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r < ' ' {
			return '?'
		}
		return r
	}, s)
}

// stickyWriter writes until the first error, which it keeps, and then
// discards the rest.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (w *stickyWriter) Write(p []byte) (int, error) {
	if w.err == nil {
		_, w.err = w.w.Write(p)
	}
	return len(p), nil
}
