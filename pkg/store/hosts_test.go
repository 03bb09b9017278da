package store

import (
	"errors"
	"testing"
	"time"
)

const downAfter = 30 * time.Second

// fleetStores returns n stores on one fresh, migrated database, as n
// hosts' sindrid processes would hold, each with its own pool.
func fleetStores(t *testing.T, n int) []*Store {
	t.Helper()
	first, url := openDB(t)
	must[[]string](t)(first.Migrate(ctx))
	keyPath := t.TempDir() + "/secrets.key"
	must[bool](t)(first.LoadKeyring(ctx, keyPath, true))
	stores := []*Store{first}
	for range n - 1 {
		s := openURL(t, url)
		must[bool](t)(s.LoadKeyring(ctx, keyPath, false))
		stores = append(stores, s)
	}
	return stores
}

func heartbeat(name string) Heartbeat {
	return Heartbeat{
		Name: name, PeerURL: "https://" + name + ".internal:8443", PublicHostname: name + ".example.com",
		StorageDriver: "btrfs", TotalBytes: 100 << 30, FreeBytes: 60 << 30, ReserveBytes: 5 << 30,
		MemoryTotalBytes: 8 << 30, MemoryAvailableBytes: 6 << 30,
	}
}

func TestHostsHeartbeatListAndDrain(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if hosts := must[[]Host](t)(s.ListHosts(ctx, downAfter)); len(hosts) != 0 {
		t.Fatalf("hosts of a new database: %+v", hosts)
	}
	first := must[Host](t)(s.RecordHeartbeat(ctx, heartbeat("sindri-b"), downAfter))
	must[Host](t)(s.RecordHeartbeat(ctx, heartbeat("sindri-a"), downAfter))
	want := heartbeat("sindri-b")
	if first.Name != "sindri-b" || first.PeerURL != want.PeerURL || first.PublicHostname != want.PublicHostname ||
		first.StorageDriver != "btrfs" || first.TotalBytes != want.TotalBytes || first.FreeBytes != want.FreeBytes ||
		first.ReserveBytes != want.ReserveBytes || first.MemoryTotalBytes != want.MemoryTotalBytes ||
		first.MemoryAvailableBytes != want.MemoryAvailableBytes || first.State != HostActive || first.RunningInstances != 0 {
		t.Errorf("registered host = %+v", first)
	}

	// The next heartbeat refreshes the figures and the time, and counts
	// the host's running instances.
	s.SetFleetHost("sindri-b")
	img := newImage(t, s, "img")
	running := newInstance(t, s, img.ID, "a@example.com")
	check(t, s.SetInstanceStatus(ctx, running.ID, InstanceRunning, ""))
	newInstance(t, s, img.ID, "a@example.com") // creating: placed, not running
	time.Sleep(20 * time.Millisecond)
	hb := heartbeat("sindri-b")
	hb.FreeBytes = 50 << 30
	second := must[Host](t)(s.RecordHeartbeat(ctx, hb, downAfter))
	if !second.HeartbeatAt.After(first.HeartbeatAt) || second.FreeBytes != 50<<30 || second.RunningInstances != 1 || second.Instances != 2 {
		t.Errorf("after a second heartbeat: %+v (first at %v)", second, first.HeartbeatAt)
	}

	hosts := must[[]Host](t)(s.ListHosts(ctx, downAfter))
	if len(hosts) != 2 || hosts[0].Name != "sindri-a" || hosts[1].Name != "sindri-b" {
		t.Fatalf("hosts = %+v", hosts)
	}

	// Drained, a host stays drained across its heartbeats (a restart).
	check(t, s.SetHostState(ctx, "sindri-a", HostDraining))
	must[Host](t)(s.RecordHeartbeat(ctx, heartbeat("sindri-a"), downAfter))
	if h := must[Host](t)(s.GetHost(ctx, "sindri-a", downAfter)); h.State != HostDraining {
		t.Errorf("drained host after a heartbeat: %s", h.State)
	}
	check(t, s.SetHostState(ctx, "sindri-a", HostActive))
	if h := must[Host](t)(s.GetHost(ctx, "sindri-a", downAfter)); h.State != HostActive {
		t.Errorf("undrained host: %s", h.State)
	}

	// Down is derived from the heartbeat's age, drained or not.
	check(t, s.SetHostState(ctx, "sindri-a", HostDraining))
	time.Sleep(300 * time.Millisecond)
	for _, h := range must[[]Host](t)(s.ListHosts(ctx, 200*time.Millisecond)) {
		if h.State != HostDown {
			t.Errorf("host %s with a heartbeat %v old, down timeout 200ms: %s", h.Name, time.Since(h.HeartbeatAt), h.State)
		}
	}
	must[Host](t)(s.RecordHeartbeat(ctx, heartbeat("sindri-a"), downAfter))
	if h := must[Host](t)(s.GetHost(ctx, "sindri-a", 200*time.Millisecond)); h.State != HostDraining {
		t.Errorf("host back after being down: %s, want its stored state draining", h.State)
	}

	if err := s.SetHostState(ctx, "nobody", HostDraining); !errors.Is(err, ErrNotFound) {
		t.Errorf("drain an unknown host: %v", err)
	}
	if _, err := s.GetHost(ctx, "nobody", downAfter); !errors.Is(err, ErrNotFound) {
		t.Errorf("get an unknown host: %v", err)
	}
	if err := s.SetHostState(ctx, "sindri-a", HostDown); !errors.Is(err, ErrInvalid) {
		t.Errorf("set a host down by hand: %v", err)
	}
	if _, err := s.RecordHeartbeat(ctx, heartbeat("Not A Label"), downAfter); !errors.Is(err, ErrInvalid) {
		t.Errorf("heartbeat of a bad name: %v", err)
	}
}

