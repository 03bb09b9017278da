package engine_test

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
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
