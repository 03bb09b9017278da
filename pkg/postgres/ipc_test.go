package postgres_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
)

// Every clone's data directory is the root of a snapshot of one image, so
// all have the same inode number, which is where a postmaster begins its
// search for a free System V shared memory key. Each clone's postmaster
// runs in an IPC namespace of its own, so that each takes that first key
// instead of attaching to every running clone's segment in turn.
func TestClonesOfOneImageEachTakeTheFirstSharedMemoryKey(t *testing.T) {
	d, seed, owner, _ := benchImage(t, 1<<30)
	sockets := benchSocketDir(t, owner)
	host, err := os.Readlink("/proc/self/ns/ipc")
	if err != nil {
		t.Fatal(err)
	}
	namespaces := map[string]string{host: "sindri's own"}
	for i := range 3 {
		name := fmt.Sprintf("clone-%d", i)
		c := startClone(t, d, seed, sockets, name)
		var st syscall.Stat_t
		if err := syscall.Stat(c.DataDir, &st); err != nil {
			t.Fatal(err)
		}
		if key := shmemKey(t, c.DataDir); key != st.Ino {
			t.Errorf("%s's shared memory key is %d; want its data directory's inode number, %d, the first one tried", name, key, st.Ino)
		}
		pf, err := postgres.ReadPIDFile(c.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/ipc", pf.PID))
		if err != nil {
			t.Fatal(err)
		}
		if other, taken := namespaces[ns]; taken {
			t.Errorf("%s's postmaster runs in the IPC namespace %s, %s", name, ns, other)
		}
		namespaces[ns] = name + "'s"
	}
}

// A postmaster killed outright leaves its backends running until they
// notice, and one busy in a query notices only when it waits. Postgres
// would refuse to start beside them while they hold the old shared memory,
// but a clone's new postmaster cannot see that memory from its own IPC
// namespace: Start must end them first, or two sets of processes would
// write one data directory.
func TestACloneRestartedAfterAKillEndsTheOldBackendsFirst(t *testing.T) {
	d, seed, owner, _ := benchImage(t, 1<<30)
	sockets := benchSocketDir(t, owner)
	c := startClone(t, d, seed, sockets, "clone-1")
	pf, err := postgres.ReadPIDFile(c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	backend, _ := busyBackend(t, postgres.SocketURL(c.SocketDir, c.Port, "postgres", "postgres"))
	t.Cleanup(func() { syscall.Kill(backend, syscall.SIGKILL) })
	if err := syscall.Kill(pf.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); postgres.Running(pf.PID); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("postmaster %d still runs 10 s after SIGKILL", pf.PID)
		}
	}
	if !postgres.Running(backend) {
		t.Fatalf("the busy backend %d ended with its postmaster; the test needs it running", backend)
	}

	p, err := c.Start()
	if err != nil {
		t.Fatalf("restarting the clone: %v", err)
	}
	s, err := c.Ready(ctx, p)
	if err != nil {
		t.Fatalf("the restarted clone: %v", err)
	}
	s.Close(ctx)
	if postgres.Running(backend) {
		t.Errorf("the old postmaster's busy backend %d still runs beside the new postmaster %d", backend, p.PID)
	}
}

// startClone clones image-1 into volume name and starts it as sindri
// starts a clone, stopping and destroying it when t ends.
func startClone(t *testing.T, d *btrfs.Driver, seed *pgtest.Instance, sockets, name string) *postgres.Cluster {
	vol, err := d.Clone(ctx, "image-1", name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		postgres.StopAll(ctx, vol.Path, 10*time.Second)
		if err := d.Destroy(ctx, name); err != nil {
			t.Errorf("destroying %s: %v", name, err)
		}
	})
	c := seed.Cluster
	c.DataDir, c.SocketDir, c.Port = vol.Path, filepath.Join(sockets, name), pgtest.FreePort(t)
	c.Settings.ClusterName = name
	if err := os.Mkdir(c.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	c.Owner.Chown(c.SocketDir, false)
	if err := c.Configure(); err != nil {
		t.Fatal(err)
	}
	p, err := c.Start()
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Ready(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	s.Close(ctx)
	return &c
}

// shmemKey is the System V shared memory key the postmaster of dataDir
// recorded in its postmaster.pid.
func shmemKey(t *testing.T, dataDir string) uint64 {
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 7 || len(strings.Fields(lines[6])) == 0 {
		t.Fatalf("postmaster.pid of %s has no shared memory key: %q", dataDir, data)
	}
	key, err := strconv.ParseUint(strings.Fields(lines[6])[0], 10, 64)
	if err != nil {
		t.Fatalf("postmaster.pid of %s: key %q: %v", dataDir, lines[6], err)
	}
	return key
}
