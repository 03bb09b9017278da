package postgres_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// livingIn lists the processes, zombies excepted, whose working directory
// is dir: a postmaster and all its children work in its data directory.
func livingIn(dir string) []int {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil || filepath.Clean(cwd) != real {
			continue
		}
		if s, _, ok := postgres.ProcessState(pid); ok && s != 'Z' && s != 'X' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// A postmaster stopped with SIGSTOP cannot act on the fast shutdown
// (SIGINT) nor on the immediate one (SIGQUIT): both stay pending. Stop
// must give fast shutdown its deadline, then end it with SIGKILL, return
// nil once it is gone, and leave the data directory startable. A session
// busy in a query does not notice its postmaster's death (a backend
// checks for it only when it waits): Stop must end it too, or it would
// keep the old shared memory in use and the next start would fail.
func TestStopKillsAPostmasterThatIgnoresShutdown(t *testing.T) {
	c := pgtest.StartInstance(t)
	pid := c.Process.PID
	// Should the test fail, nothing of this cluster may go on running (a
	// busy backend spins forever); this runs before pgtest's Stop.
	exited := c.Process.Exited
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			syscall.Kill(pid, syscall.SIGCONT)
		}
		for _, p := range livingIn(c.DataDir) {
			if p != pid && postgres.ParentPID(p) != pid {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})

	backend, busy := busyBackend(t, c.SocketURL())
	if len(livingIn(c.DataDir)) < 3 {
		t.Fatalf("processes in %s: %v; want the postmaster and its children", c.DataDir, livingIn(c.DataDir))
	}

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		state, _, ok := postgres.ProcessState(pid)
		if ok && state == 'T' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postmaster %d never stopped: state %q", pid, state)
		}
	}
	if st, err := postgres.Status(c.DataDir); err != nil || !st.Alive {
		t.Fatalf("a stopped postmaster: Status %+v %v; want alive (it is a live process)", st, err)
	}

	const fastTimeout = 300 * time.Millisecond
	started := time.Now()
	err := postgres.Stop(ctx, c.DataDir, fastTimeout)
	took := time.Since(started)
	t.Logf("Stop returned %v after %d ms", err, took.Milliseconds())
	if err != nil {
		t.Fatalf("Stop of a stopped postmaster: %v", err)
	}
	if took < fastTimeout {
		t.Fatalf("Stop returned after %s, before fast shutdown's %s were up", took, fastTimeout)
	}
	// 300 ms of fast shutdown, 5 s of immediate, then SIGKILL; 7 s leaves
	// room for a loaded machine.
	if took > 7*time.Second {
		t.Fatalf("Stop took %s", took)
	}

	// The postmaster is gone, and SIGKILL is what ended it.
	if postgres.Running(pid) {
		t.Fatalf("Running(%d) after Stop", pid)
	}
	select {
	case <-c.Process.Exited:
	case <-time.After(2 * time.Second):
		state, _, _ := postgres.ProcessState(pid)
		t.Fatalf("the postmaster %d was not reaped 2 s after Stop: state %q", pid, state)
	}
	var exit *exec.ExitError
	if err := c.Process.Err(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the postmaster ended with %v, want killed by SIGKILL", err)
	}
	if s, _, ok := postgres.ProcessState(pid); ok && s != 'Z' && s != 'X' {
		t.Fatalf("/proc/%d/stat says state %q after Stop", pid, s)
	}
	// Its children went with it, the busy backend too: none may hold the
	// shared memory or the port.
	for deadline := time.Now().Add(2 * time.Second); len(livingIn(c.DataDir)) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("processes still working in %s 2 s after Stop: %v (the busy backend is %d)", c.DataDir, livingIn(c.DataDir), backend)
		}
	}
	select {
	case err := <-busy:
		if err == nil {
			t.Fatal("the endless query finished without an error")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the busy session's connection still open 2 s after Stop")
	}
	if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.Port), time.Second); err == nil {
		conn.Close()
		t.Fatalf("port %d still accepts connections", c.Port)
	}

	// The data directory starts again, after crash recovery.
	c.Restart(t)
	if got, err := query(t, c.SocketURL(), "select 'ok'"); err != nil || got != "ok" {
		t.Fatalf("after the restart: %q %v", got, err)
	}
	if st, err := postgres.Status(c.DataDir); err != nil || !st.Alive || st.PID == pid {
		t.Fatalf("after the restart: Status %+v %v; want a new live postmaster", st, err)
	}
}

// busyBackend opens a session at url and keeps its backend busy in an
// endless loop, which notices its postmaster's death only when it waits;
// it returns once the backend is seen active, with its pid and the
// session's end.
func busyBackend(t *testing.T, url string) (pid int, ended <-chan error) {
	t.Helper()
	session, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	pid = int(session.PgConn().PID())
	done := make(chan error, 1)
	go func() {
		_, err := session.Exec(ctx, "do $$ begin loop end loop; end $$")
		done <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got, _ := query(t, url, fmt.Sprintf("select state from pg_stat_activity where pid = %d", pid))
		if got == "active" {
			return pid, done
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d never became busy: %q", pid, got)
		}
	}
}
