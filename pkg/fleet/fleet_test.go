package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func member(st *store.Store, dir, name, peer string, interval, down time.Duration) *Member {
	return New(Options{
		Store:    st,
		Capacity: func(context.Context) (storage.Capacity, error) { return storage.StatCapacity(dir) },
		Reserve:  func(total int64) int64 { return total / 20 },
		Name:     name, PeerURL: peer, PublicHostname: name + ".example.com", StorageDriver: "btrfs",
		MaxInstances: 40, HeartbeatInterval: interval, DownTimeout: down, Logger: storetest.Logger(),
	})
}

func TestRegisterAndBeat(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.New(t)
	dir := t.TempDir()
	m := member(st, dir, "sindri-a", "https://a.internal:8443", 50*time.Millisecond, time.Second)
	first, err := m.Register(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := storage.StatCapacity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if first.Name != "sindri-a" || first.PublicHostname != "sindri-a.example.com" || first.StorageDriver != "btrfs" ||
		first.TotalBytes != c.TotalBytes || first.ReserveBytes != c.TotalBytes/20 || first.FreeBytes <= 0 ||
		first.MaxInstances != 40 || first.State != store.HostActive {
		t.Errorf("registered = %+v (filesystem %+v)", first, c)
	}
	if first.MemoryTotalBytes <= 0 || first.MemoryAvailableBytes <= 0 || first.MemoryAvailableBytes > first.MemoryTotalBytes {
		t.Errorf("memory figures: total %d, available %d", first.MemoryTotalBytes, first.MemoryAvailableBytes)
	}

	// Run keeps the row fresh; once it stops, the host goes down.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); m.Run(runCtx) }()
	time.Sleep(400 * time.Millisecond)
	h, err := st.GetHost(ctx, "sindri-a", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if !h.HeartbeatAt.After(first.HeartbeatAt) || h.State != store.HostActive {
		t.Errorf("while running: %+v; first heartbeat at %v", h, first.HeartbeatAt)
	}
	stop()
	<-done
	time.Sleep(400 * time.Millisecond)
	if h, err := st.GetHost(ctx, "sindri-a", 200*time.Millisecond); err != nil || h.State != store.HostDown {
		t.Errorf("stopped for 400ms with a down timeout of 200ms: %+v, %v", h, err)
	}
}

// A host whose storage is slow to report its figures (zfs-fuse's `zfs
// list` waits behind a burst of clones for a second and more) is alive
// all the same: its beats go on with the last figures it read.
func TestHeartbeatsGoOnWhileTheFiguresAreSlow(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.New(t)
	const gb = 1 << 30
	release := make(chan struct{})
	var reads atomic.Int32
	m := New(Options{
		Store: st,
		Capacity: func(ctx context.Context) (storage.Capacity, error) {
			if reads.Add(1) == 1 {
				return storage.Capacity{TotalBytes: 100 * gb, FreeBytes: 50 * gb}, nil
			}
			<-release
			return storage.Capacity{TotalBytes: 100 * gb, FreeBytes: 40 * gb}, nil
		},
		Name: "sindri-a", PeerURL: "https://a.internal:8443", StorageDriver: "zfs",
		HeartbeatInterval: 50 * time.Millisecond, DownTimeout: 200 * time.Millisecond, Logger: storetest.Logger(),
	})
	first, err := m.Register(ctx)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); m.Run(runCtx) }()
	defer func() { stop(); <-done }()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	var last store.Host
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		h, err := st.GetHost(ctx, "sindri-a", 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if h.State != store.HostActive {
			t.Fatalf("the host reads %s %v after its first heartbeat while its storage is slow to answer (heartbeat at %v)",
				h.State, time.Since(first.HeartbeatAt).Round(time.Millisecond), h.HeartbeatAt)
		}
		last = h
	}
	if reads.Load() < 2 {
		t.Fatalf("the figures were read %d times in a second; want a read under way", reads.Load())
	}
	if !last.HeartbeatAt.After(first.HeartbeatAt) || last.FreeBytes != 50*gb {
		t.Errorf("with the figures' read under way: heartbeat at %v (first %v), free %d; want a later heartbeat with the first figures",
			last.HeartbeatAt, first.HeartbeatAt, last.FreeBytes)
	}

	close(release)
	deadline := time.Now().Add(2 * time.Second)
	for {
		h, err := st.GetHost(ctx, "sindri-a", 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if h.FreeBytes == 40*gb {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2s after the storage answered, the host's free bytes read %d, want %d", h.FreeBytes, 40*gb)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTwoHostsOfOneName(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.New(t)
	dir := t.TempDir()
	if _, err := member(st, dir, "sindri-a", "https://a.internal:8443", time.Second, 3*time.Second).Register(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := member(st, dir, "sindri-a", "https://b.internal:8443", time.Second, 3*time.Second).Register(ctx)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second live host named sindri-a: %v, want ErrConflict", err)
	}
}

func TestReadMemInfo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(path, []byte("MemTotal:       16310588 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mi, err := readMemInfo(path)
	if err != nil || mi.total != 16310588*1024 || mi.available != 12000000*1024 {
		t.Errorf("readMemInfo = %+v, %v", mi, err)
	}
	if err := os.WriteFile(path, []byte("MemTotal: 5 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readMemInfo(path); err == nil {
		t.Error("readMemInfo accepted a file without MemAvailable")
	}
}

// Hosts join a fleet under way, alive or not, and adopt nothing: the
// records of no host are the first host's, whose disk holds them.
func TestSecondHostJoinsAndAdoptsNothing(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.New(t)
	dir := t.TempDir()
	img, err := st.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MarkImageReady(ctx, img.ID, "15", 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := member(st, dir, "sindri-a", "https://a.internal:8443", time.Second, 300*time.Millisecond).Register(ctx); err != nil {
		t.Fatal(err)
	}
	// A record of no host made after the first host joined (by a single
	// sindrid pointed at the fleet's database by mistake): not the
	// second host's to take.
	stray, err := st.CreateInstance(ctx, store.InstanceInput{ImageID: img.ID, Owner: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	b := member(st, dir, "sindri-b", "https://b.internal:8443", time.Second, 300*time.Millisecond)
	h, err := b.Register(ctx)
	if err != nil || h.Name != "sindri-b" || h.State != store.HostActive {
		t.Fatalf("second host while the first is alive: %+v, %v", h, err)
	}
	if got, err := st.GetInstance(ctx, stray.ID); err != nil || got.Host != "" {
		t.Errorf("the second host adopted a record of no host: %+v, %v", got, err)
	}
	if hosts, err := st.ImageReadyHosts(ctx, img.ID); err != nil || len(hosts) != 1 || hosts[0] != "sindri-a" {
		t.Errorf("image ready on %v, %v; want the first host's copy only", hosts, err)
	}
	if err := CheckJoin(ctx, st, "sindri-b", "https://c.internal:8443", 300*time.Millisecond); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a third host taking the live second's name: %v, want ErrConflict", err)
	}
	// The first, down for a while, comes back.
	time.Sleep(500 * time.Millisecond)
	if _, err := member(st, dir, "sindri-a", "https://a.internal:8443", time.Second, 300*time.Millisecond).Register(ctx); err != nil {
		t.Errorf("first host back: %v", err)
	}
}

// A single host's records (instances, backups, sources, ready images)
// become the host's when it is the first to join a fleet.
func TestRegisterAdoptsASingleHostsRecords(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.New(t)
	img, err := st.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MarkImageReady(ctx, img.ID, "15", 1, false); err != nil {
		t.Fatal(err)
	}
	inst, err := st.CreateInstance(ctx, store.InstanceInput{ImageID: img.ID, Owner: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AllocatePort(ctx, inst.ID, 15432, 15442, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateBackup(ctx, store.BackupInput{InstanceID: inst.ID}); err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, store.SourceInput{Name: "prod", URL: "postgres://rep:pw@db.example.com/postgres",
		URLRedacted: "postgres://rep@db.example.com/postgres", Mode: store.SourceBasebackup, Keep: 1})
	if err != nil {
		t.Fatal(err)
	}
	st.SetFleetHost("sindri-a")
	h, err := member(st, t.TempDir(), "sindri-a", "https://a.internal:8443", time.Second, 3*time.Second).Register(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.GetInstance(ctx, inst.ID)
	if err != nil || got.Host != "sindri-a" || got.Port != 15432 {
		t.Errorf("instance after joining: %+v, %v", got, err)
	}
	if hosts, err := st.ImageReadyHosts(ctx, img.ID); err != nil || len(hosts) != 1 || hosts[0] != "sindri-a" {
		t.Errorf("image ready on %v, %v", hosts, err)
	}
	if bs, err := st.ListBackups(ctx, store.BackupFilter{}); err != nil || len(bs) != 1 || bs[0].Host != "sindri-a" {
		t.Errorf("backups after joining: %+v, %v", bs, err)
	}
	if got, err := st.GetSource(ctx, src.ID); err != nil || got.Host != "sindri-a" {
		t.Errorf("source after joining: %+v, %v", got, err)
	}
	if h, err = st.GetHost(ctx, "sindri-a", time.Minute); err != nil || h.Instances != 1 || h.ImageCopies != 1 {
		t.Errorf("host after joining: %+v, %v", h, err)
	}
	// Its next port is allocated among its own instances.
	next, err := st.CreateInstance(ctx, store.InstanceInput{ImageID: img.ID, Owner: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := st.AllocatePort(ctx, next.ID, 15432, 15442, nil); err != nil || p != 15433 {
		t.Errorf("next port %d, %v; want 15433", p, err)
	}
}
