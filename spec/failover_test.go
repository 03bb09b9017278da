package spec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// haClient sends the requests of TestMetadataFailover and keeps every
// answer, to check afterwards that each was one a client can act on.
type haClient struct {
	base, token string
	http        http.Client

	mu      sync.Mutex
	answers []haAnswer
}

type haAnswer struct {
	at            time.Time
	method, path  string
	status        int
	code          string
	retryAfter    string
	body          string
	transportFail error
}

// unavailable is the answer to a request made while the metadata store
// was out of reach.
func (a haAnswer) unavailable() bool { return a.status == 503 && a.code == "metadata_unavailable" }

func (c *haClient) do(method, path string, body any) haAnswer {
	var r io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		r = bytes.NewReader(data)
	}
	a := haAnswer{method: method, path: path}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		panic(err)
	}
	req.Header.Set("Draupnir-Version", apiVersion)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	a.at = time.Now()
	if err != nil {
		a.transportFail = err
	} else {
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		a.status, a.body, a.retryAfter = resp.StatusCode, string(out), resp.Header.Get("Retry-After")
		var doc document
		if json.Unmarshal(out, &doc) == nil && len(doc.Errors) == 1 {
			a.code = doc.Errors[0].Code
		}
	}
	c.mu.Lock()
	c.answers = append(c.answers, a)
	c.mu.Unlock()
	return a
}

func (c *haClient) all() []haAnswer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.answers)
}

// haLedger is what the clients were told: the instances whose creation
// answered 201 and those whose destruction answered 204 (or 404 to a
// request sent again after a 503: the first one had finished).
type haLedger struct {
	mu        sync.Mutex
	created   map[string]string // id → database_url
	destroyed map[string]bool
	creations []time.Time
}

func (l *haLedger) live() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	live := map[string]string{}
	for id, url := range l.created {
		if !l.destroyed[id] {
			live[id] = url
		}
	}
	return live
}

// createdSince counts the creations that succeeded after t.
func (l *haLedger) createdSince(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, at := range l.creations {
		if at.After(t) {
			n++
		}
	}
	return n
}

// haWorker creates instances, resets the newest and destroys its oldest
// one whenever it holds three, as a CI system would, until stop; it sends
// a request that got 503 metadata_unavailable again after the Retry-After
// it was given, as the answer says.
func haWorker(c *haClient, l *haLedger, imageID string, stop <-chan struct{}) {
	var mine []string
	for {
		select {
		case <-stop:
			return
		default:
		}
		a := c.do("POST", "/instances", resourceBody("instances", map[string]any{"image_id": imageID, "ttl": "2h"}))
		if a.status == 201 {
			var doc document
			var inst resource
			if json.Unmarshal([]byte(a.body), &doc) == nil && json.Unmarshal(doc.Data, &inst) == nil && inst.ID != "" {
				url, _ := inst.Attributes["database_url"].(string)
				l.mu.Lock()
				l.created[inst.ID] = url
				l.creations = append(l.creations, a.at)
				l.mu.Unlock()
				mine = append(mine, inst.ID)
			}
		} else if a.unavailable() {
			retryAfter(a)
			continue
		}
		if len(mine) == 0 {
			continue
		}
		// A reset of the newest: sent again until it is done.
		for a := c.do("POST", "/instances/"+mine[len(mine)-1]+"/reset", nil); a.unavailable(); {
			retryAfter(a)
			a = c.do("POST", "/instances/"+mine[len(mine)-1]+"/reset", nil)
		}
		if len(mine) < 3 {
			continue
		}
		id := mine[0]
		for sent := 0; ; sent++ {
			a := c.do("DELETE", "/instances/"+id, nil)
			if a.status == 204 || (a.status == 404 && sent > 0) {
				l.mu.Lock()
				l.destroyed[id] = true
				l.mu.Unlock()
				mine = mine[1:]
				break
			}
			if !a.unavailable() {
				mine = mine[1:] // reported with every answer at the end
				break
			}
			retryAfter(a)
		}
		c.do("GET", "/instances", nil)
	}
}

// route is path with its ids as {id}.
func route(path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if p != "" && strings.Trim(p, "0123456789") == "" {
			parts[i] = "{id}"
		}
	}
	return strings.Join(parts, "/")
}

func retryAfter(a haAnswer) {
	if a.retryAfter == "2" {
		time.Sleep(2 * time.Second)
	} else {
		time.Sleep(100 * time.Millisecond) // a bad answer, reported at the end
	}
}

