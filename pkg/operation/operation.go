// Package operation runs the child processes of sindrid's long operations
// (pg_basebackup for a pull, psql for an anonymisation script) so that
// they die with sindrid, and finds and ends those that a sindrid which is
// gone left running all the same.
//
// A child is started from a goroutine locked to its OS thread with
// PR_SET_PDEATHSIG, in a process group of its own, and its environment
// names the operation and the sindrid that started it (Env, OwnerEnv):
// what outlives it (pg_basebackup's own WAL receiver, which the kernel
// does not signal) carries the names, and a later sindrid's sweep (Strays)
// ends it.
package operation

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

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// The environment that marks a process sindrid started for an operation:
// what it does and for what ("pull image-4"), and which sindrid started
// it ("pid:start time"). A process inherits it from its parent, and
// /proc/PID/environ shows it to root.
const (
	Env      = "SINDRI_OPERATION"
	OwnerEnv = "SINDRI_OPERATION_OWNER"
)

// Self names this process across pid reuse: its pid and its start time in
// clock ticks since boot, from /proc.
var Self = sync.OnceValue(func() string {
	start, _ := startTime(os.Getpid())
	return strconv.Itoa(os.Getpid()) + ":" + start
})

// startTime is when pid started, in clock ticks since boot (field 22 of
// /proc/PID/stat).
func startTime(pid int) (string, bool) {
	st, ok := stat(pid)
	if !ok {
		return "", false
	}
	return strconv.FormatUint(st.Starttime, 10), true
}

func stat(pid int) (procfs.ProcStat, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStat{}, false
	}
	st, err := p.Stat()
	return st, err == nil
}

// Alive tells whether pid is a process that is neither a zombie nor dead.
func Alive(pid int) bool {
	st, ok := stat(pid)
	return ok && st.State != "Z" && st.State != "X"
}

// ownerAlive tells whether the sindrid an owner id names still runs: the
// pid is a live process (not a zombie) that started at that time.
func ownerAlive(owner string) bool {
	pidText, start, ok := strings.Cut(owner, ":")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil || pid <= 0 || !Alive(pid) {
		return false
	}
	now, ok := startTime(pid)
	return ok && now == start
}

// Run runs cmd, an operation's child, so that it dies with sindrid: the
// kernel sends it SIGKILL when the thread that started it ends
// (PR_SET_PDEATHSIG), so it is started from a goroutine locked to its
// thread until the child has ended (Go ends a thread only when a goroutine
// locked to it exits; see go.dev/issue/27505). It runs in a process group
// of its own, killed whole when cmd's context is cancelled and once the
// child has ended, before it is reaped (so that its group's id cannot have
// been reused): pg_basebackup's WAL receiver goes with it. Its environment
// names the operation ("pull image-4") and this sindrid, for the sweep of
// a later start should it survive all the same. cmd must have been made by
// exec.CommandContext.
func Run(cmd *exec.Cmd, operation string) error {
	cmd.Env = append(cmd.Env, Env+"="+operation, OwnerEnv+"="+Self())
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

// Process is a live process that a sindrid started for an operation, or
// one of its descendants.
type Process struct {
	PID       int
	Operation string
	Owner     string
}

// List lists the live processes that carry an operation's marks, from
// /proc (zombies carry no environment and are left out).
func List() []Process {
	procs, _ := os.ReadDir("/proc")
	var out []Process
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(env, []byte(OwnerEnv+"=")) {
			continue
		}
		op := Process{PID: pid}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte(Env+"=")); ok {
				op.Operation = string(v)
			} else if v, ok := bytes.CutPrefix(kv, []byte(OwnerEnv+"=")); ok {
				op.Owner = string(v)
			}
		}
		if op.Owner != "" && Alive(pid) {
			out = append(out, op)
		}
	}
	return out
}

// Name is the name of an operation on subject ("image-4") for a scope,
// the installation whose metadata names the subject: two installations on
// one host have subjects of the same names, and neither may end or wait
// for the other's operations.
func Name(scope, verb, subject string) string {
	return scope + ": " + verb + " " + subject
}

// inScope tells whether an operation is of scope and, unless subject is
// "", on subject. A name without a scope, from a sindrid of before scopes,
// is every scope's.
func inScope(operation, scope, subject string) bool {
	rest, ok := strings.CutPrefix(operation, scope+": ")
	if !ok {
		if strings.Contains(operation, ": ") {
			return false
		}
		rest = operation
	}
	return subject == "" || strings.HasSuffix(rest, " "+subject)
}

// EndStrays kills, with SIGKILL, the operation processes of scope whose
// sindrid is gone, for subject only ("image-4": an operation named
// Name(scope, "pull", "image-4")) or all when subject is "", and waits
// until they are gone; ended is called for each before it is killed. A
// process of another live sindrid is left alone; for a subject it is
// returned as busy, at once: the operation must not run twice.
func EndStrays(ctx context.Context, scope, subject string, ended func(Process)) (busy *Process, err error) {
	self := Self()
	var killed []Process
	for _, p := range List() {
		if !inScope(p.Operation, scope, subject) {
			continue
		}
		if p.Owner == self {
			continue
		}
		if ownerAlive(p.Owner) {
			if subject != "" {
				return &p, nil
			}
			continue
		}
		if ended != nil {
			ended(p)
		}
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
		killed = append(killed, p)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range killed {
		for Alive(p.PID) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, fmt.Errorf("process %d (%s) did not end after SIGKILL", p.PID, p.Operation)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil, nil
}
