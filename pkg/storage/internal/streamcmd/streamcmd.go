// Package streamcmd runs the filesystem tools that write or read an
// image's stream (btrfs send and receive, zfs send and receive): with an
// argument list, for as long as the stream moves, stderr in the error.
package streamcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// StallTimeout gives a stream up when no byte of it has moved for that
// long: the other end is gone. A stream has no deadline of its own, since
// its length depends on the image's size; the caller's context may set
// one.
var StallTimeout = 2 * time.Minute

// killGrace is how long a command has to exit after SIGTERM before it is
// killed.
const killGrace = 5 * time.Second

// ErrStalled is a stream through which nothing moved for StallTimeout.
var ErrStalled = errors.New("no byte of the stream moved")

// maxStderr bounds the stderr kept for the error.
const maxStderr = 8 << 10

// Run runs name with args, its stdin read from in and its stdout written
// to out (either may be nil), and returns once it has exited. When ctx
// ends or the stream stalls, the command gets SIGTERM, and SIGKILL after a
// grace period. The error names the command and holds its stderr, and
// wraps the first cause: ctx's error (or ErrStalled), then an error of in
// or out, then the command's exit status; and syscall.ENOSPC too when
// stderr says the filesystem is full. A reader that blocks is not
// waited for once the command has exited: the caller closes it.
func Run(ctx context.Context, in io.Reader, out io.Writer, name string, args ...string) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = killGrace
	stderr := &limitedBuffer{max: maxStderr}
	cmd.Stderr = stderr

	var moved atomic.Int64
	var stdin io.WriteCloser
	var stdout io.ReadCloser
	var err error
	if in != nil {
		if stdin, err = cmd.StdinPipe(); err != nil {
			return err
		}
	}
	if out != nil {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			return err
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", describe(name, args), err)
	}

	done := make(chan struct{})
	defer close(done)
	go watch(&moved, done, cancel)

	// The stream's input: copied until in ends or fails, or the command
	// stops reading (it exited, and Wait closed the pipe).
	inResult := make(chan error, 1)
	if in != nil {
		go func() {
			inResult <- feed(stdin, in, &moved)
			stdin.Close()
		}()
	} else {
		inResult <- nil
	}
	var outErr error
	if out != nil {
		// Until the command's stdout ends, or out fails: then closing the
		// pipe makes the command's next write fail, and it exits.
		if outErr = drain(out, stdout, &moved); outErr != nil {
			stdout.Close()
		}
	}
	waitErr := cmd.Wait()
	// An input that ended or failed before the command exited has its
	// say; one still blocked in a read is not waited for.
	var inErr error
	select {
	case inErr = <-inResult:
	case <-time.After(100 * time.Millisecond):
	}
	if waitErr == nil && inErr == nil && outErr == nil {
		return nil
	}

	var cause error
	switch {
	case ctx.Err() != nil:
		cause = context.Cause(ctx)
	case inErr != nil:
		cause = fmt.Errorf("reading the stream: %w", inErr)
	case outErr != nil:
		cause = fmt.Errorf("writing the stream: %w", outErr)
	default:
		cause = waitErr
	}
	msg := strings.TrimSpace(stderr.String())
	if outOfSpace(msg) && !errors.Is(cause, syscall.ENOSPC) {
		cause = fmt.Errorf("%w (%w)", cause, syscall.ENOSPC)
	}
	if msg == "" {
		return fmt.Errorf("%s: %w", describe(name, args), cause)
	}
	return fmt.Errorf("%s: %w: %s", describe(name, args), cause, msg)
}

// watch cancels the command with ErrStalled once moved has not changed for
// StallTimeout.
func watch(moved *atomic.Int64, done <-chan struct{}, cancel context.CancelCauseFunc) {
	timeout := StallTimeout
	tick := time.NewTicker(max(timeout/8, 10*time.Millisecond))
	defer tick.Stop()
	last, since := moved.Load(), time.Now()
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			if n := moved.Load(); n != last {
				last, since = n, now
			} else if now.Sub(since) >= timeout {
				cancel(fmt.Errorf("%w for %s", ErrStalled, timeout))
				return
			}
		}
	}
}

// outOfSpace tells from a tool's stderr that the filesystem ran out of
// space, which its exit status does not: btrfs receive prints strerror's
// words, zfs receive "out of space".
func outOfSpace(stderr string) bool {
	return strings.Contains(stderr, "No space left on device") || strings.Contains(stderr, "out of space")
}

func describe(name string, args []string) string {
	return strings.Join(append([]string{name}, args...), " ")
}

// feed copies in into the command's stdin and returns in's error: a
// failed write means the command stopped reading, and its exit status
// tells why.
func feed(stdin io.Writer, in io.Reader, moved *atomic.Int64) error {
	buf := make([]byte, 256<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			moved.Add(int64(n))
			if _, werr := stdin.Write(buf[:n]); werr != nil {
				return nil
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// drain copies the command's stdout into out and returns out's error.
func drain(out io.Writer, stdout io.Reader, moved *atomic.Int64) error {
	buf := make([]byte, 256<<10)
	for {
		n, err := stdout.Read(buf)
		if n > 0 {
			if _, werr := out.Write(buf[:n]); werr != nil {
				return werr
			}
			moved.Add(int64(n))
		}
		if err != nil {
			return nil // the command's end: its exit status tells how
		}
	}
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Guard returns a reader of r that fails with ctx's error once ctx ends,
// or with ErrStalled once nothing has been read for StallTimeout, even
// in the middle of a Read of r that blocks (which is left behind: the
// caller closes r). stop ends the guard; call it once done reading.
func Guard(ctx context.Context, r io.Reader) (guarded io.Reader, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	pr, pw := io.Pipe()
	var moved atomic.Int64
	done := make(chan struct{})
	go watch(&moved, done, cancel)
	go func() {
		err := feed(pw, r, &moved)
		pw.CloseWithError(err) // nil: io.EOF for the reader
	}()
	go func() {
		<-ctx.Done()
		// The reader's next Read fails with the cause; a Write of feed
		// in the middle fails too, and it stops.
		pw.CloseWithError(context.Cause(ctx))
	}()
	var once sync.Once
	return pr, func() {
		once.Do(func() {
			close(done)
			cancel(context.Canceled)
		})
	}
}
