package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// Process is a postmaster that this sindrid started. Exited is closed when
// it ends (this sindrid reaps it); a postmaster adopted after a restart has
// no Process, only its pid.
type Process struct {
	PID    int
	Exited <-chan struct{}
	err    error
}

// Err is how the process ended, once Exited is closed.
func (p *Process) Err() error { return p.err }

// MaxLogBytes is the size past which an instance's log is moved to
// sindri.log.1 (replacing the one before) when its postmaster starts, so
// that a long-lived instance's logs stay bounded across restarts.
const MaxLogBytes = 8 << 20

func rotateLog(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() <= MaxLogBytes {
		return nil // none, or a link openNoFollow will replace
	}
	// rename replaces a link at the target itself, never what it points to.
	return os.Rename(path, path+".1")
}

func removeStalePIDFile(dataDir string) error {
	pidFile := filepath.Join(dataDir, "postmaster.pid")
	if _, err := os.Stat(pidFile); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if pf, err := ReadPIDFile(dataDir); err == nil {
		if err := removeStaleSocketLock(pf); err != nil {
			return err
		}
	}
	if err := os.Remove(pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// removeStaleSocketLock removes the lock file of the unix socket that the
// dead postmaster of pf left, when it names that postmaster. Postgres
// judges such a lock by kill(pid, 0), which succeeds on a zombie: a
// postmaster killed while its parent (not this sindrid, after a restart)
// does not reap it would keep every successor from starting.
func removeStaleSocketLock(pf PIDFile) error {
	if pf.SocketDir == "" || pf.Port <= 0 || pf.PID <= 0 || Running(pf.PID) {
		return nil
	}
	lock := filepath.Join(pf.SocketDir, fmt.Sprintf(".s.PGSQL.%d.lock", pf.Port))
	data, err := readNoFollow(lock)
	if err != nil {
		return nil // none, or not a file of ours
	}
	first, _, _ := strings.Cut(string(data), "\n")
	if pid, err := strconv.Atoi(strings.TrimSpace(first)); err != nil || pid != pf.PID {
		return nil
	}
	if err := os.Remove(lock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ProcessState is what /proc/PID/stat says of a pid: its state letter (Z
// for a zombie), its command name, and ok false when there is no such
// process.
func ProcessState(pid int) (state byte, comm string, ok bool) {
	st, ok := procStat(pid)
	if !ok || st.State == "" {
		return 0, "", false
	}
	return st.State[0], st.Comm, true
}

// procStat reads /proc/PID/stat (with prometheus/procfs).
func procStat(pid int) (procfs.ProcStat, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStat{}, false
	}
	st, err := p.Stat()
	return st, err == nil
}

// Activity is what the kernel counts of a process's running, from
// /proc/PID/schedstat, and its state letter then.
type Activity struct {
	Runs  uint64        // times it was put on a CPU
	OnCPU time.Duration // time it spent running
	State byte
}

// ReadActivity reads pid's Activity; ok is false when the process is gone
// or the kernel keeps no scheduler statistics.
func ReadActivity(pid int) (a Activity, ok bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return Activity{}, false
	}
	sched, err := p.Schedstat()
	if err != nil {
		return Activity{}, false
	}
	state, _, ok := ProcessState(pid)
	return Activity{Runs: sched.RunTimeslices, OnCPU: time.Duration(sched.RunningNanoseconds), State: state}, ok
}

// Stalled tells whether the process cannot be serving: stopped, traced,
// in an uninterruptible sleep, or dead.
func (a Activity) Stalled() bool {
	switch a.State {
	case 'T', 't', 'D', 'Z', 'X':
		return true
	}
	return false
}

// Running tells whether pid is a live postgres process: it exists, is not
// a zombie, and runs the postgres binary.
func Running(pid int) bool {
	if pid <= 0 {
		return false
	}
	state, comm, ok := ProcessState(pid)
	return ok && state != 'Z' && state != 'X' && (comm == "postgres" || comm == "postmaster")
}

// PIDFile is what a postmaster.pid says.
type PIDFile struct {
	PID       int
	DataDir   string
	Port      int
	SocketDir string
	Status    string // "starting", "ready", "stopping", "standby"
}

// ReadPIDFile parses the data directory's postmaster.pid.
func ReadPIDFile(dataDir string) (PIDFile, error) {
	data, err := readNoFollow(filepath.Join(dataDir, "postmaster.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return PIDFile{}, fmt.Errorf("%w on %s (no postmaster.pid)", ErrNotRunning, dataDir)
	}
	if err != nil {
		return PIDFile{}, err
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	line := func(i int) string {
		if i < len(lines) {
			return strings.TrimSpace(lines[i])
		}
		return ""
	}
	pid, err := strconv.Atoi(line(0))
	if err != nil {
		return PIDFile{}, fmt.Errorf("postmaster.pid of %s: bad pid %q", dataDir, line(0))
	}
	port, _ := strconv.Atoi(line(3))
	return PIDFile{PID: pid, DataDir: line(1), Port: port, SocketDir: line(4), Status: line(7)}, nil
}

// ClusterStatus combines the postmaster.pid with the process table.
type ClusterStatus struct {
	PIDFile
	// Alive: the pid of postmaster.pid is a running postgres process.
	Alive bool
}

// Status reads postmaster.pid and checks its process: alive means a
// running postgres whose working directory is this data directory (so a
// reused pid is not taken for it). No postmaster.pid is ErrNotRunning.
func Status(dataDir string) (ClusterStatus, error) {
	pf, err := ReadPIDFile(dataDir)
	if err != nil {
		return ClusterStatus{}, err
	}
	return ClusterStatus{PIDFile: pf, Alive: Running(pf.PID) && worksIn(pf.PID, resolve(dataDir))}, nil
}

// resolve is dataDir as /proc shows a working directory: absolute, with
// symbolic links resolved (data_path may be reached through one).
func resolve(dataDir string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return filepath.Clean(dataDir)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real
	}
	return abs
}

// worksIn tells whether pid's working directory is dir (resolved).
func worksIn(pid int, dir string) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return err == nil && filepath.Clean(cwd) == dir
}

// processesIn maps the live postgres processes working in dataDir to
// their parents.
func processesIn(dataDir string) map[int]int {
	dir := resolve(dataDir)
	procs, _ := os.ReadDir("/proc")
	out := map[int]int{}
	for _, p := range procs {
		// The working directory first: one readlink, which rules out
		// nearly every process of a dense host at once.
		pid, err := strconv.Atoi(p.Name())
		if err != nil || !worksIn(pid, dir) || !Running(pid) {
			continue
		}
		out[pid] = ParentPID(pid)
	}
	return out
}

// SocketURL is a libpq URL that reaches the cluster over its unix socket
// as user (trusted there: the socket directory is private).
func SocketURL(socketDir string, port int, user, database string) string {
	return fmt.Sprintf("postgres://%s@/%s?host=%s&port=%d&sslmode=disable", user, database, socketDir, port)
}

// SessionOptions are the settings of sindri's own sessions in a cluster
// whose data came from elsewhere, sent when they connect: they win over
// what the data's catalog sets per database or role (ALTER DATABASE/ROLE
// ... SET), so that no library is loaded into such a session, no name it
// uses resolves to an object of the data's own (pg_catalog alone is
// searched), no trigger or event trigger of the data's fires but those
// enabled ALWAYS (replica mode), and no timeout or read-only default
// stops it.
const SessionOptions = "-c search_path=pg_catalog,pg_temp -c session_preload_libraries= -c local_preload_libraries=" +
	" -c dynamic_library_path=$libdir -c session_replication_role=replica -c statement_timeout=0 -c lock_timeout=0" +
	" -c idle_in_transaction_session_timeout=0 -c default_transaction_read_only=off"

// SuperuserURL is SocketURL for sindri's own sessions as the superuser
// postgres, with SessionOptions.
func SuperuserURL(socketDir string, port int, database string) string {
	// %20, not +: libpq and pgx read a + in a URL as itself.
	return SocketURL(socketDir, port, "postgres", database) + "&options=" + strings.ReplaceAll(url.QueryEscape(SessionOptions), "+", "%20")
}

// Stop shuts the postmaster down: fast shutdown (SIGINT: sessions are
// rolled back, a checkpoint is written), then immediate (SIGQUIT) when it
// has not ended within timeout, then SIGKILL of it and its children (see
// killPostmaster).
func Stop(ctx context.Context, dataDir string, timeout time.Duration) error {
	st, err := Status(dataDir)
	if err != nil || !st.Alive {
		// No postmaster.pid, an unreadable one, or one naming a process
		// that is not this cluster's (a reused pid): nothing to signal.
		return nil
	}
	return StopPID(ctx, st.PID, timeout)
}

// StopPID is Stop for a known postmaster pid.
func StopPID(ctx context.Context, pid int, timeout time.Duration) error {
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, timeout}, {syscall.SIGQUIT, 5 * time.Second}}
	for _, step := range steps {
		if !Running(pid) {
			return nil
		}
		if err := syscall.Kill(pid, step.sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		if waitGone(ctx, pid, step.wait) {
			return nil
		}
	}
	if killPostmaster(ctx, pid) {
		return nil
	}
	return fmt.Errorf("postmaster %d did not stop", pid)
}

// Kill ends a postmaster that does not answer, at once, with its children
// (see killPostmaster), even when stopped. It waits until they are gone.
func Kill(ctx context.Context, pid int) error {
	if !Running(pid) {
		return nil
	}
	if killPostmaster(ctx, pid) {
		return nil
	}
	return fmt.Errorf("postmaster %d did not end after SIGKILL", pid)
}

// killPostmaster sends SIGKILL to a postmaster and to each of its
// children's process groups, and tells whether all are gone within 5 s.
// Postgres makes every child the leader of a group of its own, so the
// postmaster's group holds only the postmaster; and a child busy in a
// query would not notice its death, keeping the shared memory in use so
// that the next start fails. The postmaster is stopped first, so that it
// forks no child between the listing and the kill.
func killPostmaster(ctx context.Context, pid int) bool {
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	// The signal is delivered asynchronously: list the children only once
	// the postmaster is seen stopped (or gone), or after a second.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if state, _, ok := ProcessState(pid); !ok || state == 'T' || state == 'Z' || state == 'X' {
			break
		}
	}
	children := childrenOf(pid)
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for _, child := range children {
		_ = syscall.Kill(-child, syscall.SIGKILL)
		_ = syscall.Kill(child, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range append([]int{pid}, children...) {
		if !waitGone(ctx, p, time.Until(deadline)) {
			return false
		}
	}
	return true
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	procs, _ := os.ReadDir("/proc")
	var out []int
	for _, p := range procs {
		child, err := strconv.Atoi(p.Name())
		if err == nil && ParentPID(child) == pid {
			out = append(out, child)
		}
	}
	return out
}

func waitGone(ctx context.Context, pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for Running(pid) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// LogTail returns the last n lines of the data directory's log file.
func LogTail(dataDir string, n int) string {
	data, err := readNoFollow(filepath.Join(dataDir, LogFile))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Postmasters finds the live postgres processes working in dataDir whose
// parent is not one of them: the postmasters, found even before (or
// without) a postmaster.pid, as when the sindrid that started one died
// during its start.
func Postmasters(dataDir string) []int {
	inDir := processesIn(dataDir)
	var out []int
	for pid, ppid := range inDir {
		if _, child := inDir[ppid]; !child {
			out = append(out, pid)
		}
	}
	return out
}

// ParentPID is pid's parent from /proc/PID/stat; 0 when pid is gone.
func ParentPID(pid int) int {
	st, ok := procStat(pid)
	if !ok {
		return 0
	}
	return st.PPID
}

// StopAll stops every postmaster working in dataDir, whether or not its
// postmaster.pid says so.
func StopAll(ctx context.Context, dataDir string, timeout time.Duration) error {
	if err := Stop(ctx, dataDir, timeout); err != nil {
		return err
	}
	var errs []error
	for _, pid := range Postmasters(dataDir) {
		errs = append(errs, StopPID(ctx, pid, timeout))
	}
	return errors.Join(errs...)
}

// KillLeftovers kills, with SIGKILL, every postgres process still working
// in dataDir once its postmaster is dead: backends and auxiliaries that
// have not noticed yet would keep the old shared memory in use and make a
// new postmaster refuse to start. It waits until they are gone.
func KillLeftovers(ctx context.Context, dataDir string) error {
	if st, err := Status(dataDir); err == nil && st.Alive {
		return fmt.Errorf("the postmaster of %s (pid %d) is alive", dataDir, st.PID)
	}
	var pids []int
	for pid := range processesIn(dataDir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		pids = append(pids, pid)
	}
	for _, pid := range pids {
		if !waitGone(ctx, pid, 5*time.Second) {
			return fmt.Errorf("process %d of %s did not end after SIGKILL", pid, dataDir)
		}
	}
	return nil
}
