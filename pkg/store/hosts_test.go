package store

import (
	"errors"
	"fmt"
	"sync"
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

// fleetWithImage registers hosts (all alike, the image ready on each of
// readyOn) and returns the image.
func fleetWithImage(t *testing.T, s *Store, hosts []Heartbeat, readyOn ...string) Image {
	t.Helper()
	for _, hb := range hosts {
		must[Host](t)(s.RecordHeartbeat(ctx, hb, downAfter))
	}
	img := newImage(t, s, "img")
	for _, h := range readyOn {
		check(t, s.SetImageCopy(ctx, img.ID, h, CopyReady, ""))
	}
	return img
}

func TestPlacementChoosesTheHostWithMostHeadroom(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	full := heartbeat("full")
	full.FreeBytes = full.ReserveBytes // at its reserve
	capped := heartbeat("capped")
	capped.MaxInstances = 1
	hosts := []Heartbeat{heartbeat("a"), heartbeat("b"), heartbeat("draining"), heartbeat("nocopy"), heartbeat("receiving"), full, capped}
	img := fleetWithImage(t, s, hosts, "a", "b", "draining", "full", "capped")
	check(t, s.SetImageCopy(ctx, img.ID, "receiving", CopyReceiving, ""))
	check(t, s.SetHostState(ctx, "draining", HostDraining))
	if got := must[[]string](t)(s.ImageReadyHosts(ctx, img.ID)); fmt.Sprint(got) != "[a b capped draining full]" {
		t.Errorf("ready hosts: %v", got)
	}

	counts := map[string]int{}
	for i := range 7 {
		inst, err := s.PlaceInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "ci"}, downAfter)
		if err != nil {
			t.Fatalf("placement %d: %v", i, err)
		}
		if inst.Status != InstanceCreating || inst.Port != 0 || inst.Owner != "ci" || inst.ImageID != img.ID {
			t.Errorf("placed instance = %+v", inst)
		}
		counts[inst.Host]++
	}
	// The capped host takes one; a and b share the rest evenly; the
	// draining, full, copyless and still-receiving hosts take none.
	if counts["capped"] != 1 || counts["a"] != 3 || counts["b"] != 3 || len(counts) != 3 {
		t.Errorf("placements per host: %v", counts)
	}

	// More free disk breaks a tie of instances.
	roomy := heartbeat("b")
	roomy.FreeBytes = 90 << 30
	must[Host](t)(s.RecordHeartbeat(ctx, roomy, downAfter))
	if inst := must[Instance](t)(s.PlaceInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "ci"}, downAfter)); inst.Host != "b" {
		t.Errorf("with equal instances, placed on %q, not on b, which has more free disk", inst.Host)
	}

	// A host whose heartbeat is older than the down timeout is passed
	// over: with a tiny timeout, every host is down.
	time.Sleep(300 * time.Millisecond)
	if _, err := s.PlaceInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "ci"}, 200*time.Millisecond); !errors.Is(err, ErrNoHost) {
		t.Errorf("placement with every host down: %v, want ErrNoHost", err)
	}
	must[Host](t)(s.RecordHeartbeat(ctx, heartbeat("a"), downAfter))
	if inst, err := s.PlaceInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "ci"}, 200*time.Millisecond); err != nil || inst.Host != "a" {
		t.Errorf("placement with only a alive: %+v, %v", inst, err)
	}

	// A destroyed instance frees its place.
	if h := must[Host](t)(s.GetHost(ctx, "capped", downAfter)); h.Instances != 1 {
		t.Fatalf("capped holds %d", h.Instances)
	}
	for _, inst := range must[[]Instance](t)(s.ListInstances(ctx, "")) {
		if inst.Host == "capped" {
			check(t, s.DeleteInstance(ctx, inst.ID))
		}
	}
	if h := must[Host](t)(s.GetHost(ctx, "capped", downAfter)); h.Instances != 0 {
		t.Errorf("capped holds %d after its instance was deleted", h.Instances)
	}

	if _, err := s.PlaceInstance(ctx, InstanceInput{ImageID: img.ID + 1000, Owner: "ci"}, downAfter); !errors.Is(err, ErrNotFound) {
		t.Errorf("placement of a missing image: %v, want ErrNotFound", err)
	}
	other := newImage(t, s, "nowhere")
	if _, err := s.PlaceInstance(ctx, InstanceInput{ImageID: other.ID, Owner: "ci"}, downAfter); !errors.Is(err, ErrNoHost) {
		t.Errorf("placement of an image ready nowhere: %v, want ErrNoHost", err)
	}
}

