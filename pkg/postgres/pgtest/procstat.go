package pgtest

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// Process accounting for benchmarks of idle clusters: the CPU time and
// the memory (PSS) of root processes (postmasters, sindrid) and of their
// children, read from /proc with prometheus/procfs.

// userHZ is the unit of utime, stime, cutime and cstime in /proc/PID/stat
// (USER_HZ, 100 on every Linux platform Go supports).
const userHZ = 100

// procCPU is one process's CPU counters in a sample.
type procCPU struct {
	start  uint64 // start time: a reused pid is another process
	role   string
	root   bool
	runNS  uint64 // time on a CPU, every thread's
	reaped uint64 // cutime + cstime: children that exited and were reaped, in USER_HZ ticks
}

// CPUSample is the CPU counters of a set of process trees at one moment.
type CPUSample struct {
	At    time.Time
	procs map[int]procCPU
}

// SampleCPU reads the counters of every root (pid → role, e.g.
// "postmaster", "sindrid") and of every direct child of one, whose role
// is its parent's and its Postgres process title ("postmaster ›
// checkpointer", "postmaster › backend", …; see ProcessRole), in one pass
// over /proc.
func SampleCPU(roots map[int]string) CPUSample {
	s := CPUSample{At: time.Now(), procs: map[int]procCPU{}}
	procs, err := procfs.AllProcs()
	if err != nil {
		return s
	}
	for _, p := range procs {
		role, root := roots[p.PID]
		st, err := p.Stat()
		if err != nil {
			continue
		}
		if !root {
			parent, child := roots[st.PPID]
			if !child {
				continue
			}
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
			role = parent + " › " + ProcessRole(string(cmdline))
		}
		c := procCPU{start: st.Starttime, role: role, root: root,
			runNS: uint64(st.UTime+st.STime) * (1e9 / userHZ), reaped: uint64(st.CUTime + st.CSTime)}
		if st.NumThreads == 1 {
			// Exact to the nanosecond for a single thread (every
			// Postgres process); utime+stime is rounded down to ticks.
			if ss, err := p.Schedstat(); err == nil {
				c.runNS = ss.RunningNanoseconds
			}
		}
		s.procs[p.PID] = c
	}
	return s
}

// CPUUsage is the CPU time spent between two samples of the same roots,
// in seconds by role: each process's time since a (all of it for one
// that started since), and, as "ROLE › children that exited", the time of
// the roots' children that ended and were reaped meanwhile (Postgres's
// backends and autovacuum workers that came and went).
func CPUUsage(a, b CPUSample) map[string]float64 {
	out := map[string]float64{}
	for pid, after := range b.procs {
		before, ok := a.procs[pid]
		if !ok || before.start != after.start {
			before = procCPU{}
		}
		if after.runNS > before.runNS {
			out[after.role] += float64(after.runNS-before.runNS) / 1e9
		}
		if after.root && after.reaped > before.reaped {
			out[after.role+" › children that exited"] += float64(after.reaped-before.reaped) / userHZ
		}
	}
	return out
}

// auxRoles are the titles of Postgres's auxiliary processes, as in
// "postgres: CLUSTER: checkpointer"; any other child is a backend
// ("postgres: CLUSTER: USER DATABASE [local] idle").
var auxRoles = []string{
	"checkpointer", "background writer", "walwriter", "autovacuum launcher", "autovacuum worker",
	"logical replication launcher", "logical replication worker", "archiver", "stats collector",
	"startup", "walsender", "walreceiver",
}

var titleSpace = regexp.MustCompile(`[\x00\s]+`)

// ProcessRole is the role a Postgres child's command line (its process
// title) names: one of the auxiliary processes, or "backend".
func ProcessRole(cmdline string) string {
	title := strings.TrimSpace(titleSpace.ReplaceAllString(cmdline, " "))
	for _, r := range auxRoles {
		if strings.HasSuffix(title, ": "+r) || strings.Contains(title, ": "+r+" ") {
			return r
		}
	}
	return "backend"
}

// PSS is the proportional set size, in bytes, of every root and every
// direct child of one: the memory they take, shared pages divided among
// those that map them. It also returns how many processes it counted.
func PSS(roots []int) (bytes uint64, processes int) {
	isRoot := map[int]bool{}
	for _, pid := range roots {
		isRoot[pid] = true
	}
	procs, err := procfs.AllProcs()
	if err != nil {
		return 0, 0
	}
	for _, p := range procs {
		if !isRoot[p.PID] {
			st, err := p.Stat()
			if err != nil || !isRoot[st.PPID] {
				continue
			}
		}
		r, err := p.ProcSMapsRollup()
		if err != nil {
			continue
		}
		bytes += r.Pss
		processes++
	}
	return bytes, processes
}

// RSS is a process's resident set size in bytes (VmRSS), 0 when it is gone.
func RSS(pid int) uint64 {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return uint64(st.ResidentMemory())
}

// LoadAverage is the host's 1-minute load average, 0 when unknown.
func LoadAverage() float64 {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return 0
	}
	return l.Load1
}

// Forks is the number of processes the host has forked since it booted
// (/proc/stat's processes), 0 when unreadable: its growth over a window
// is every fork on the host, short-lived children that no sample sees
// included.
func Forks() uint64 { return hostStat().ProcessCreated }

// ContextSwitches is the number of context switches the host has made
// since it booted (/proc/stat's ctxt), 0 when unreadable: over a quiet
// window, about twice the wakeups of sleeping processes.
func ContextSwitches() uint64 { return hostStat().ContextSwitches }

// hostStat is /proc/stat, zero when unreadable.
func hostStat() procfs.Stat {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return procfs.Stat{}
	}
	s, err := fs.Stat()
	if err != nil {
		return procfs.Stat{}
	}
	return s
}
