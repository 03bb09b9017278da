package engine_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/operation"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
	"github.com/sindri-db/sindri/pkg/testfs"
)

// fleetDown is the down timeout of the fleet tests' hosts.
const fleetDown = 30 * time.Second

// joinFleet registers w's host under name (heartbeat fresh now), makes
// its store create this host's instances, and records its copy of image
// childImage ready.
func (w *world) joinFleet(t testing.TB, name string) {
	t.Helper()
	if _, err := w.store.RecordHeartbeat(ctx, store.Heartbeat{
		Name: name, PeerURL: "http://" + name + ".internal:8443", PublicHostname: name + ".example.com", StorageDriver: "btrfs",
		// Room for placement, the same on every host: a tie goes to the
		// host with the fewest instances, then to the first by name.
		TotalBytes: 2 << 30, FreeBytes: 1 << 30,
	}, fleetDown); err != nil {
		t.Fatal(err)
	}
	w.store.SetFleetHost(name)
	if err := w.store.SetImageCopy(ctx, childImage, name, store.CopyReady, ""); err != nil {
		t.Fatal(err)
	}
}

// fleetOptions are w's engine options as a fleet host's.
func (w *world) fleetOptions() engine.Options {
	o := w.options()
	o.DownTimeout = fleetDown
	return o
}

// newSecondHost is another host of w's fleet: its own loopback BTRFS,
// socket directory and ports, and its own store (opened with the same
// secrets key) on w's metadata database; its filesystem holds a copy of
// image childImage, frozen from the same template, as replication would
// leave it.
func newSecondHost(t *testing.T, w *world) *world {
	t.Helper()
	root := filepath.Join(testfs.Btrfs(t, 1<<30), "sindri")
	driver, err := btrfs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, w.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.LoadKeyring(ctx, w.store.Keyring().Path(), false); err != nil {
		t.Fatal(err)
	}
	b := &world{dbURL: w.dbURL, store: st, root: root, storage: driver, owner: w.owner}
	vol, err := driver.Create(ctx, "upload-1")
	if err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(vol.Path); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	if out, err := exec.Command("cp", "-a", pgtest.Template(t)+"/.", vol.Path).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	b.owner.Chown(vol.Path, false)
	os.Chmod(vol.Path, 0o700)
	if _, err := driver.Freeze(ctx, vol.Name, engine.ImageVolume(childImage)); err != nil {
		t.Fatal(err)
	}
	if b.runDir, err = os.MkdirTemp("", "sr"); err != nil {
		t.Fatal(err)
	}
	os.Chmod(b.runDir, 0o711)
	t.Cleanup(func() { os.RemoveAll(b.runDir) })
	b.minPort = pgtest.FreePort(t)
	b.maxPort = b.minPort + 10
	t.Cleanup(func() { b.stopAll(t) })
	return b
}

// postmasterPID is the pid of the live postmaster on an instance's
// volume, 0 when none runs.
func postmasterPID(t *testing.T, w *world, id int64) int {
	t.Helper()
	vol, err := w.storage.Get(ctx, engine.InstanceVolume(id))
	if err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Status(vol.Path)
	if err != nil || !st.Alive {
		return 0
	}
	return st.PID
}

