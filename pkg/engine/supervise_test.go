package engine_test

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// answersWithin waits until the instance's password login answers, failing
// the test after limit.
func answersWithin(t *testing.T, inst store.Instance, dataDir string, since time.Time, limit time.Duration) {
	t.Helper()
	for {
		if _, err := sql(t, passwordConn(inst), "select 'ok'"); err == nil {
			t.Logf("instance %d answering again %d ms after the fault", inst.ID, time.Since(since).Milliseconds())
			return
		}
		if time.Since(since) > limit {
			_, err := sql(t, passwordConn(inst), "select 'ok'")
			t.Fatalf("instance %d not answering %s after the fault: %v\n%s", inst.ID, limit, err, postgres.LogTail(dataDir, 10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// supervised creates an instance with an engine made of opts, runs the
// engine until the test ends, and returns the instance, its volume and
// its postmaster's status.
func supervised(t *testing.T, opts engine.Options) (store.Instance, storage.Entry, postgres.ClusterStatus) {
	t.Helper()
	e := engine.New(opts)
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	run, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	go e.Run(run, time.Minute, time.Minute)
	vol, err := opts.Storage.Get(ctx, engine.InstanceVolume(inst.ID))
	if err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Status(vol.Path)
	if err != nil || !st.Alive {
		t.Fatalf("status %+v %v", st, err)
	}
	return inst, vol, st
}

// A postmaster that exists but never answers (here stopped with SIGSTOP)
// passes every process check; only a connection attempt finds it out.
func TestStoppedPostmasterIsKilledAndRestarted(t *testing.T) {
	w := newWorld(t, 5)
	opts := w.options()
	opts.ProbeEvery, opts.ProbeTimeout, opts.MaxUnanswered = 200*time.Millisecond, 300*time.Millisecond, 3
	inst, vol, st := supervised(t, opts)
	stopped := time.Now()
	if err := syscall.Kill(st.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(st.PID, syscall.SIGCONT)
	if now, _ := postgres.Status(vol.Path); !now.Alive {
		t.Fatal("a stopped postmaster should still look alive to the process checks")
	}
	answersWithin(t, inst, vol.Path, stopped, 10*time.Second)
	if st2, _ := postgres.Status(vol.Path); st2.PID == st.PID {
		t.Fatal("same pid: the stopped postmaster was not replaced")
	}
	got, err := w.store.GetInstance(ctx, inst.ID)
	if err != nil || got.Status != store.InstanceRunning {
		t.Fatalf("instance %+v %v: want running", got, err)
	}
}

// Each connection the supervisor asks of a postmaster forks a child of it,
// so a look asks only when the postmaster's activity leaves a doubt.
func TestALookAsksAPostmasterOnlyWhenItsActivityLeavesADoubt(t *testing.T) {
	const pid = 4242
	at := time.Now()
	idle := postgres.Activity{Runs: 10, OnCPU: 5 * time.Millisecond, State: 'S'}
	ran := func(state byte, onCPU time.Duration) postgres.Activity {
		return postgres.Activity{Runs: idle.Runs + 2, OnCPU: idle.OnCPU + onCPU, State: state}
	}
	for _, c := range []struct {
		name         string
		then         postgres.Activity
		thenPID      int
		now          postgres.Activity
		known        bool
		after        time.Duration
		want         engine.Look
		whyItMatters string
	}{
		{"first look", postgres.Activity{}, 0, ran('S', time.Millisecond), true, 10 * time.Second, engine.LookAsk, "nothing is known of it yet"},
		{"another postmaster", idle, pid + 1, ran('S', time.Millisecond), true, 10 * time.Second, engine.LookAsk, "the restart's is new"},
		{"statistics unreadable", idle, pid, postgres.Activity{}, false, 10 * time.Second, engine.LookAsk, "nothing is known"},
		{"ran, idle", idle, pid, ran('S', time.Millisecond), true, 10 * time.Second, engine.LookAwake, "its loop turns"},
		{"running now", idle, pid, ran('R', time.Millisecond), true, 10 * time.Second, engine.LookAwake, "its loop turns"},
		{"ran, but spinning", idle, pid, ran('R', 6*time.Second), true, 10 * time.Second, engine.LookAsk, "a loop that never reaches accept also runs"},
		{"stopped", idle, pid, ran('T', 0), true, 10 * time.Second, engine.LookAsk, "SIGSTOP"},
		{"traced", idle, pid, ran('t', 0), true, 10 * time.Second, engine.LookAsk, "a debugger holds it"},
		{"uninterruptible", idle, pid, ran('D', 0), true, 10 * time.Second, engine.LookAsk, "stuck on I/O, or frozen"},
		{"asleep a while", idle, pid, idle, true, 10 * time.Second, engine.LookAsleep, "an idle one sleeps up to a minute"},
		{"asleep too long", idle, pid, idle, true, engine.PostmasterWakes + time.Second, engine.LookAsk, "a healthy one would have woken"},
	} {
		got := engine.JudgeLook(c.thenPID, c.then, at, pid, c.now, c.known, at.Add(c.after))
		if got != c.want {
			t.Errorf("%s (%s): got %d, want %d", c.name, c.whyItMatters, got, c.want)
		}
	}
}

// An idle postmaster, looked at five times a second, is asked for a
// connection (which wakes it twice: to fork a child, then to reap it)
// only at the first look and when it has not run for a minute: over 3 s
// it runs a handful of times, where asking at each look would wake it
// at least 30 times.
func TestAnIdlePostmasterIsNotAskedForAConnectionAtEveryLook(t *testing.T) {
	w := newWorld(t, 5)
	opts := w.options()
	opts.ProbeEvery = 100 * time.Millisecond
	inst, vol, st := supervised(t, opts)
	time.Sleep(time.Second) // the first look, which asks
	before, ok := postgres.ReadActivity(st.PID)
	if !ok {
		t.Fatal("no scheduler statistics for the postmaster")
	}
	time.Sleep(3 * time.Second)
	after, _ := postgres.ReadActivity(st.PID)
	if woke := after.Runs - before.Runs; woke > 10 {
		t.Errorf("the idle postmaster ran %d times in 3 s of looks every 200 ms: it is asked for connections", woke)
	} else {
		t.Logf("the idle postmaster ran %d times in 3 s", woke)
	}
	if now, _ := postgres.Status(vol.Path); now.PID != st.PID {
		t.Errorf("postmaster %d replaced by %d", st.PID, now.PID)
	}
	if _, err := sql(t, passwordConn(inst), "select 'ok'"); err != nil {
		t.Fatal(err)
	}
}

// The expiry sweeper destroys instances one by one, each shutdown waiting
// up to its deadline; meanwhile a killed postmaster elsewhere must still
// be restarted within 2 s.
func TestSupervisionGoesOnDuringASlowExpiry(t *testing.T) {
	w := newWorld(t, 5)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	opts := w.options()
	opts.Now = func() time.Time { return time.Unix(0, now.Load()) }
	e := engine.New(opts)
	soon := opts.Now().Add(time.Minute)
	expiring, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload", ExpiresAt: &soon})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	expVol, _ := w.storage.Get(ctx, engine.InstanceVolume(expiring.ID))
	keptVol, _ := w.storage.Get(ctx, engine.InstanceVolume(kept.ID))
	expSt, _ := postgres.Status(expVol.Path)
	keptSt, _ := postgres.Status(keptVol.Path)
	if !expSt.Alive || !keptSt.Alive {
		t.Fatalf("postmasters not alive: %+v %+v", expSt, keptSt)
	}
	// A stopped postmaster ignores the fast and immediate shutdown
	// signals: its destroy waits out both deadlines before SIGKILL.
	if err := syscall.Kill(expSt.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(expSt.PID, syscall.SIGCONT)

	run, stop := context.WithCancel(ctx)
	defer stop()
	go e.Run(run, time.Minute, 100*time.Millisecond)
	now.Add(int64(2 * time.Minute))
	for deadline := time.Now().Add(10 * time.Second); ; {
		got, err := w.store.GetInstance(ctx, expiring.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == store.InstanceDestroying {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("expiring instance still %s", got.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}

	killed := time.Now()
	if err := syscall.Kill(keptSt.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	answersWithin(t, kept, keptVol.Path, killed, 2*time.Second)
	if st, _ := w.store.GetInstance(ctx, expiring.ID); st.Status != store.InstanceDestroying {
		t.Fatalf("the expiry finished already (%s): the test proved nothing about running side by side", st.Status)
	}
	for deadline := time.Now().Add(40 * time.Second); ; {
		if _, err := w.store.GetInstance(ctx, expiring.ID); err != nil {
			break // destroyed
		}
		if time.Now().After(deadline) {
			t.Fatal("the expired instance was never destroyed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A disk that fills up under a running instance stops its Postgres; the
// instance waits, stopped, instead of crash-looping into failed, and runs
// again once space is freed, on its port, with its data.
func TestFullDiskStopsAnInstanceUntilSpaceIsFreed(t *testing.T) {
	w := newWorldSized(t, 5, 512<<20)
	opts := w.options()
	opts.MaxCrashes, opts.CrashWindow = 2, time.Minute
	opts.DiskRetryMax = 300 * time.Millisecond
	opts.Limits = engine.Limits{DiskReserve: engine.Amount{Percent: 10}}
	e := engine.New(opts)
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	run, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan struct{})
	// Reconcile often, as it would every minute, to show that it does not
	// fail the instance or take its port either.
	go func() {
		defer close(ran)
		e.Run(run, 500*time.Millisecond, time.Minute)
	}()
	vol, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	if err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Status(vol.Path)
	if err != nil || !st.Alive {
		t.Fatalf("status %+v %v", st, err)
	}
	// A clone commits asynchronously (its WAL reaches the disk within a
	// second or so): the data this test expects back is committed with a
	// flush, or the full disk could take it with the crash.
	pgtest.Exec(t, w.superuserConn(inst), "set synchronous_commit = on; create table notes (id int); grant all on notes to public; insert into notes values (1)")

	filler := fill(t, w.storage, w.root, 0)
	// Writing now fails; the postmaster dies (a failed WAL write is a
	// PANIC; it is killed here too, in case it lives on).
	sql(t, passwordConn(inst), "insert into notes select generate_series(1, 100000) returning 'x'")
	syscall.Kill(st.PID, syscall.SIGKILL)

	stoppedAt := time.Time{}
	deadline := time.Now().Add(30 * time.Second)
	for stoppedAt.IsZero() || time.Since(stoppedAt) < 5*time.Second {
		got, err := w.store.GetInstance(ctx, inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		switch got.Status {
		case store.InstanceFailed:
			t.Fatalf("the instance failed while the disk was full: %s", got.Error)
		case store.InstanceStopped:
			if stoppedAt.IsZero() {
				stoppedAt = time.Now()
				if !strings.Contains(got.Error, "disk was full") || got.Port != inst.Port {
					t.Fatalf("stopped instance: port %d (was %d), error %q", got.Port, inst.Port, got.Error)
				}
			}
		}
		if stoppedAt.IsZero() && time.Now().After(deadline) {
			t.Fatalf("the instance is %s, not stopped, with the disk full", got.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got, _ := w.store.GetInstance(ctx, inst.ID); got.Status != store.InstanceStopped || got.Port != inst.Port {
		t.Fatalf("after 5 s with the disk full: %s on port %d", got.Status, got.Port)
	}
	if st, err := e.Status(ctx); err != nil || !slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "1 instance(s) stopped") }) {
		t.Errorf("status problems %q, %v: want the stopped instance named", st.Problems, err)
	}

	// sindrid restarts meanwhile: the new one's first reconcile leaves the
	// instance stopped, not failed, and its supervisor starts it later.
	stop()
	<-ran
	e = engine.New(opts)
	if err := e.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile after a restart with the disk full: %v", err)
	}
	if got, _ := w.store.GetInstance(ctx, inst.ID); got.Status != store.InstanceStopped || got.Port != inst.Port {
		t.Fatalf("after a restart with the disk full: %s on port %d", got.Status, got.Port)
	}
	run, stop = context.WithCancel(ctx)
	defer stop()
	go e.Run(run, time.Minute, time.Minute)

	freed := time.Now()
	unfill(t, w.storage, filler, 100<<20)
	answersWithin(t, inst, vol.Path, freed, 60*time.Second)
	if got := mustSQL(t, passwordConn(inst), "select min(id)::text from notes"); got != "1" {
		t.Fatalf("the instance's data after the full disk: %s", got)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		got, _ := w.store.GetInstance(ctx, inst.ID)
		if got.Status == store.InstanceRunning && got.Error == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("answering again but %s (%q), want running", got.Status, got.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st2, _ := postgres.Status(vol.Path); !st2.Alive {
		t.Fatal("not alive")
	}
}

// Among many instances, the supervisor checks only a slice per tick
// (SuperviseBatch 1 here: its round reaches a given instance every 10 s),
// yet three postmasters killed at once, seven apart in the round (which
// reaches at most one of them within 2 s), all answer again within 2 s,
// because each one's end makes its check due at once; and a stopped one,
// which does not end, is still found by the round's probes.
func TestSupervisorWorkPerTickIsBoundedAndExitsAreSeenAtOnce(t *testing.T) {
	const instances = 20
	w := newWorld(t, instances+2)
	var ticks, roundChecks, dueChecks, maxRound atomic.Int64
	opts := engine.WithTickHook(w.options(), func(due, round int) {
		ticks.Add(1)
		dueChecks.Add(int64(due))
		roundChecks.Add(int64(round))
		if int64(round) > maxRound.Load() {
			maxRound.Store(int64(round))
		}
	})
	opts.SuperviseBatch = 1
	opts.ProbeEvery, opts.ProbeTimeout, opts.MaxUnanswered = 100*time.Millisecond, 300*time.Millisecond, 2
	e := engine.New(opts)
	var insts []store.Instance
	for range instances {
		inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, inst)
	}
	run, stop := context.WithCancel(ctx)
	defer stop()
	go e.Run(run, time.Minute, time.Minute)
	status := func(inst store.Instance) (storage.Entry, postgres.ClusterStatus) {
		vol, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
		if err != nil {
			t.Fatal(err)
		}
		st, err := postgres.Status(vol.Path)
		if err != nil || !st.Alive {
			t.Fatalf("instance %d: status %+v %v", inst.ID, st, err)
		}
		return vol, st
	}
	// The first checks (due at creation) start each exit watch.
	time.Sleep(2 * time.Second)

	killedInsts := []store.Instance{insts[2], insts[9], insts[16]}
	var pids []int
	var vols []storage.Entry
	for _, inst := range killedInsts {
		vol, st := status(inst)
		vols, pids = append(vols, vol), append(pids, st.PID)
	}
	killed := time.Now()
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	for i, inst := range killedInsts {
		answersWithin(t, inst, vols[i].Path, killed, 2*time.Second)
		if st2, _ := postgres.Status(vols[i].Path); st2.PID == pids[i] {
			t.Fatal("same pid: the postmaster was not restarted")
		}
	}

	vol, st := status(insts[12])
	stopped := time.Now()
	if err := syscall.Kill(st.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(st.PID, syscall.SIGCONT)
	// The round probes it when it comes to it, and again when it comes
	// back (10 s later), then kills it: within 20 s and a restart.
	answersWithin(t, insts[12], vol.Path, stopped, 30*time.Second)

	n := ticks.Load()
	t.Logf("%d ticks: %d round checks (at most %d a tick), %d due checks", n, roundChecks.Load(), maxRound.Load(), dueChecks.Load())
	if maxRound.Load() > 1 {
		t.Errorf("a tick checked %d instances of its round; SuperviseBatch is 1", maxRound.Load())
	}
	// Due: each creation, each end seen (three kills, the hung one), and
	// a follow-up of each; nothing else.
	if d := dueChecks.Load(); d > instances+4*3 {
		t.Errorf("%d due checks over %d ticks: the supervisor checks more than what ended", d, n)
	}
	for _, inst := range insts {
		if got, err := w.store.GetInstance(ctx, inst.ID); err != nil || got.Status != store.InstanceRunning {
			t.Errorf("instance %d: %+v %v, want running", inst.ID, got.Status, err)
		}
	}
}

// A clone writes its client roles with an asynchronous commit, so a crash
// of every one of its processes right after the create may lose them (the
// WAL was still in shared memory): the restart writes them again, and the
// credentials the create returned log in.
func TestCredentialsLogInAfterACrashRightAfterTheCreate(t *testing.T) {
	w := newWorld(t, 5)
	inst, vol, st := supervised(t, w.options())
	killed := time.Now()
	killProcessTree(t, st.PID)
	answersWithin(t, inst, vol.Path, killed, 10*time.Second)
	if st2, _ := postgres.Status(vol.Path); st2.PID == st.PID {
		t.Fatal("same pid: the postmaster was not replaced")
	}
}

// killProcessTree sends SIGKILL to pid and to each of its children at once,
// as a crash of the machine's processes would end them.
func killProcessTree(t *testing.T, pid int) {
	t.Helper()
	pids := []int{pid}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The fields after the command's closing parenthesis: state, ppid.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			pids = append(pids, child)
		}
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	if len(pids) < 3 {
		t.Fatalf("the postmaster %d had only %d children", pid, len(pids)-1)
	}
}
