package postgres_test

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// calledWithin tells whether ch is closed within d.
func calledWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// OnExit sees a process end whether or not it is this process's child and
// whether or not anybody reaps it: here a child left unreaped (a zombie),
// and a grandchild whose parent is gone (as a postmaster adopted after a
// restart of sindrid is), which this machine's PID 1 never reaps.
func TestOnExitSeesChildrenAndOthersEndUnreaped(t *testing.T) {
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Wait()

	// The other parent: sh becomes a sleep that never reaps its child.
	// This test adopts what it leaves (a subreaper) to reap it at the end,
	// since PID 1 would not.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	parent := exec.Command("sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!; exec sleep 61")
	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(orphan, syscall.SIGKILL)
		parent.Process.Kill()
		parent.Wait()
		var ws unix.WaitStatus
		unix.Wait4(orphan, &ws, 0, nil) // adopted by this process once its parent died
	}()
	if ppid := postgres.ParentPID(orphan); ppid == os.Getpid() {
		t.Fatalf("process %d is this test's child", orphan)
	}

	for _, c := range []struct {
		what string
		pid  int
	}{{"an unreaped child", child.Process.Pid}, {"a process of another parent", orphan}} {
		ended := make(chan struct{})
		stop, err := postgres.OnExit(c.pid, func() { close(ended) })
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		if calledWithin(ended, 300*time.Millisecond) {
			t.Fatalf("%s: fn ran while the process lives", c.what)
		}
		killed := time.Now()
		if err := syscall.Kill(c.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !calledWithin(ended, 2*time.Second) {
			state, _, _ := postgres.ProcessState(c.pid)
			t.Fatalf("%s: fn did not run within 2 s of SIGKILL (state %q)", c.what, state)
		}
		t.Logf("%s: seen ending %s after SIGKILL", c.what, time.Since(killed))
		stop() // after the call: does nothing
	}

	// A watch on a process gone already calls at once.
	ended := make(chan struct{})
	if _, err := postgres.OnExit(child.Process.Pid, func() { close(ended) }); err != nil {
		t.Fatal(err)
	}
	if !calledWithin(ended, 2*time.Second) {
		t.Fatal("a watch on an ended process was never called")
	}
}

// A stopped watch is never called, and the watches of other processes go
// on.
func TestOnExitStopForgets(t *testing.T) {
	a, b := exec.Command("sleep", "60"), exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{a, b} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer c.Wait()
		defer c.Process.Kill()
	}
	aEnded, bEnded := make(chan struct{}), make(chan struct{})
	stopA, err := postgres.OnExit(a.Process.Pid, func() { close(aEnded) })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.OnExit(b.Process.Pid, func() { close(bEnded) }); err != nil {
		t.Fatal(err)
	}
	stopA()
	a.Process.Kill()
	b.Process.Kill()
	if !calledWithin(bEnded, 2*time.Second) {
		t.Fatal("the other watch was not called")
	}
	if calledWithin(aEnded, 300*time.Millisecond) {
		t.Fatal("a stopped watch was called")
	}
}