// Two hosts share one metadata database, each with its own filesystem:
// each reconciles, supervises and expires its own instances only, though
// the other's have no volume on its disk (a single host's reconcile would
// mark them failed, and its first one undo their creations), and refuses
// to destroy or reset the other's.
func TestFleetHostsActOnTheirOwnInstancesOnly(t *testing.T) {
	a := newWorld(t, 10)
	b := newSecondHost(t, a)
	a.joinFleet(t, "host-a")
	b.joinFleet(t, "host-b")
	ea, eb := engine.New(a.fleetOptions()), engine.New(b.fleetOptions())
	for _, e := range []*engine.Engine{ea, eb} {
		if err := e.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}

	ia, err := ea.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	ib, err := eb.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if ia.Host != "host-a" || ib.Host != "host-b" {
		t.Fatalf("hosts of the instances: %q and %q", ia.Host, ib.Host)
	}
	// A creation under way on host A (recorded, not built yet).
	creating, err := a.store.CreateInstance(ctx, store.InstanceInput{ImageID: childImage, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	pidA := postmasterPID(t, a, ia.ID)

	// B's reconcile (a first one, which undoes every creation of its own)
	// leaves A's instances as they are.
	eb2 := engine.New(b.fleetOptions())
	if err := eb2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{ia.ID, creating.ID} {
		got, err := a.store.GetInstance(ctx, id)
		if err != nil {
			t.Fatalf("instance %d of host A after B's reconcile: %v", id, err)
		}
		want := map[int64]store.InstanceStatus{ia.ID: store.InstanceRunning, creating.ID: store.InstanceCreating}[id]
		if got.Status != want || got.Error != "" {
			t.Errorf("instance %d of host A after B's reconcile: %s %q, want %s", id, got.Status, got.Error, want)
		}
	}
	if got := postmasterPID(t, a, ia.ID); got != pidA {
		t.Errorf("A's postmaster after B's reconcile: pid %d, was %d", got, pidA)
	}
	if err := a.store.DeleteInstance(ctx, creating.ID); err != nil {
		t.Fatal(err)
	}

	// B's instance stopped: A's engine, running its reconcile, supervisor
	// and expiry for a while, neither starts it nor marks it failed, and
	// does not destroy it, expired; B's own reconcile starts it again.
	volB, err := b.storage.Get(ctx, engine.InstanceVolume(ib.ID))
	if err != nil {
		t.Fatal(err)
	}
	if err := postgres.Stop(ctx, volB.Path, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Minute)
	if err := a.store.SetInstanceExpiry(ctx, ib.ID, &past, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := ea.DestroyExpired(ctx); err != nil || n != 0 {
		t.Errorf("A destroyed %d expired instances (%v); B's expired one is not A's", n, err)
	}
	runCtx, stop := context.WithTimeout(ctx, 1500*time.Millisecond)
	ea.Run(runCtx, 200*time.Millisecond, 200*time.Millisecond)
	stop()
	got, err := b.store.GetInstance(ctx, ib.ID)
	if err != nil || got.Status != store.InstanceRunning || got.Error != "" {
		t.Fatalf("B's instance after A's engine ran: %+v, %v; want it running as B left it", got, err)
	}
	if pid := postmasterPID(t, b, ib.ID); pid != 0 {
		t.Errorf("B's stopped postmaster was started (pid %d) by A's engine", pid)
	}
	// B's expiry is B's: the expired instance goes there.
	if n, err := eb.DestroyExpired(ctx); err != nil || n != 1 {
		t.Fatalf("B destroyed %d expired instances, %v; want its one", n, err)
	}
	if _, err := b.storage.Get(ctx, engine.InstanceVolume(ib.ID)); err == nil {
		t.Error("B's expired instance kept its volume")
	}
	// Its tombstone is B's: A's pruning (nothing of it on A's disk) keeps it.
	if _, err := a.store.PruneTombstones(ctx, time.Now().Add(time.Hour), nil); err != nil {
		t.Fatal(err)
	}
	if ts, err := a.store.InstanceTombstones(ctx, []int64{ib.ID}); err != nil || len(ts) != 1 {
		t.Errorf("B's tombstone after A pruned its own: %v, %v", ts, err)
	}

	// A's instance, killed, is restarted by A's supervisor, never by B's.
	if err := syscall.Kill(pidA, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	runCtx, stop = context.WithTimeout(ctx, 1500*time.Millisecond)
	eb.Run(runCtx, 200*time.Millisecond, 200*time.Millisecond)
	stop()
	if pid := postmasterPID(t, a, ia.ID); pid != 0 {
		t.Errorf("A's killed postmaster was restarted (pid %d) while only B's engine ran", pid)
	}
	if got, err := a.store.GetInstance(ctx, ia.ID); err != nil || got.Status != store.InstanceRunning {
		t.Errorf("A's instance after B's engine ran: %+v, %v", got, err)
	}
	runCtx, stop = context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); ea.Run(runCtx, time.Minute, time.Minute) }()
	deadline := time.Now().Add(15 * time.Second)
	var answer string
	for err = errors.New("not tried"); err != nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		answer, err = sql(t, passwordConn(ia), "select 'up'")
	}
	stop()
	<-done
	if err != nil || answer != "up" || postmasterPID(t, a, ia.ID) == 0 {
		t.Errorf("A's instance, killed, 15s into A's supervision: %q, %v", answer, err)
	}

	// Each host's status counts its own instances and the fleet's.
	ib2, err := eb.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "bob@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := ea.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Host != "host-a" || st.InstancesByStatus["running"] != 1 || st.FleetInstancesByStatus["running"] != 2 {
		t.Errorf("A's status: host %q, instances %v, fleet's %v; want 1 of its own running, 2 in the fleet",
			st.Host, st.InstancesByStatus, st.FleetInstancesByStatus)
	}
	if err := eb.DestroyInstance(ctx, ib2.ID); err != nil {
		t.Fatal(err)
	}

	// B refuses to destroy or reset A's instance, whose volume is A's.
	if err := eb.DestroyInstance(ctx, ia.ID); !errors.Is(err, engine.ErrOtherHost) || !errors.Is(err, engine.ErrConflict) {
		t.Errorf("B destroying A's instance: %v, want ErrOtherHost", err)
	}
	if _, err := eb.ResetInstance(ctx, ia.ID); !errors.Is(err, engine.ErrOtherHost) {
		t.Errorf("B resetting A's instance: %v, want ErrOtherHost", err)
	}
	if got, err := a.store.GetInstance(ctx, ia.ID); err != nil || got.Status != store.InstanceRunning {
		t.Errorf("A's instance after B's refusals: %+v, %v", got, err)
	}
	if v, err := sql(t, passwordConn(ia), "select 'up'"); err != nil || v != "up" {
		t.Errorf("A's instance after B's refusals: %q, %v", v, err)
	}
}