func TestPlacementQuota(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := fleetWithImage(t, s, []Heartbeat{heartbeat("a")}, "a")
	in := InstanceInput{ImageID: img.ID, Owner: "dev@example.com", Quota: InstanceQuota{Instances: 2}}
	must[Instance](t)(s.PlaceInstance(ctx, in, downAfter))
	must[Instance](t)(s.PlaceInstance(ctx, in, downAfter))
	var qerr *QuotaError
	if _, err := s.PlaceInstance(ctx, in, downAfter); !errors.As(err, &qerr) || !errors.Is(err, ErrQuotaExceeded) {
		t.Errorf("third placement over a quota of 2: %v", err)
	}
}

// TestConcurrentPlacementsNeverOverfillAHost places from several
// stores (hosts' processes) at once onto hosts that cap their instances:
// exactly the capacity is placed, no host above its cap, the rest refused.
func TestConcurrentPlacementsNeverOverfillAHost(t *testing.T) {
	t.Parallel()
	stores := fleetStores(t, 3)
	s := stores[0]
	var hosts []Heartbeat
	for _, name := range []string{"a", "b", "c"} {
		hb := heartbeat(name)
		hb.MaxInstances = 5
		hosts = append(hosts, hb)
	}
	img := fleetWithImage(t, s, hosts, "a", "b", "c")
	// Only c holds the second image: a and b's placements race for it.
	onlyC := newImage(t, s, "only-c")
	check(t, s.SetImageCopy(ctx, onlyC.ID, "c", CopyReady, ""))

	const attempts = 30
	// Several rounds, each on emptied hosts, for the race to show.
	for round := range 5 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		placed := map[string]int{}
		refused := 0
		start := make(chan struct{})
		for i := range attempts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				image := img.ID
				if i%3 == 0 {
					image = onlyC.ID
				}
				inst, err := stores[i%len(stores)].PlaceInstance(ctx, InstanceInput{ImageID: image, Owner: "ci"}, downAfter)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					placed[inst.Host]++
				case errors.Is(err, ErrNoHost):
					refused++
				default:
					t.Errorf("round %d, placement %d: %v", round, i, err)
				}
			}()
		}
		close(start)
		wg.Wait()

		if placed["a"] != 5 || placed["b"] != 5 || placed["c"] != 5 || refused != attempts-15 {
			t.Errorf("round %d: placed %v, refused %d; want 5 on each host and %d refused", round, placed, refused, attempts-15)
		}
		for _, h := range must[[]Host](t)(s.ListHosts(ctx, downAfter)) {
			var rows int
			check(t, s.pool.QueryRow(ctx, `select count(*) from instances where host = $1`, h.Name).Scan(&rows))
			if h.Instances != rows || rows > 5 {
				t.Errorf("round %d: host %s counts %d instances, holds %d rows, max 5", round, h.Name, h.Instances, rows)
			}
		}
		for _, inst := range must[[]Instance](t)(s.ListInstances(ctx, "")) {
			check(t, s.DeleteInstance(ctx, inst.ID))
		}
	}
}

