package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a data directory and how sindri runs it: the binaries of its
// major version, the OS user its processes run as, its private socket
// directory and port, and the settings it starts with. Every Postgres
// program sindri runs on it (the postmaster, initdb, pg_controldata,
// psql, pg_basebackup, pg_resetwal) runs through Command, and every
// session sindri opens in it goes over its socket as the superuser.
type Cluster struct {
	// BinDir holds the binaries of the data directory's major version
	// (BinDirFor; NewestMajor for a new one). Only what runs a program
	// needs it: Answers, FlushWAL and the SQL work do without.
	BinDir  string
	DataDir string
	// SocketDir is the private directory of the unix socket, reachable
	// only by root and Owner. Port names the socket file, and is the TCP
	// port when Settings.ListenAddresses is not empty.
	SocketDir string
	Port      int
	// Owner is the OS user every program runs as; Postgres refuses root.
	Owner    OSUser
	Settings Settings
}

// pgEnv is the environment every Postgres program gets, Owner's home
// added: none of sindrid's own variables.
var pgEnv = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}

// clientEnv keeps a client program (psql, pg_basebackup) from the
// Owner's password and service files: it connects with what sindri gives
// it alone.
var clientEnv = []string{"PGPASSFILE=/dev/null", "PGSERVICEFILE=/dev/null"}

// Command is the Postgres program name of BinDir with args as sindri runs
// every one: as Owner (with Owner's group alone), in DataDir, with pgEnv
// and Owner's home as its environment, plus env. Its context ends it.
func (c *Cluster) Command(ctx context.Context, name string, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = c.DataDir
	cmd.Env = append(append(append([]string{}, pgEnv...), "HOME="+c.Owner.Home), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.Owner.UID, Gid: c.Owner.GID}}
	return cmd
}

// Init makes a new data directory as Owner, with superuser "postgres";
// authentication is sindri's hba file, written by Configure.
func (c *Cluster) Init(ctx context.Context) error {
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return err
	}
	if err := c.Owner.Chown(c.DataDir, false); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, "initdb", nil,
		"-D", c.DataDir, "-U", "postgres", "--auth-local=trust", "--auth-host=reject",
		"-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb %s: %w: %s", c.DataDir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Start runs the data directory's postmaster as Owner, in a session of
// its own so that it outlives sindrid, with stderr appended to the data
// directory's log file, and every setting sindri decides (as Configure
// wrote them) on its command line, where it wins over every configuration
// file. It returns once the process runs, not once it is ready: see
// Ready. A postmaster.pid left by a dead postmaster (a crash, or a zombie
// nobody reaps) is removed first. A clone's postmaster runs in an IPC
// namespace of its own.
func (c *Cluster) Start() (*Process, error) {
	dataDir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return nil, err
	}
	major, err := MajorVersion(dataDir)
	if err != nil {
		return nil, err
	}
	if st, err := Status(dataDir); err == nil && st.Alive {
		return nil, fmt.Errorf("a postmaster (pid %d) already runs on %s", st.PID, dataDir)
	}
	if c.Settings.Clone {
		if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err == nil {
			// A postmaster in an IPC namespace of its own cannot see
			// the shared memory its dead predecessor's backends may
			// still hold, which would make it refuse to start beside
			// them: they are killed instead.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := KillLeftovers(ctx, dataDir)
			cancel()
			if err != nil {
				return nil, err
			}
		}
	}
	if err := removeStalePIDFile(dataDir); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dataDir, LogFile)
	// Best effort: a log that cannot be moved is appended to.
	_ = rotateLog(logPath)
	log, err := openNoFollow(logPath, c.Owner)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	command := func(namespaces uintptr) *exec.Cmd {
		// Never cancelled: the postmaster outlives this call, and sindrid.
		cmd := c.Command(context.Background(), "postgres", nil, c.commandLine(dataDir, majorNumber(major))...)
		cmd.Dir = dataDir
		cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, log, log
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Cloneflags = namespaces
		return cmd
	}
	// A postmaster keys its System V shared memory by its data directory's
	// inode number and takes the first free key from there. Every clone's
	// root is the same inode, so beside N running clones it would attach to
	// N segments in turn before finding a free key; in an IPC namespace of
	// its own the first is free.
	var namespace uintptr
	if c.Settings.Clone {
		namespace = syscall.CLONE_NEWIPC
	}
	cmd := command(namespace)
	err = cmd.Start()
	if namespace != 0 && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
		// Without the privilege to make one, it shares the host's.
		cmd = command(0)
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("starting postgres on %s: %w", dataDir, err)
	}
	exited := make(chan struct{})
	p := &Process{PID: cmd.Process.Pid, Exited: exited}
	reap := func() {
		p.err = cmd.Wait()
		close(exited)
	}
	// Reaped once it has ended (Wait then returns at once), rather than by
	// a Wait from the start, which would hold a thread per postmaster for
	// its whole life: a dense host runs a thousand.
	if _, err := OnExit(p.PID, reap); err != nil {
		go reap()
	}
	return p, nil
}