// An instance of a host whose heartbeat is older than the down timeout
// reads unavailable, on any host, single and listed, with its host's
// public hostname; its row keeps its status, which it reads again once
// its host beats. A user's limit counts their instances on every host.
func TestInstancesOfADownHostReadUnavailable(t *testing.T) {
	a := newWorld(t, 10)
	b := newSecondHost(t, a)
	a.joinFleet(t, "host-a")
	b.joinFleet(t, "host-b")
	optsA, optsB := a.fleetOptions(), b.fleetOptions()
	optsA.Limits.InstancesPerUser, optsB.Limits.InstancesPerUser = 2, 2
	ea, eb := engine.New(optsA), engine.New(optsB)
	ia, err := ea.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	ib, err := eb.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	// A user's limit counts their instances on every host.
	if _, err := eb.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "ada@example.com"}); !errors.Is(err, engine.ErrQuotaExceeded) {
		t.Errorf("ada's third instance, with one on each host and instances_per_user = 2: %v, want ErrQuotaExceeded", err)
	}
	ada := engine.Actor{Owner: "ada@example.com"}
	read := func(t *testing.T, want store.InstanceStatus) {
		t.Helper()
		list, err := ea.Services().Instances.List(ctx, ada)
		if err != nil {
			t.Fatal(err)
		}
		statuses := map[int64]store.InstanceStatus{}
		for _, inst := range list {
			statuses[inst.ID] = inst.Status
			if inst.Hostname != inst.Host+".example.com" {
				t.Errorf("instance %d of %s lists hostname %q", inst.ID, inst.Host, inst.Hostname)
			}
		}
		if statuses[ia.ID] != store.InstanceRunning || statuses[ib.ID] != want {
			t.Errorf("listed through host A: %v; want A's %d running, B's %d %s", statuses, ia.ID, ib.ID, want)
		}
		one, err := ea.Services().Instances.Get(ctx, ada, ib.ID)
		if err != nil || one.Status != want || one.Hostname != "host-b.example.com" {
			t.Errorf("B's instance read through A: %s at %q, %v; want %s at host-b.example.com", one.Status, one.Hostname, err, want)
		}
	}
	read(t, store.InstanceRunning)

	// B's last heartbeat is older than the down timeout (as if it died
	// then).
	pgtest.Exec(t, a.dbURL, "update hosts set heartbeat_at = now() - interval '31 seconds' where name = 'host-b'")
	read(t, store.InstanceUnavailable)
	if row, err := a.store.GetInstance(ctx, ib.ID); err != nil || row.Status != store.InstanceRunning {
		t.Errorf("the row of B's instance while B is down: %+v, %v; want running, as stored", row, err)
	}
	st, err := ea.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.FleetInstancesByStatus["unavailable"] != 1 || st.InstancesByStatus["running"] != 1 ||
		!slices.ContainsFunc(st.Problems, func(p string) bool {
			return p == "host host-b of the fleet is down (no heartbeat within fleet.down_timeout = 30s): its 1 instance(s) are unavailable"
		}) {
		t.Errorf("A's status while B is down: fleet %v, own %v, problems %q", st.FleetInstancesByStatus, st.InstancesByStatus, st.Problems)
	}

	// B beats again.
	if _, err := b.store.RecordHeartbeat(ctx, store.Heartbeat{
		Name: "host-b", PeerURL: "http://host-b.internal:8443", PublicHostname: "host-b.example.com", StorageDriver: "btrfs",
	}, fleetDown); err != nil {
		t.Fatal(err)
	}
	read(t, store.InstanceRunning)
}