func TestHostNameTakenByALiveHost(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	must[Host](t)(s.RecordHeartbeat(ctx, heartbeat("sindri-a"), downAfter))
	impostor := heartbeat("sindri-a")
	impostor.PeerURL = "https://elsewhere.internal:8443"
	if _, err := s.RecordHeartbeat(ctx, impostor, downAfter); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second live host named sindri-a: %v, want ErrConflict", err)
	}
	if h := must[Host](t)(s.GetHost(ctx, "sindri-a", downAfter)); h.PeerURL != heartbeat("sindri-a").PeerURL {
		t.Errorf("the impostor changed the row: %+v", h)
	}
	// Once the first is down, the name may move (a host rebuilt elsewhere).
	time.Sleep(300 * time.Millisecond)
	if h, err := s.RecordHeartbeat(ctx, impostor, 200*time.Millisecond); err != nil || h.PeerURL != impostor.PeerURL {
		t.Errorf("taking over a down host's name: %+v, %v", h, err)
	}
}

func TestPortsArePerHost(t *testing.T) {
	t.Parallel()
	stores := fleetStores(t, 3)
	a, b, single := stores[0], stores[1], stores[2]
	must[Host](t)(a.RecordHeartbeat(ctx, heartbeat("sindri-a"), downAfter))
	must[Host](t)(b.RecordHeartbeat(ctx, heartbeat("sindri-b"), downAfter))
	a.SetFleetHost("sindri-a")
	b.SetFleetHost("sindri-b")
	img := newImage(t, a, "img")
	ports := map[string][]int{}
	for _, s := range []*Store{a, b, single, a, b, single} {
		inst := newInstance(t, s, img.ID, "x@example.com")
		if inst.Host != s.FleetHost() {
			t.Errorf("instance made by host %q has host %q", s.FleetHost(), inst.Host)
		}
		p := must[int](t)(s.AllocatePort(ctx, inst.ID, 15432, 15442, nil))
		ports[s.FleetHost()] = append(ports[s.FleetHost()], p)
		if got := must[Instance](t)(s.GetInstance(ctx, inst.ID)); got.Host != s.FleetHost() || got.Port != p {
			t.Errorf("instance read back: host %q port %d", got.Host, got.Port)
		}
	}
	for host, got := range ports {
		if len(got) != 2 || got[0] != 15432 || got[1] != 15433 {
			t.Errorf("ports of host %q: %v, want [15432 15433]: each host has its own range", host, got)
		}
	}
	if h := must[Host](t)(a.GetHost(ctx, "sindri-a", downAfter)); h.Instances != 2 {
		t.Errorf("sindri-a counts %d instances, want 2", h.Instances)
	}
	summaries := must[[]Instance](t)(a.ListInstanceSummaries(ctx, ""))
	if len(summaries) != 6 || summaries[0].Host != "sindri-a" || summaries[1].Host != "sindri-b" || summaries[2].Host != "" {
		t.Errorf("summaries' hosts: %+v", summaries)
	}
}