// outageAfter reads the probe's answers (in the order sent) after event
// and before next (if set): from is the first that was not a success,
// resumed the first success after the last that was not; unavailable
// counts the 503 metadata_unavailable among them. With no failure, from is
// zero and resumed the first success.
func outageAfter(answers []haAnswer, event, next time.Time) (from, resumed time.Time, unavailable int) {
	for _, a := range answers {
		if a.at.Before(event) || (!next.IsZero() && !a.at.Before(next)) {
			continue
		}
		switch {
		case a.status != 200:
			if from.IsZero() {
				from = a.at
			}
			resumed = time.Time{}
			if a.unavailable() {
				unavailable++
			}
		case resumed.IsZero():
			resumed = a.at
		}
	}
	return from, resumed, unavailable
}

// TestMetadataFailover runs sindrid on a real Patroni cluster (two
// PostgreSQL 15 members and etcd) through a multi-host database_url with
// target_session_attrs=read-write, while two clients create and destroy
// instances and a third lists them every 100 ms. An operator's planned
// `patronictl switchover`, then a SIGKILL of the new leader's postmaster
// (Patroni fails over at once): every answer is a success or 503
// metadata_unavailable with Retry-After (never a 500, never a refused
// connection: sindrid stays up); afterwards creations, lists and
// destructions work again, the instances listed are exactly those the
// clients were told were made and not destroyed, each answering on its
// database_url, with no other instance volume and no other postmaster; and
// sindrid holds the secrets lock on the new leader. It logs how long each
// outage lasted, as the probe saw it.
func TestMetadataFailover(t *testing.T) {
	cluster := startPatroniCluster(t)
	first := cluster.leader()
	cluster.exec(first, "postgres", fmt.Sprintf("create role %s login password '%s'", metaUser, metaPassword))
	cluster.exec(first, "postgres", "create database sindri owner "+metaUser)

	s := startServerSized(t, "2GiB", "", fmt.Sprintf("database_url = %q", cluster.databaseURL()))
	imageID := s.readyImage(t, "")
	token := s.token(t, "ci")
	held := func() int { return secretsLockHolders(t, cluster, cluster.leader()) }
	if n := held(); n != 1 {
		t.Fatalf("%d sessions hold sindrid's secrets lock on the leader at start, want 1", n)
	}

	client := &haClient{base: "http://" + s.http, token: token, http: http.Client{Timeout: 2 * time.Minute}}
	probe := &haClient{base: client.base, token: token, http: http.Client{Timeout: time.Minute}}
	ledger := &haLedger{created: map[string]string{}, destroyed: map[string]bool{}}
	stop := make(chan struct{})
	var workers sync.WaitGroup
	for range 2 {
		workers.Add(1)
		go func() { defer workers.Done(); haWorker(client, ledger, imageID, stop) }()
	}
	workers.Add(1)
	go func() {
		defer workers.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				probe.do("GET", "/instances", nil)
			}
		}
	}()
	// Other reads, each needing the store: the image, an instance the
	// clients hold, the status.
	workers.Add(1)
	go func() {
		defer workers.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			switch i % 3 {
			case 0:
				client.do("GET", "/images/"+imageID, nil)
			case 1:
				for id := range ledger.live() {
					client.do("GET", "/instances/"+id, nil)
					break
				}
			case 2:
				client.do("GET", "/status", nil)
			}
		}
	}()
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			close(stop)
			workers.Wait()
		}
	}
	t.Cleanup(stopLoad)
	// waitForCreations waits until the clients have made n instances
	// since t: service is back, for writes as well as reads.
	waitForCreations := func(what string, since time.Time, n int) time.Time {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for ledger.createdSince(since) < n {
			if time.Now().After(deadline) {
				stopLoad()
				t.Fatalf("%s: %d instances made in 3 min, want %d; answers since: %s", what, ledger.createdSince(since), n,
					summarise(client.all(), since))
			}
			time.Sleep(100 * time.Millisecond)
		}
		return time.Now()
	}
	start := time.Now()
	waitForCreations("before the switchover", start, 3)

	// A planned switchover.
	second := cluster.other(first)
	switchAt := time.Now()
	cluster.switchover(first, second)
	cluster.waitHealthy(second)
	switchLed := time.Now()
	waitForCreations("after the switchover", switchLed, 3)

	// The new leader's postmaster killed: Patroni promotes the standby.
	killAt := time.Now()
	pid := cluster.killPostmaster(second)
	cluster.waitFor(first+" leading again", 2*time.Minute, func(ms []patroniMemberState) bool {
		m, ok := find(ms, first)
		return ok && m.Role == "leader" && m.State == "running"
	})
	failLed := time.Now()
	waitForCreations("after the failover", failLed, 3)
	stopLoad()
	t.Logf("switchover %s → %s; postmaster %d of %s killed %s after", first, second, pid, second, killAt.Sub(switchAt).Round(time.Millisecond))

	// Every answer was one a client can act on.
	answers := client.all()
	answers = append(answers, probe.all()...)
	counts := map[string]int{}
	for _, a := range answers {
		key := fmt.Sprintf("%s %s %d %s", a.method, route(a.path), a.status, a.code)
		counts[key]++
		switch {
		case a.transportFail != nil:
			t.Errorf("%s %s at %s: %v (sindrid stopped answering)", a.method, a.path, a.at.Format(time.StampMilli), a.transportFail)
		case a.status == 503:
			if !a.unavailable() || a.retryAfter != "2" {
				t.Errorf("%s %s: 503 %s with Retry-After %q, want metadata_unavailable with Retry-After 2: %s", a.method, a.path, a.code, a.retryAfter, a.body)
			}
		case a.status == 404 && a.method == "GET" && ledger.destroyed[strings.TrimPrefix(a.path, "/instances/")]:
			// Read while a client destroyed it.
		case a.status >= 300 && !(a.method == "DELETE" && a.status == 404):
			t.Errorf("%s %s at %s: %d %s", a.method, a.path, a.at.Format(time.StampMilli), a.status, a.body)
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("answers: %s × %d", k, counts[k])
	}
	if !slices.ContainsFunc(answers, haAnswer.unavailable) {
		t.Errorf("no request was answered 503 metadata_unavailable: the failovers were not seen")
	}

	// How long the probe saw sindrid unable to serve.
	probed := probe.all()
	for _, ev := range []struct {
		name        string
		at, led, to time.Time
	}{
		{"switchover", switchAt, switchLed, killAt},
		{"failover (leader's postmaster SIGKILLed)", killAt, failLed, time.Time{}},
	} {
		from, resumed, unavailable := outageAfter(probed, ev.at, ev.to)
		if resumed.IsZero() {
			t.Errorf("%s: GET /instances never answered 200 again", ev.name)
			continue
		}
		window := time.Duration(0)
		if !from.IsZero() {
			window = resumed.Sub(from)
		}
		t.Logf("%s: GET /instances unavailable for %.1f s (%d answers 503 metadata_unavailable); sindrid served again %.1f s after the event, Patroni reported the cluster led (and, after the switchover, its standby in sync) %.1f s after it",
			ev.name, window.Seconds(), unavailable, resumed.Sub(ev.at).Seconds(), ev.led.Sub(ev.at).Seconds())
		// Liveness, not speed: sindrid reconnects by itself once the
		// leader is there.
		if resumed.Sub(ev.led) > time.Minute {
			t.Errorf("%s: sindrid served again %s after Patroni had a leader", ev.name, resumed.Sub(ev.led))
		}
	}

	// Nothing lost, nothing duplicated: the listed instances are exactly
	// those the clients were told exist, once a creation cut short has
	// been undone (in the background, once the store answers).
	want := ledger.live()
	var listed []string
	deadline := time.Now().Add(90 * time.Second)
	for {
		listed = s.instanceIDs(t, token)
		if sameIDs(listed, want) && sameIDs(instanceVolumes(t, s), want) {
			break
		}
		if time.Now().After(deadline) {
			var strays []string
			for _, id := range listed {
				if _, ok := want[id]; !ok {
					status, body := s.call(t, "GET", "/instances/"+id, token, nil)
					strays = append(strays, fmt.Sprintf("GET /instances/%s: %d %s", id, status, body))
				}
			}
			t.Fatalf("instances listed %v, volumes %v; the clients were told of %v; %s", listed, instanceVolumes(t, s), keysOf(want), strings.Join(strays, "; "))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%d instances made and %d destroyed by the clients; %d left", len(ledger.created), len(ledger.destroyed), len(want))
	for id, url := range want {
		if got, err := query(url, "select count(*)::text from people"); err != nil || got != "2" {
			t.Errorf("instance %s on its database_url: %q %v", id, got, err)
		}
		if st, err := postgres.Status(filepath.Join(s.data, "volumes", "instance-"+id)); err != nil || !st.Alive {
			t.Errorf("instance %s's postmaster: %+v %v", id, st, err)
		}
	}
	// No postmaster outside those volumes.
	volumes, _ := os.ReadDir(filepath.Join(s.data, "volumes"))
	for _, v := range volumes {
		name := v.Name()
		if _, ok := want[strings.TrimPrefix(name, "instance-")]; ok && strings.HasPrefix(name, "instance-") {
			continue
		}
		if pids := processesUnder(filepath.Join(s.data, "volumes", name)); len(pids) != 0 {
			t.Errorf("processes %v run in volume %s, which no instance the clients know of has", pids, name)
		}
	}

	// The secrets lock is held again, on the new leader, by one session.
	waitUntil(t, "sindrid's secrets lock held on the new leader", 30*time.Second, func() bool { return held() == 1 })

	// The old leader back as the synchronous standby: the cluster as it
	// was before, which the last writes below go through.
	cluster.waitHealthy(first)

	// And the API works as before: create, list, destroy.
	inst, _ := s.createInstance(t, token, imageID, nil)
	if ids := s.instanceIDs(t, token); !slices.Contains(ids, inst.ID) {
		t.Errorf("instance %s made after the failovers is not listed: %v", inst.ID, ids)
	}
	if status, body := s.call(t, "DELETE", "/instances/"+inst.ID, token, nil); status != 204 {
		t.Errorf("DELETE after the failovers: %d %s", status, body)
	}
	for id := range want {
		if status, body := s.call(t, "DELETE", "/instances/"+id, token, nil); status != 204 {
			t.Errorf("DELETE /instances/%s: %d %s", id, status, body)
		}
	}
	if vols := instanceVolumes(t, s); len(vols) != 0 {
		t.Errorf("instance volumes left after every instance was destroyed: %v", vols)
	}
	if err := s.stop(); err != nil {
		t.Errorf("sindrid on SIGTERM: %v", err)
	}
}

// secretsLockHolders counts the sessions of the sindri database on the
// named member that hold the secrets lock (store.secretsLockKey,
// 0x73696e647269_0053, shared).
func secretsLockHolders(t *testing.T, c *patroniCluster, member string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.superuserURL(member, "sindri"))
	if err != nil {
		return -1
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, `select count(*) from pg_locks l join pg_database d on d.oid = l.database
		where l.locktype = 'advisory' and l.mode = 'ShareLock' and l.granted and d.datname = 'sindri'
		and ((l.classid::bigint << 32) | l.objid::bigint) = $1 and l.objsubid = 1`, int64(0x73696e647269_0053)).Scan(&n)
	if err != nil {
		t.Logf("reading pg_locks on %s: %v", member, err)
		return -1
	}
	return n
}

// instanceVolumes lists the ids of the instance volumes on disk.
func instanceVolumes(t *testing.T, s *server) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.data, "volumes"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutPrefix(e.Name(), "instance-"); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func sameIDs(ids []string, want map[string]string) bool {
	if len(ids) != len(want) {
		return false
	}
	for _, id := range ids {
		if _, ok := want[id]; !ok {
			return false
		}
	}
	return true
}

func keysOf(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func waitUntil(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// summarise counts answers since t by request and status, for a failure
// message.
func summarise(answers []haAnswer, since time.Time) string {
	counts := map[string]int{}
	var last string
	for _, a := range answers {
		if a.at.Before(since) {
			continue
		}
		k := fmt.Sprintf("%s %d %s", a.method, a.status, a.code)
		if a.transportFail != nil {
			k = fmt.Sprintf("%s %v", a.method, a.transportFail)
		}
		counts[k]++
		last = a.body
	}
	return fmt.Sprintf("%v; last body %s", counts, last)
}

// sindrid started while its metadata database is not up yet (the whole
// cluster restarting, or no leader yet) waits for it, trying again with
// backoff, instead of exiting; once the database is up it serves.
func TestSindridWaitsForItsMetadataStore(t *testing.T) {
	meta := pgtest.NewInstance(t)
	t.Cleanup(func() { postgres.Stop(context.Background(), meta.DataDir, 10*time.Second) })
	const delay = 5 * time.Second
	up := make(chan error, 1)
	go func() {
		time.Sleep(delay)
		if err := meta.Cluster.Configure(); err != nil {
			up <- err
			return
		}
		p, err := meta.Cluster.Start()
		if err != nil {
			up <- err
			return
		}
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		session, err := meta.Ready(c, p)
		if err == nil {
			session.Close(context.Background())
		}
		up <- err
	}()
	began := time.Now()
	s := startServerSized(t, "1GiB", "", fmt.Sprintf("database_url = %q", meta.SocketURL()))
	if err := <-up; err != nil {
		t.Fatalf("starting the metadata database: %v", err)
	}
	if waited := time.Since(began); waited < delay {
		t.Fatalf("sindrid answered its health check %s after its start, before its metadata database was up", waited)
	}
	if status, body := s.call(t, "GET", "/status", s.secret, nil); status != 200 {
		t.Fatalf("GET /status once the database is up: %d %s", status, body)
	}
	if err := s.stop(); err != nil {
		t.Errorf("sindrid on SIGTERM: %v", err)
	}
}
