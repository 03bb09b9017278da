package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// The environment that marks a process sindrid started for an operation
// (pg_basebackup, psql): what it does and for what ("pull image-4"), and
// which sindrid started it ("pid:start time"). A process inherits it
// from its parent, so pg_basebackup's own WAL receiver carries it too,
// and /proc/PID/environ shows it to root.
const (
	OperationEnv      = "SINDRI_OPERATION"
	OperationOwnerEnv = "SINDRI_OPERATION_OWNER"
)

// ownerID names this process across pid reuse: its pid and its start
// time in clock ticks since boot, from /proc.
var ownerID = sync.OnceValue(func() string {
	start, _ := processStartTime(os.Getpid())
	return strconv.Itoa(os.Getpid()) + ":" + start
})

// processStartTime is field 22 of /proc/PID/stat: when the process
// started, in clock ticks since boot.
func processStartTime(pid int) (string, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return "", false
	}
	// Fields after the command name start with the state, field 3.
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return "", false
	}
	return fields[19], true
}

// ownerAlive tells whether the sindrid an owner id names still runs: the
// pid is a live process (not a zombie) that started at that time.
func ownerAlive(owner string) bool {
	pidText, start, ok := strings.Cut(owner, ":")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil || pid <= 0 {
		return false
	}
	state, _, ok := postgres.ProcessState(pid)
	if !ok || state == 'Z' || state == 'X' {
		return false
	}
	now, ok := processStartTime(pid)
	return ok && now == start
}

// runOperation runs cmd, an operation's child, so that it dies with
// sindrid: the kernel sends it SIGKILL when the thread that started it
// ends (PR_SET_PDEATHSIG), so it is started from a goroutine locked to
// its thread until the child has ended (Go ends a thread only when a
// goroutine locked to it exits; see go.dev/issue/27505). It runs in a
// process group of its own, killed whole when ctx is cancelled and once
// the child has ended, before it is reaped (so that its group's id
// cannot have been reused): pg_basebackup's WAL receiver goes with it.
// Its environment names the operation and this sindrid, for the sweep of
// a later start should it survive all the same. cmd must have been made
// by exec.CommandContext.
func runOperation(cmd *exec.Cmd, operation string) error {
	cmd.Env = append(cmd.Env, OperationEnv+"="+operation, OperationOwnerEnv+"="+ownerID())
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.Setpgid = true
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	// A descendant that keeps the output pipe open must not hold Wait.
	cmd.WaitDelay = 10 * time.Second
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			done <- err
			return
		}
		pid := cmd.Process.Pid
		// Wait for the end without reaping (WNOWAIT): until it is
		// reaped its pid, the group's id, is nobody else's.
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		_ = killGroup(pid)
		done <- cmd.Wait()
	}()
	return <-done
}

// killGroup sends SIGKILL to the process group pgid.
func killGroup(pgid int) error {
	err := syscall.Kill(-pgid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// operationProcess is a live process that a sindrid started for an
// operation, or one of its descendants.
type operationProcess struct {
	PID       int
	Operation string
	Owner     string
}

// operationProcesses lists the live processes that carry an operation's
// marks, from /proc (zombies carry no environment and are left out).
func operationProcesses() []operationProcess {
	procs, _ := os.ReadDir("/proc")
	var out []operationProcess
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(env, []byte(OperationOwnerEnv+"=")) {
			continue
		}
		op := operationProcess{PID: pid}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte(OperationEnv+"=")); ok {
				op.Operation = string(v)
			} else if v, ok := bytes.CutPrefix(kv, []byte(OperationOwnerEnv+"=")); ok {
				op.Owner = string(v)
			}
		}
		if state, _, ok := postgres.ProcessState(pid); ok && state != 'Z' && state != 'X' && op.Owner != "" {
			out = append(out, op)
		}
	}
	return out
}

// endStrayOperations kills, with SIGKILL, the operation processes whose
// sindrid is gone (and so are this process's to end), for subject only
// ("image-4") or all when subject is "", and waits until they are gone.
// An operation on subject that another live sindrid runs is
// ErrOperationRunning: it is never run twice at once.
func (e *Engine) endStrayOperations(ctx context.Context, subject string) error {
	self := ownerID()
	var killed []operationProcess
	for _, p := range operationProcesses() {
		if subject != "" && !strings.HasSuffix(p.Operation, " "+subject) {
			continue
		}
		if p.Owner == self {
			continue
		}
		if ownerAlive(p.Owner) {
			if subject != "" {
				return fmt.Errorf("%w: %q (pid %d, started by the sindrid %s)", ErrOperationRunning, p.Operation, p.PID, p.Owner)
			}
			continue
		}
		e.log.Warn("engine: ending a process whose sindrid is gone", "pid", p.PID, "operation", p.Operation, "owner", p.Owner)
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
		killed = append(killed, p)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range killed {
		for alive(p.PID) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("process %d (%s) did not end after SIGKILL", p.PID, p.Operation)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// alive: pid is a process that is neither a zombie nor dead.
func alive(pid int) bool {
	state, _, ok := postgres.ProcessState(pid)
	return ok && state != 'Z' && state != 'X'
}