// pollInterval is how often readiness is checked.
const pollInterval = time.Millisecond

// WaitReady returns once the cluster accepts a connection over its unix
// socket; see Ready.
func (c *Cluster) WaitReady(ctx context.Context, p *Process) error {
	s, err := c.Ready(ctx, p)
	if err != nil {
		return err
	}
	return s.Close(ctx)
}

// Ready waits until the cluster accepts a connection over its unix socket
// and returns that connection (a session with SessionOptions), for the
// caller's first statements. It first watches postmaster.pid, where the
// postmaster writes "ready" the moment it accepts connections (a file
// read every millisecond: connection attempts before that would each fork
// a backend that only says "starting up", slowing the start they wait
// for), then connects, retrying every millisecond until a connection
// succeeds. It fails early when p, the process Start returned (nil for a
// postmaster adopted), ends.
func (c *Cluster) Ready(ctx context.Context, p *Process) (*Session, error) {
	cfg, err := pgx.ParseConfig(SocketURL(c.SocketDir, c.Port, "postgres", "postgres"))
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["options"] = SessionOptions
	var lastErr error
	for {
		if p != nil {
			select {
			case <-p.Exited:
				return nil, fmt.Errorf("postgres on %s exited while starting (%v): %s", c.DataDir, p.Err(), LogTail(c.DataDir, 5))
			default:
			}
		}
		if pf, err := ReadPIDFile(c.DataDir); err != nil || pf.Status != "ready" {
			lastErr = fmt.Errorf("postmaster.pid does not say ready yet")
		} else {
			attempt, cancel := context.WithTimeout(ctx, time.Second)
			conn, err := pgx.ConnectConfig(attempt, cfg)
			cancel()
			if err == nil {
				return &Session{conn: conn}, nil
			}
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("postgres on %s not ready: %w (last attempt: %v)", c.DataDir, ctx.Err(), lastErr)
		case <-time.After(pollInterval):
		}
	}
}

// Stop shuts the postmaster of postmaster.pid down (see Stop).
func (c *Cluster) Stop(ctx context.Context, timeout time.Duration) error {
	return Stop(ctx, c.DataDir, timeout)
}

// Answers tells whether the postmaster answers a connection attempt over
// its socket (SocketDir and Port: nothing else is needed) before ctx
// ends; see answers: the forked child's answer to an SSLRequest, before
// any login. Only silence until ctx's deadline is no answer (err then
// wraps ErrNoAnswer); an error that comes at once (no socket, a refused
// or full queue) is an answer: not a hang.
func (c *Cluster) Answers(ctx context.Context) (answered bool, err error) {
	err = answers(ctx, c.SocketDir, c.Port)
	return !errors.Is(err, ErrNoAnswer), err
}

// Session is a session of sindri's own in a cluster: the superuser over
// the socket, with SessionOptions.
type Session struct{ conn *pgx.Conn }

// Close ends the session.
func (s *Session) Close(ctx context.Context) error { return s.conn.Close(ctx) }

// Checkpoint writes a checkpoint, so that a shutdown after it is quick
// and a clone of the data starts without recovery.
func (c *Cluster) Checkpoint(ctx context.Context) error {
	conn, err := c.connect(ctx, "")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CHECKPOINT")
	return err
}

// FlushWAL makes every commit so far durable. A cluster that commits with
// synchronous_commit off (a clone) may hold its last commits' WAL in its
// buffers, where a snapshot of its volume cannot see it; one commit with
// synchronous_commit on flushes the WAL up to it.
func (c *Cluster) FlushWAL(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, SuperuserURL(c.SocketDir, c.Port, "postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// A commit flushes only if its transaction wrote WAL.
		// search_path pinned: the instance's users can make functions
		// that a superuser's unqualified call could pick.
		_, err := tx.Exec(ctx, "set local search_path = pg_catalog; set local synchronous_commit = on; select pg_catalog.pg_logical_emit_message(true, 'sindri', 'backup')")
		return err
	})
}
