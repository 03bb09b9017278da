package engine_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// The store's TestAllocatePortSkipsBusyPorts checks the allocation loop
// with an injected check; here a real socket holds the port and the
// engine's own bind check must see it, on every address: one port is
// held on all addresses, the next on 127.0.0.1 only (a Postgres with
// listen_addresses '*' would start there on ::, and a client of
// 127.0.0.1 would reach the other program).
func TestBusyPortIsSkippedForReal(t *testing.T) {
	w := newWorld(t, 10)
	wildcard, err := net.Listen("tcp", fmt.Sprintf(":%d", w.minPort))
	if err != nil {
		t.Fatalf("occupying port %d: %v", w.minPort, err)
	}
	defer wildcard.Close()
	loopback, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", w.minPort+1))
	if err != nil {
		t.Fatalf("occupying port %d on 127.0.0.1: %v", w.minPort+1, err)
	}
	defer loopback.Close()

	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if inst.Port == w.minPort || inst.Port == w.minPort+1 || inst.Port < w.minPort || inst.Port >= w.maxPort {
		t.Fatalf("instance got port %d; ports %d (all addresses) and %d (127.0.0.1) are busy, want another in [%d, %d)",
			inst.Port, w.minPort, w.minPort+1, w.minPort, w.maxPort)
	}
	// It answers on its port over IPv4 (the address the loopback listener
	// holds on its own port).
	ipv4 := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/postgres?sslmode=require", inst.Username, inst.Password, inst.Port)
	if got := mustSQL(t, ipv4, "select current_setting('port')"); got != strconv.Itoa(inst.Port) {
		t.Fatalf("127.0.0.1:%d is answered by a server on port %s", inst.Port, got)
	}

	// Once the ports are given back, the lowest is used again when the
	// search comes round to it (it goes on after the port given last):
	// the bind check refused it for being busy, not for good.
	wildcard.Close()
	loopback.Close()
	var next store.Instance
	for range w.maxPort - w.minPort - 1 {
		if next, err = e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); err != nil {
			t.Fatal(err)
		}
		if next.Port == w.minPort {
			break
		}
	}
	if next.Port != w.minPort {
		t.Fatalf("after the listeners closed, the range came round without giving the freed %d (last given %d)", w.minPort, next.Port)
	}
	mustSQL(t, passwordConn(next), "select 'ok'")
}

// A sindrid restarts, adopts a running postmaster (same pid), and then
// that postmaster is killed with SIGKILL: the new sindrid never started
// it and has no process handle to wait on, so only the process checks can
// see the death; it must answer again within 2 s on a new pid.
//
// In "reaped" the first sindrid was this process: its Start still waits
// for the postmaster and reaps it. In "zombie" the first sindrid was a
// child process that exited, and this process, a child subreaper at the
// time, inherited the postmaster without anything waiting for it: killed,
// it stays a zombie, and kill(pid, 0) still succeeds on it.
func TestKilledAdoptedPostmasterAnswersAgain(t *testing.T) {
	for _, mode := range []string{"reaped", "zombie"} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t, 5)
			var inst store.Instance
			if mode == "reaped" {
				var err error
				if inst, err = engine.New(w.options()).CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); err != nil {
					t.Fatal(err)
				}
			} else {
				inst = w.createInChildAndAdoptOrphan(t)
			}
			inst, err := w.store.GetInstance(ctx, inst.ID)
			if err != nil {
				t.Fatal(err)
			}
			vol, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
			if err != nil {
				t.Fatal(err)
			}
			old := inst.PID

			// The first sindrid is gone; a new one reconciles and adopts.
			e := engine.New(w.options())
			if err := e.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			st, err := postgres.Status(vol.Path)
			if err != nil || !st.Alive || st.PID != old {
				t.Fatalf("after reconcile: %+v %v; want the same postmaster %d alive (adopted, not restarted)", st, err, old)
			}
			if got, _ := w.store.GetInstance(ctx, inst.ID); got.Status != store.InstanceRunning || got.PID != old {
				t.Fatalf("after reconcile: record %s pid %d; want running, pid %d", got.Status, got.PID, old)
			}
			run, stop := context.WithCancel(ctx)
			defer stop()
			go e.Run(run, time.Minute, time.Minute)

			killed := time.Now()
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			answersWithin(t, inst, vol.Path, killed, 2*time.Second)

			now, err := postgres.Status(vol.Path)
			if err != nil || !now.Alive || now.PID == old {
				t.Fatalf("status after the restart %+v %v; want a live postmaster other than %d", now, err, old)
			}
			if got, _ := w.store.GetInstance(ctx, inst.ID); got.Status != store.InstanceRunning || got.PID != now.PID {
				t.Fatalf("record after the restart: %s pid %d; want running, pid %d", got.Status, got.PID, now.PID)
			}
			if mode == "zombie" {
				// The case the test is about: make sure it was built.
				if s, _, ok := postgres.ProcessState(old); !ok || s != 'Z' {
					t.Fatalf("the killed postmaster %d is in state %q, not a zombie: the test did not build its case", old, s)
				}
				if err := syscall.Kill(old, 0); err != nil {
					t.Fatalf("kill(%d, 0) on the zombie: %v (the test assumes it succeeds)", old, err)
				}
			}
		})
	}
}