// A source is run by the host it was made on: another host of the fleet
// neither refreshes it on schedule nor keeps its standby.
func TestFleetSourceRunsOnItsHostOnly(t *testing.T) {
	a := newWorld(t, 5)
	b := newSecondHost(t, a)
	a.joinFleet(t, "host-a")
	b.joinFleet(t, "host-b")
	optsA, optsB := a.fleetOptions(), b.fleetOptions()
	optsA.SourceTick, optsB.SourceTick = 100*time.Millisecond, 100*time.Millisecond
	ea, eb := engine.New(optsA), engine.New(optsB)
	s, err := eb.CreateSource(ctx, engine.SourceRequest{Name: "gone", URL: "postgres://rep:pw@127.0.0.1:1/postgres", Schedule: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Host != "host-b" {
		t.Fatalf("source's host %q, want host-b", s.Host)
	}
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	ea.RunSources(c)
	cancel()
	ea.WaitRefreshes()
	if got, err := a.store.GetSource(ctx, s.ID); err != nil || got.Status != store.SourceIdle || got.Failures != 0 || got.LastImageID != 0 {
		t.Fatalf("B's due source after A ran its sources for 2s: %+v, %v; want it idle, untried", got, err)
	}
	runSources(t, eb)
	waitSource(t, b.store, s.ID, time.Minute, "failed on its host", func(s store.Source) bool { return s.Status == store.SourceFailed })
}

// BenchmarkFleetInstanceList lists 1,000 instances spread over three
// hosts, one of them down, as GET /instances does for the upload user: on
// a fleet host (the hosts read once, each instance given its host's
// hostname and status) and on a single host reading the same rows.
func BenchmarkFleetInstanceList(b *testing.B) {
	fleetStore, url := storetest.New(b)
	img, err := fleetStore.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	hosts := []string{"host-a", "host-b", "host-c"}
	for _, h := range hosts {
		if _, err := fleetStore.RecordHeartbeat(ctx, store.Heartbeat{Name: h, PeerURL: "http://" + h, PublicHostname: h + ".example.com"}, fleetDown); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 1000 {
		fleetStore.SetFleetHost(hosts[i%len(hosts)])
		if _, err := fleetStore.CreateInstance(ctx, store.InstanceInput{ImageID: img.ID, Owner: "upload"}); err != nil {
			b.Fatal(err)
		}
	}
	fleetStore.SetFleetHost("host-a")
	pgtest.Exec(b, url, "update hosts set heartbeat_at = now() - interval '1 hour' where name = 'host-c'")
	singleStore, err := store.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(singleStore.Close)
	if _, err := singleStore.LoadKeyring(ctx, fleetStore.Keyring().Path(), false); err != nil {
		b.Fatal(err)
	}
	upload := engine.Actor{Owner: engine.UploadOwner, Upload: true}
	for _, c := range []struct {
		name string
		st   *store.Store
	}{{"fleet", fleetStore}, {"single", singleStore}} {
		e := engine.New(engine.Options{Store: c.st, DownTimeout: fleetDown, Logger: quietLogger()})
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				insts, err := e.Services().Instances.List(ctx, upload)
				if err != nil || len(insts) != 1000 {
					b.Fatalf("%d instances, %v", len(insts), err)
				}
				if c.name == "fleet" && (insts[2].Status != store.InstanceUnavailable || insts[0].Hostname != "host-a.example.com") {
					b.Fatalf("instance 3 of the down host-c: %s; instance 1's hostname %q", insts[2].Status, insts[0].Hostname)
				}
			}
		})
	}
}