// The host that makes an image holds its first copy, recorded with the
// image's readiness; a single host records none.
func TestImageReadyOnTheHostThatMadeIt(t *testing.T) {
	t.Parallel()
	stores := fleetStores(t, 2)
	a, single := stores[0], stores[1]
	must[Host](t)(a.RecordHeartbeat(ctx, heartbeat("sindri-a"), downAfter))
	a.SetFleetHost("sindri-a")
	img := newImage(t, a, "made-on-a")
	check(t, a.MarkImageReady(ctx, img.ID, "15", 1<<20, false))
	if got := must[Image](t)(a.GetImage(ctx, img.ID)); got.Status != ImageReady {
		t.Errorf("image status %s", got.Status)
	}
	if hosts := must[[]string](t)(a.ImageReadyHosts(ctx, img.ID)); fmt.Sprint(hosts) != "[sindri-a]" {
		t.Errorf("ready on %v, want [sindri-a]", hosts)
	}
	// Once more (a finalise's retry) changes nothing.
	check(t, a.MarkImageReady(ctx, img.ID, "15", 1<<20, false))

	lone := newImage(t, single, "single")
	check(t, single.MarkImageReady(ctx, lone.ID, "15", 1<<20, false))
	if hosts := must[[]string](t)(single.ImageReadyHosts(ctx, lone.ID)); len(hosts) != 0 {
		t.Errorf("a single host's image has copies %v", hosts)
	}
	if err := a.MarkImageReady(ctx, lone.ID+100, "15", 1, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("mark a missing image ready in a fleet: %v", err)
	}
	// Destroying the image takes its copies' records with it.
	check(t, a.DeleteImage(ctx, img.ID))
	if hosts := must[[]string](t)(a.ImageReadyHosts(ctx, img.ID)); len(hosts) != 0 {
		t.Errorf("copies of a deleted image: %v", hosts)
	}
}

// An image's Hosts are nil in a database without hosts (a single
// host), and in a fleet the hosts whose copy is ready, by name: not
// those receiving it or whose receive failed.
func TestImageHostsAreItsReadyCopies(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	check(t, s.MarkImageReady(ctx, img.ID, "15", 1, false))
	if got := must[Image](t)(s.GetImage(ctx, img.ID)); got.Hosts != nil {
		t.Errorf("a single host's image lists hosts %#v", got.Hosts)
	}
	for _, name := range []string{"c", "a", "b"} {
		must[Host](t)(s.RecordHeartbeat(ctx, heartbeat(name), downAfter))
	}
	if got := must[Image](t)(s.GetImage(ctx, img.ID)); got.Hosts == nil || len(got.Hosts) != 0 {
		t.Errorf("an image with no copy in a fleet lists hosts %#v; want none, not nil", got.Hosts)
	}
	check(t, s.SetImageCopy(ctx, img.ID, "c", CopyReady, ""))
	check(t, s.SetImageCopy(ctx, img.ID, "a", CopyReady, ""))
	check(t, s.SetImageCopy(ctx, img.ID, "b", CopyReceiving, ""))
	for _, got := range append(must[[]Image](t)(s.ListImages(ctx)), must[Image](t)(s.GetImage(ctx, img.ID))) {
		if fmt.Sprint(got.Hosts) != "[a c]" {
			t.Errorf("image %d lists hosts %v; want [a c]", got.ID, got.Hosts)
		}
	}
	check(t, s.SetImageCopy(ctx, img.ID, "a", CopyFailed, "no space"))
	copies := must[[]ImageCopy](t)(s.ListImageCopies(ctx))
	if len(copies) != 3 || copies[0].Host != "a" || copies[0].Status != CopyFailed || copies[0].Error != "no space" || copies[2].Status != CopyReady {
		t.Errorf("copies %+v", copies)
	}
}

// BenchmarkPlaceInstance places instances one after another on three
// hosts holding the image, as POST /instances in a fleet will.
func BenchmarkPlaceInstance(b *testing.B) {
	s := newStore(b)
	for _, name := range []string{"a", "b", "c"} {
		if _, err := s.RecordHeartbeat(ctx, heartbeat(name), downAfter); err != nil {
			b.Fatal(err)
		}
	}
	img, err := s.CreateImage(ctx, ImageInput{Name: "img", BackedUpAt: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"a", "b", "c"} {
		if err := s.SetImageCopy(ctx, img.ID, name, CopyReady, ""); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, err := s.PlaceInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "ci"}, downAfter); err != nil {
			b.Fatal(err)
		}
	}
}
