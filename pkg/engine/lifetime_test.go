package engine_test

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

func TestResetThrowsAwayChangesKeepsIdentity(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, w.superuserConn(inst), "create table thrown_away (x int)")
	before := mustSQL(t, certConn(t, inst), "select pg_postmaster_start_time()::text")
	reset, err := e.ResetInstance(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if reset.ID != inst.ID || reset.Port != inst.Port || reset.Password != inst.Password || reset.ClientCertificate != inst.ClientCertificate || reset.Status != store.InstanceRunning {
		t.Fatalf("after reset %+v; want the same id, port and credentials, running", reset)
	}
	if after := mustSQL(t, certConn(t, reset), "select pg_postmaster_start_time()::text"); after == before {
		t.Fatal("the postmaster was not restarted by the reset")
	}
	if got := mustSQL(t, passwordConn(reset), "select count(*)::text from pg_tables where tablename = 'thrown_away'"); got != "0" {
		t.Fatal("the table made before the reset is still there")
	}
	// As a new clone, without the activity counters its image holds.
	if got := mustSQL(t, w.superuserConn(reset), "select xact_commit::text from pg_stat_database where datname = 'template1'"); got != "0" {
		t.Errorf("the reset clone counts %s transactions in template1, as its image does", got)
	}
}

func TestResetCutShortIsFinishedByReconcile(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	// As if sindrid died in the middle of a reset: marked, volume gone.
	w.store.SetInstanceStatus(ctx, inst.ID, store.InstanceResetting, "")
	vol, _ := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	stopPostgres(t, vol.Path)
	if err := w.storage.Destroy(ctx, engine.InstanceVolume(inst.ID)); err != nil {
		t.Fatal(err)
	}
	if err := engine.New(w.options()).Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := w.store.GetInstance(ctx, inst.ID)
	if got.Status != store.InstanceRunning || got.Port != inst.Port {
		t.Fatalf("after reconcile: %s on port %d", got.Status, got.Port)
	}
	mustSQL(t, passwordConn(inst), "select 'ok'")
}

func TestExpiryAndTTLs(t *testing.T) {
	w := newWorld(t, 5)
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	opts := w.options()
	opts.DefaultTTL, opts.MaxTTL = time.Hour, 24*time.Hour
	opts.Now = func() time.Time { return time.Unix(0, now.Load()) }
	e := engine.New(opts)

	if _, err := e.ExpiryFor(48 * time.Hour); !errors.Is(err, engine.ErrTTLTooLong) {
		t.Fatalf("ttl above the maximum: %v", err)
	}
	if _, err := e.ExpiryFor(-time.Minute); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("negative ttl: %v", err)
	}
	def, _ := e.ExpiryFor(0)
	if want := opts.Now().Add(time.Hour); def == nil || !def.Equal(want) {
		t.Fatalf("default expiry %v, want %v", def, want)
	}
	short, _ := e.ExpiryFor(30 * time.Minute)
	a, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload", ExpiresAt: short})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload", ExpiresAt: short, Protected: true})
	if err != nil {
		t.Fatal(err)
	}
	past := opts.Now().Add(-time.Minute)
	if _, err := e.UpdateInstance(ctx, a.ID, &past, nil); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("expiry in the past: %v", err)
	}
	far := opts.Now().Add(48 * time.Hour)
	if _, err := e.UpdateInstance(ctx, a.ID, &far, nil); !errors.Is(err, engine.ErrTTLTooLong) {
		t.Fatalf("expiry beyond the maximum: %v", err)
	}

	now.Add(int64(20 * time.Minute))
	if n, err := e.DestroyExpired(ctx); err != nil || n != 0 {
		t.Fatalf("before expiry: destroyed %d, %v", n, err)
	}
	now.Add(int64(20 * time.Minute))
	if n, err := e.DestroyExpired(ctx); err != nil || n != 1 {
		t.Fatalf("after expiry: destroyed %d, %v; want 1 (the other is protected)", n, err)
	}
	if _, err := w.store.GetInstance(ctx, a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired instance still recorded: %v", err)
	}
	if _, err := sqlQuiet(passwordConn(a)); err == nil {
		t.Fatal("expired instance still answers")
	}
	mustSQL(t, passwordConn(b), "select 'ok'")
	unprotect := false
	if _, err := e.UpdateInstance(ctx, b.ID, nil, &unprotect); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.DestroyExpired(ctx); n != 1 {
		t.Fatalf("unprotected expired instance not destroyed")
	}

	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.StorageDriver != worldDriverName() || st.ImagesByStatus["ready"] != 1 || len(st.InstancesByStatus) != 0 || st.ExpectedCloningTime <= 0 || st.TotalBytes <= 0 || !st.Healthy {
		t.Fatalf("status %+v", st)
	}
}

// /status's used_by_instances_bytes is what the instances' writes cost:
// 32 MB written into one instance's volume show, an untouched instance
// adds about nothing; the sum is then reused for a while rather than read
// again per instance at every call.
func TestStatusCountsWhatInstancesWrite(t *testing.T) {
	skipOnDircopy(t, "a clone there is a full copy, so an untouched instance holds the image's size, not about nothing")
	w := newWorld(t, 5)
	e := engine.New(w.options())
	a, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); err != nil {
		t.Fatal(err)
	}
	vol, err := w.storage.Get(ctx, engine.InstanceVolume(a.ID))
	if err != nil {
		t.Fatal(err)
	}
	const written = 32 << 20
	fill := func(name string) {
		t.Helper()
		data := make([]byte, written)
		rand.Read(data)
		f, err := os.Create(filepath.Join(vol.Path, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	fill("filler-1")
	// Quota figures follow the filesystem's commits.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		n, err := w.storage.ExclusiveBytes(ctx, engine.InstanceVolume(a.ID))
		if err != nil {
			t.Fatal(err)
		}
		if n >= written {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exclusive bytes of the written instance: %d, want at least %d", n, written)
		}
	}
	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.UsedByInstancesBytes < written || st.UsedByInstancesBytes > written+8<<20 {
		t.Fatalf("used by instances: %d bytes, want about the %d written", st.UsedByInstancesBytes, written)
	}
	if st.InstancesByStatus["running"] != 2 {
		t.Fatalf("instances by status %v, want 2 running", st.InstancesByStatus)
	}
	fill("filler-2")
	again, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.UsedByInstancesBytes != st.UsedByInstancesBytes {
		t.Fatalf("used by instances read again at once: %d, then %d", st.UsedByInstancesBytes, again.UsedByInstancesBytes)
	}
}