// The sweep of a fleet host ends the operations of a gone sindrid of its
// own host only: another host's on the same machine (a fleet test, or two
// hosts in containers sharing a kernel) are that host's to end.
func TestFleetSweepEndsItsOwnHostsStrays(t *testing.T) {
	a := newWorld(t, 5)
	a.joinFleet(t, "host-a")
	e := engine.New(a.fleetOptions())
	installation, err := a.store.InstallationID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	server, dir := silentListener(t), t.TempDir()
	// A pid that is no sindrid's: the operations' owner is gone.
	goneOwner := fmt.Sprintf("%d:%s", os.Getpid(), "1")
	own := startedPgBasebackup(t, dir, server, operation.Env+"="+operation.Name(installation+"@host-a", "pull", "image-4242"), operation.OwnerEnv+"="+goneOwner)
	others := startedPgBasebackup(t, dir, server, operation.Env+"="+operation.Name(installation+"@host-b", "pull", "image-4242"), operation.OwnerEnv+"="+goneOwner)
	for _, c := range []*exec.Cmd{own, others} {
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(environOf(c.Process.Pid), "PATH="); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("pg_basebackup %d never exec'd", c.Process.Pid)
			}
		}
	}
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if processAlive(own.Process.Pid) {
		t.Error("host A's reconcile left the pull of its gone sindrid running")
	}
	if !processAlive(others.Process.Pid) {
		t.Error("host A's reconcile ended host B's pull")
	}
}

// A forced destroy of an image with an instance on another host is
// refused before anything goes, naming the host: this host would refuse
// to destroy that instance, and the image would be left destroying,
// usable by no one and finished by no host.
func TestForcedImageDestroyWithAnInstanceOnAnotherHostIsRefused(t *testing.T) {
	a := newWorld(t, 10)
	b := newSecondHost(t, a)
	a.joinFleet(t, "host-a")
	b.joinFleet(t, "host-b")
	// host-a is drained: the instance goes to host-b.
	if err := a.store.SetHostState(ctx, "host-a", store.HostDraining); err != nil {
		t.Fatal(err)
	}
	ea, eb := engine.New(a.fleetOptions()), engine.New(b.fleetOptions())
	ib, err := eb.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "ada@example.com"})
	if err != nil || ib.Host != "host-b" {
		t.Fatalf("instance %+v, %v; want one on host-b", ib, err)
	}
	err = ea.DestroyImage(ctx, childImage, true)
	if !errors.Is(err, engine.ErrImageHasInstances) || !strings.Contains(err.Error(), `host "host-b"`) {
		t.Fatalf("forced destroy on host-a of an image with an instance on host-b: %v; want ErrImageHasInstances naming host-b", err)
	}
	if img, err := a.store.GetImage(ctx, childImage); err != nil || img.Status != store.ImageReady {
		t.Errorf("the image after the refused destroy: %+v, %v; want ready", img, err)
	}
	if got := mustSQL(t, passwordConn(ib), "select 'up'"); got != "up" {
		t.Errorf("host-b's instance after the refused destroy answers %q", got)
	}
	// Once host-b destroyed its instance, host-a destroys the image.
	if err := eb.DestroyInstance(ctx, ib.ID); err != nil {
		t.Fatal(err)
	}
	if err := ea.DestroyImage(ctx, childImage, true); err != nil {
		t.Fatalf("destroy once the instance is gone: %v", err)
	}
}