// createInChildAndAdoptOrphan has a child sindrid create an instance and
// exit while this process is a child subreaper, so that the postmaster
// becomes this process's child with nobody waiting for it. It reaps that
// postmaster at cleanup.
func (w *world) createInChildAndAdoptOrphan(t *testing.T) store.Instance {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("becoming a child subreaper: %v", err)
	}
	out, err := w.runChild(t, "")
	// Only this postmaster is to be inherited: the rest of the test
	// binary's orphans go to init as usual.
	if perr := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0); perr != nil {
		t.Fatalf("ceasing to be a child subreaper: %v", perr)
	}
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	inst := w.childInstance(t, out)
	if !postgres.Running(inst.PID) || postgres.ParentPID(inst.PID) != os.Getpid() {
		t.Fatalf("postmaster %d (running %v) has parent %d, want this process %d", inst.PID, postgres.Running(inst.PID), postgres.ParentPID(inst.PID), os.Getpid())
	}
	pid := inst.PID
	t.Cleanup(func() {
		postgres.StopPID(ctx, pid, 5*time.Second)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			var ws syscall.WaitStatus
			if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); got == pid || err != nil {
				return
			}
		}
		t.Errorf("postmaster %d was never reaped", pid)
	})
	return inst
}

// An instance's record is lost while its postmaster runs: the volume is
// an orphan like any other, kept for the grace period, then its
// postmaster is stopped (and not brought back by the supervisor, which
// was watching it), the volume destroyed, and the removal logged by name.
func TestOrphanVolumeWithARunningPostmasterIsStoppedAndRemoved(t *testing.T) {
	w := newWorld(t, 3)
	var logs testenv.SyncBuffer
	opts := w.options()
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	const grace = time.Second
	opts.OrphanGrace = grace
	e := engine.New(opts)
	defer func() {
		if t.Failed() {
			t.Logf("engine log:\n%s", logs.String())
		}
	}()
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	name := engine.InstanceVolume(inst.ID)
	vol, err := w.storage.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Status(vol.Path)
	if err != nil || !st.Alive {
		t.Fatalf("status %+v %v", st, err)
	}
	// The record is lost; nothing else is touched.
	if err := w.store.DeleteInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}

	seen := time.Now()
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.storage.Get(ctx, name); err != nil {
		t.Fatalf("orphan %s removed before its grace period: %v", name, err)
	}
	if now, _ := postgres.Status(vol.Path); !now.Alive || now.PID != st.PID {
		t.Fatalf("orphan's postmaster touched before the grace period: %+v", now)
	}
	mustSQL(t, passwordConn(inst), "select 'ok'")

	run, stop := context.WithCancel(ctx)
	defer stop()
	go e.Run(run, 100*time.Millisecond, time.Minute)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, err := w.storage.Get(ctx, name)
		if errors.Is(err, storage.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %s still there %s after it was first seen (grace %s)", name, time.Since(seen), grace)
		}
	}
	if gone := time.Since(seen); gone < grace {
		t.Fatalf("orphan removed %s after it was first seen, before its grace of %s", gone, grace)
	}
	if postgres.Running(st.PID) {
		t.Fatalf("the orphan's postmaster %d still runs", st.PID)
	}
	// The supervisor, which watched the instance before its record went,
	// must not start it again.
	time.Sleep(5 * opts.SupervisePeriod)
	if pids := postmastersUnder(w.root); len(pids) != 0 {
		t.Fatalf("postgres processes left on the filesystem: %v", pids)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", inst.Port), time.Second); err == nil {
		c.Close()
		t.Fatalf("port %d still accepts connections", inst.Port)
	}
	var logged bool
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "no instance references") && slices.Contains(strings.Fields(line), "volume="+name) {
			logged = true
			t.Logf("log: %s", line)
		}
	}
	if !logged {
		t.Fatalf("no log line names the removed volume %s", name)
	}
}
