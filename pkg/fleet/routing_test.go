package fleet_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/fleet"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
	"github.com/sindri-db/sindri/pkg/testfs"
)

const (
	fleetSecret  = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
	sharedSecret = "the-upload-users-shared-secret-for-tests"
	// downTimeout is the hosts' down timeout: short, so that a host
	// whose heartbeats stop shows down within the test.
	downTimeout = 3 * time.Second
)

// host is one sindrid host of a two-host fleet, in this process: its own
// loopback BTRFS, engine, API and HTTPS listener, and its heartbeat, on
// the metadata database the fleet shares. Its engine runs no reconcile,
// expiry or supervision loop: until the engine keeps to its own host's
// instances, each host's loop would take the other's for lost.
type host struct {
	name    string
	store   *store.Store
	storage storage.Driver
	engine  *engine.Engine
	server  *httptest.Server
	runDir  string
	stop    context.CancelFunc // stops the heartbeat
	beating chan struct{}
}

// twoHosts starts hosts a and b on one metadata database, with image 1
// ready on both: made on a, and copied to b by the storage's send and
// receive, its copy recorded by hand (replication will do both).
func twoHosts(t testing.TB) (a, b *host, client *http.Client) {
	t.Helper()
	return twoHostsWith(t, engine.Limits{}, engine.Limits{})
}

// twoHostsWith is twoHosts with a's engine under aLimits, b's under
// bLimits.
func twoHostsWith(t testing.TB, aLimits, bLimits engine.Limits) (a, b *host, client *http.Client) {
	t.Helper()
	ctx := context.Background()
	st, dbURL := storetest.New(t)
	keyFile := st.Keyring().Path()
	roots := x509.NewCertPool()
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	t.Cleanup(transport.CloseIdleConnections)
	a = startHost(t, "a", "localhost", st, roots, transport, aLimits)
	other, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	if _, err := other.LoadKeyring(ctx, keyFile, false); err != nil {
		t.Fatal(err)
	}
	// b's instances are reached at another name than a's: the answers
	// must carry b's.
	b = startHost(t, "b", "127.0.0.1", other, roots, transport, bLimits)

	img, err := st.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	vol, err := a.storage.Create(ctx, "upload-1")
	if err != nil {
		t.Fatal(err)
	}
	owner := pgtest.Owner(t)
	if out, err := exec.Command("cp", "-a", pgtest.Template(t)+"/.", vol.Path).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	owner.Chown(vol.Path, false)
	os.Chmod(vol.Path, 0o700)
	if _, err := a.storage.Freeze(ctx, vol.Name, engine.ImageVolume(img.ID)); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkImageReady(ctx, img.ID, "15", 1, false); err != nil {
		t.Fatal(err)
	}
	// Until replication exists, b's copy is made here, by the driver's
	// own send and receive, and recorded ready.
	r, w := io.Pipe()
	go func() { w.CloseWithError(a.storage.Send(ctx, engine.ImageVolume(img.ID), w)) }()
	if _, err := b.storage.Receive(ctx, engine.ImageVolume(img.ID), r); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*host{a, b} {
		if err := st.SetImageCopy(ctx, img.ID, h.name, store.CopyReady, ""); err != nil {
			t.Fatal(err)
		}
	}
	return a, b, &http.Client{Transport: transport}
}

func startHost(t testing.TB, name, publicHostname string, st *store.Store, roots *x509.CertPool, peers *http.Transport, limits engine.Limits) *host {
	t.Helper()
	ctx := context.Background()
	root := filepath.Join(testfs.Btrfs(t, 2<<30), "sindri")
	driver, err := btrfs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	// The postgres user must reach the data directories.
	probe, err := driver.Create(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(probe.Path); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	driver.Destroy(ctx, "probe")
	runDir, err := os.MkdirTemp("", "sf")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(runDir, 0o711)
	t.Cleanup(func() { os.RemoveAll(runDir) })
	t.Cleanup(func() {
		entries, _ := driver.List(ctx)
		for _, e := range entries {
			if e.Kind == storage.KindVolume {
				postgres.Stop(ctx, e.Path, 5*time.Second)
			}
		}
	})

	st.SetFleetHost(name)
	minPort := pgtest.FreePort(t)
	h := &host{name: name, store: st, storage: driver, runDir: runDir}
	h.engine = engine.New(engine.Options{
		Store: st, Storage: driver, Owner: pgtest.Owner(t), BinPattern: pgtest.BinPattern,
		MinPort: minPort, MaxPort: minPort + 20, PublicHostname: publicHostname, SharedBuffers: "16MB",
		RunDir: runDir, UploadsDir: filepath.Join(root, "image_uploads"), BackupsDir: filepath.Join(root, "backups"),
		Logger: storetest.Logger(), DownTimeout: downTimeout, Limits: limits,
	})
	authn, err := auth.New(auth.Options{SharedSecret: sharedSecret, Store: st, Logger: storetest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	routing := &api.Fleet{
		Self: name, Auth: fleet.NewPeerAuth(name, []byte(fleetSecret)), Transport: peers,
		Hosts:      func(ctx context.Context) ([]store.Host, error) { return st.ListHosts(ctx, downTimeout) },
		ImageHosts: st.ImageReadyHosts, Logger: storetest.Logger(),
	}
	h.engine.SetPeers(routing)
	services := h.engine.Services()
	routing.Placed = services.Instances
	server := api.NewServer(api.Options{Logger: storetest.Logger(), Authenticate: api.Authenticate(authn)})
	(&api.Handlers{
		Images: services.Images, Instances: services.Instances, Backups: services.Backups, Status: services.Status,
		Hosts: engine.NewHostService(st, downTimeout), Fleet: routing,
		Auth: authn, PublicHostname: publicHostname, Version: "test",
	}).Register(server)
	h.server = httptest.NewTLSServer(server.Handler())
	t.Cleanup(h.server.Close)
	roots.AddCert(h.server.Certificate())

	member := fleet.New(fleet.Options{
		Store: st, Capacity: driver.Capacity, Reserve: func(total int64) int64 { return total / 20 },
		Name: name, PeerURL: h.server.URL, PublicHostname: publicHostname, StorageDriver: driver.Name(),
		HeartbeatInterval: time.Second, DownTimeout: downTimeout, Logger: storetest.Logger(),
	})
	if _, err := member.Beat(ctx); err != nil {
		t.Fatal(err)
	}
	beatCtx, stop := context.WithCancel(context.Background())
	h.stop, h.beating = stop, make(chan struct{})
	go func() {
		defer close(h.beating)
		member.Run(beatCtx)
	}()
	t.Cleanup(h.stopBeating)
	return h
}

// stopBeating stops the host's heartbeat; after downTimeout it is down.
func (h *host) stopBeating() {
	h.stop()
	<-h.beating
}

// answer is an HTTP answer as a client reads it.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) String() string { return fmt.Sprintf("%d %s", a.status, a.body) }

// call sends a request to host h as the bearer of token.
func call(t testing.TB, c *http.Client, h *host, method, path, token, version string, body any, header ...string) answer {
	t.Helper()
	var r io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		r = strings.NewReader(string(data))
	}
	req, err := http.NewRequest(method, h.server.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if version != "" {
		req.Header.Set(api.VersionHeader, version)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/vnd.api+json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s on host %s: %v", method, path, h.name, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s on host %s: reading the answer: %v", method, path, h.name, err)
	}
	return answer{res.StatusCode, res.Header, data}
}

type doc struct {
	Data struct {
		ID         string         `json:"id"`
		Type       string         `json:"type"`
		Attributes map[string]any `json:"attributes"`
	} `json:"data"`
}

func decode(t testing.TB, a answer) doc {
	t.Helper()
	var d doc
	if err := json.Unmarshal(a.body, &d); err != nil {
		t.Fatalf("%v: %s", err, a.body)
	}
	return d
}

func newInstance(imageID int64) map[string]any {
	return map[string]any{"data": map[string]any{"type": "instances", "attributes": map[string]any{"image_id": fmt.Sprint(imageID)}}}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// psql runs a statement on the instance of d as its user, at its
// database_url.
func psql(t testing.TB, d doc, sql string) error {
	t.Helper()
	return execOn(d.Data.Attributes["database_url"].(string), sql)
}

// superuser runs a statement on the instance of d as postgres, through
// its socket on host h.
func superuser(t testing.TB, h *host, d doc, sql string) error {
	t.Helper()
	port := int(d.Data.Attributes["port"].(float64))
	return execOn(postgres.SocketURL(filepath.Join(h.runDir, d.Data.ID), port, "postgres", "postgres"), sql)
}

func execOn(connString, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// TestOneAPIOnEveryHost: two hosts on one metadata database. With a
// drained, a create sent to a is placed on b, built there and answered by
// a exactly as b answers its own (JSON:API and Draupnir 5.3); the
// instance, on b, answers psql at b's hostname; a serves its reads from
// the metadata and forwards its reset, backup, download (ranges
// included) and destroy to b. A forged proof, or a user's token, is
// refused on every peer route. b unreachable: a create placed on it is
// 503 host_unavailable and leaves no row; b down: its instance's actions
// are 503 host_unavailable with Retry-After, naming b.
func TestOneAPIOnEveryHost(t *testing.T) {
	ctx := context.Background()
	a, b, c := twoHosts(t)
	authn, err := auth.New(auth.Options{Store: a.store})
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := authn.CreateAPIToken(ctx, "ci")
	if err != nil {
		t.Fatal(err)
	}
	const v54, v53 = "5.4.0", "5.3.0"
	if err := a.store.SetHostState(ctx, "a", store.HostDraining); err != nil {
		t.Fatal(err)
	}

	// The same create, to b (placed on b itself) and to a (placed on b).
	local := call(t, c, b, "POST", "/instances", token, v54, newInstance(1))
	remote := call(t, c, a, "POST", "/instances", token, v54, newInstance(1))
	if local.status != 201 || remote.status != 201 {
		t.Fatalf("creates: on b %s; through a %s", local, remote)
	}
	ld, rd := decode(t, local), decode(t, remote)
	if rd.Data.Attributes["host"] != "b" || rd.Data.Attributes["hostname"] != "127.0.0.1" ||
		!strings.HasPrefix(rd.Data.Attributes["database_url"].(string), "postgres://") ||
		!strings.Contains(rd.Data.Attributes["database_url"].(string), "@127.0.0.1:") {
		t.Errorf("instance created through a: %v", rd.Data.Attributes)
	}
	if !slices.Equal(keys(ld.Data.Attributes), keys(rd.Data.Attributes)) || ld.Data.Type != rd.Data.Type {
		t.Errorf("attributes through a %v, on b %v", keys(rd.Data.Attributes), keys(ld.Data.Attributes))
	}
	for _, k := range []string{"Content-Type", api.VersionHeader} {
		if local.header.Get(k) != remote.header.Get(k) || len(remote.header.Values(k)) != 1 {
			t.Errorf("%s through a %q, on b %q", k, remote.header.Values(k), local.header.Values(k))
		}
	}
	if remote.header.Get(api.RequestIDHeader) == "" {
		t.Error("no request id through a")
	}
	if err := psql(t, rd, "select 1"); err != nil {
		t.Fatalf("psql on the instance placed on b, at its database_url: %v", err)
	}
	if err := superuser(t, b, rd, "create table made_on_b (x int)"); err != nil {
		t.Fatalf("a table on the instance placed on b: %v", err)
	}
	id := rd.Data.ID
	if _, err := b.storage.Get(ctx, engine.InstanceVolume(mustID(t, id))); err != nil {
		t.Errorf("instance %s's volume on b: %v", id, err)
	}
	if _, err := a.storage.Get(ctx, engine.InstanceVolume(mustID(t, id))); err == nil {
		t.Errorf("instance %s has a volume on a", id)
	}

	// A Draupnir 5.3 client gets Draupnir's format through a as from b.
	local53 := call(t, c, b, "POST", "/instances", token, v53, newInstance(1))
	remote53 := call(t, c, a, "POST", "/instances", token, v53, newInstance(1))
	if local53.status != 201 || remote53.status != 201 || remote53.header.Get("Content-Type") != "application/json" ||
		local53.header.Get("Content-Type") != remote53.header.Get("Content-Type") ||
		!slices.Equal(keys(decode(t, local53).Data.Attributes), keys(decode(t, remote53).Data.Attributes)) {
		t.Errorf("Draupnir 5.3 creates: on b %d %q; through a %s %q", local53.status, local53.header.Get("Content-Type"),
			remote53, remote53.header.Get("Content-Type"))
	}
	for _, d := range []answer{local53, remote53} {
		if got := call(t, c, a, "DELETE", "/instances/"+decode(t, d).Data.ID, token, v53, nil); got.status != 204 ||
			got.header.Get("Content-Type") != "application/json" {
			t.Errorf("Draupnir 5.3 destroy through a: %s %q", got, got.header.Values("Content-Type"))
		}
	}

	// Reads from the metadata; the reset on b.
	if got := call(t, c, a, "GET", "/instances/"+id, token, v54, nil); got.status != 200 ||
		decode(t, got).Data.Attributes["hostname"] != "127.0.0.1" || !strings.Contains(string(got.body), `"client_key"`) {
		t.Errorf("GET through a: %s", got)
	}
	if got := call(t, c, a, "POST", "/instances/"+id+"/reset", token, v54, nil); got.status != 200 {
		t.Fatalf("reset through a: %s", got)
	}
	if err := superuser(t, b, rd, "select * from made_on_b"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("after the reset through a, the table made on b: %v", err)
	}
	if err := superuser(t, b, rd, "create table kept (x int); insert into kept select generate_series(1, 10000)"); err != nil {
		t.Fatal(err)
	}

	// A backup of the instance on b, through a: made on b, downloaded
	// through a, whole and in a range.
	got := call(t, c, a, "POST", "/backups", token, v54,
		map[string]any{"data": map[string]any{"type": "backups", "attributes": map[string]any{"instance_id": id}}})
	if got.status != 202 {
		t.Fatalf("backup through a: %s", got)
	}
	backupID := decode(t, got).Data.ID
	var backup doc
	for deadline := time.Now().Add(2 * time.Minute); ; {
		backup = decode(t, call(t, c, a, "GET", "/backups/"+backupID, token, v54, nil))
		if backup.Data.Attributes["status"] != "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %s still running", backupID)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if backup.Data.Attributes["status"] != "done" {
		t.Fatalf("backup: %v", backup.Data.Attributes)
	}
	if got, err := a.store.GetBackup(ctx, mustID(t, backupID)); err != nil || got.Host != "b" {
		t.Errorf("backup's host: %q, %v", got.Host, err)
	}
	whole := call(t, c, a, "GET", "/backups/"+backupID+"/download", token, v54, nil)
	sum := sha256.Sum256(whole.body)
	if whole.status != 200 || hex.EncodeToString(sum[:]) != backup.Data.Attributes["sha256"] || len(whole.body) < 1000 {
		t.Fatalf("download through a: %d, %d bytes, sha256 %x, want %v", whole.status, len(whole.body), sum, backup.Data.Attributes["sha256"])
	}
	part := call(t, c, a, "GET", "/backups/"+backupID+"/download", token, v54, nil, "Range", "bytes=100-1099")
	if part.status != 206 || string(part.body) != string(whole.body[100:1100]) ||
		part.header.Get("Content-Range") != fmt.Sprintf("bytes 100-1099/%d", len(whole.body)) {
		t.Errorf("range through a: %d %q, %d bytes", part.status, part.header.Get("Content-Range"), len(part.body))
	}
	if got := call(t, c, a, "HEAD", "/backups/"+backupID+"/download", token, v54, nil); got.status != 200 ||
		got.header.Get("Content-Length") != fmt.Sprint(len(whole.body)) {
		t.Errorf("HEAD through a: %d %v", got.status, got.header)
	}

	// The peers' routes: a forged proof, and a user, are refused.
	forged := &http.Request{Method: "POST", URL: mustURL(t, b.server.URL+"/fleet/instances/"+id+"/create"), Header: http.Header{}}
	fleet.NewPeerAuth("a", []byte("not-the-fleet-secret-but-just-as-long-000")).Sign(forged)
	for _, attempt := range []struct {
		name, method, path string
		header             []string
	}{
		{"forged proof on a peer route", "POST", "/fleet/instances/" + id + "/create", []string{fleet.PeerHeader, forged.Header.Get(fleet.PeerHeader)}},
		{"user token on a peer route", "POST", "/fleet/instances/" + id + "/create", nil},
		{"forged proof on a user route", "DELETE", "/instances/" + id, []string{fleet.PeerHeader, forged.Header.Get(fleet.PeerHeader)}},
	} {
		got := call(t, c, b, attempt.method, attempt.path, token, v54, nil, attempt.header...)
		if got.status != 403 || !strings.Contains(string(got.body), `"not_a_peer"`) {
			t.Errorf("%s: %s", attempt.name, got)
		}
	}
	if got := call(t, c, a, "GET", "/instances/"+id, token, v54, nil); got.status != 200 {
		t.Fatalf("instance after the refused attempts: %s", got)
	}

	// The backup and the instance destroyed through a: gone from b.
	if got := call(t, c, a, "DELETE", "/backups/"+backupID, token, v54, nil); got.status != 204 {
		t.Errorf("backup delete through a: %s", got)
	}
	if got := call(t, c, a, "DELETE", "/instances/"+id, token, v54, nil); got.status != 204 {
		t.Fatalf("destroy through a: %s", got)
	}
	if _, err := b.storage.Get(ctx, engine.InstanceVolume(mustID(t, id))); err == nil {
		t.Errorf("instance %s's volume is still on b", id)
	}
	if got := call(t, c, b, "GET", "/instances/"+id, token, v54, nil); got.status != 404 {
		t.Errorf("destroyed instance on b: %s", got)
	}

	// b alive but unreachable: a create placed on it leaves nothing.
	kept := decode(t, local).Data.ID
	b.server.CloseClientConnections()
	b.server.Listener.Close()
	before, err := a.store.ListInstanceSummaries(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	got = call(t, c, a, "POST", "/instances", token, v54, newInstance(1))
	if got.status != 503 || !strings.Contains(string(got.body), `"host_unavailable"`) || !strings.Contains(string(got.body), `host \"b\"`) ||
		got.header.Get("Retry-After") != "10" {
		t.Errorf("create placed on an unreachable host: %s (Retry-After %q)", got, got.header.Get("Retry-After"))
	}
	after, err := a.store.ListInstanceSummaries(ctx, "")
	if err != nil || len(after) != len(before) {
		t.Errorf("instances before the failed create %d, after %d (%v)", len(before), len(after), err)
	}
	if h, err := a.store.GetHost(ctx, "b", downTimeout); err != nil || h.Instances != len(before) {
		t.Errorf("b's placed instances after the failed create: %d, %v", h.Instances, err)
	}
	if got := call(t, c, a, "GET", "/instances/"+kept, token, v54, nil); got.status != 200 {
		t.Errorf("GET of b's instance while b is unreachable: %s", got)
	}
	if got := call(t, c, a, "DELETE", "/instances/"+kept, token, v54, nil); got.status != 503 ||
		!strings.Contains(string(got.body), `"host_unavailable"`) || !strings.Contains(string(got.body), "cannot be reached") {
		t.Errorf("destroy of b's instance while b is unreachable: %s", got)
	}

	// b down: its instance's actions are refused at once, naming it.
	b.stopBeating()
	time.Sleep(downTimeout + 1500*time.Millisecond)
	for _, path := range []string{"/instances/" + kept, "/instances/" + kept + "/reset"} {
		method := map[bool]string{true: "DELETE", false: "POST"}[!strings.HasSuffix(path, "reset")]
		got := call(t, c, a, method, path, token, v53, nil)
		if got.status != 503 || !strings.Contains(string(got.body), `host \"b\"`) || !strings.Contains(string(got.body), "is down") ||
			got.header.Get("Retry-After") != "10" || got.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s with b down: %s (Retry-After %q)", method, path, got, got.header.Get("Retry-After"))
		}
	}
	if got := call(t, c, a, "POST", "/instances", token, v54, newInstance(1)); got.status != 503 ||
		!strings.Contains(string(got.body), `"no_host_available"`) {
		t.Errorf("create with a drained and b down: %s", got)
	}
}

// TestRefusalOfTheChosenHostIsTheAnswer: the quota of the host asked
// counts the user's instances on every host (b refuses a second instance
// of a user whose first is on a); the host chosen refuses
// what it was placed (its disk reserve, stricter than its heartbeat told
// the placement): the client asking another host gets that refusal, as
// the chosen host gives it to its own clients, naming the host, and no
// row is left.
func TestRefusalOfTheChosenHostIsTheAnswer(t *testing.T) {
	ctx := context.Background()
	a, b, c := twoHostsWith(t, engine.Limits{}, engine.Limits{InstancesPerUser: 1, DiskReserve: engine.Amount{Percent: 99}})
	authn, err := auth.New(auth.Options{Store: a.store})
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := authn.CreateAPIToken(ctx, "ci")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.store.SetHostState(ctx, "b", store.HostDraining); err != nil {
		t.Fatal(err)
	}
	if got := call(t, c, a, "POST", "/instances", token, "5.4.0", newInstance(1)); got.status != 201 {
		t.Fatalf("first instance of ci: %s", got)
	}
	if err := a.store.SetHostState(ctx, "b", store.HostActive); err != nil {
		t.Fatal(err)
	}
	if err := a.store.SetHostState(ctx, "a", store.HostDraining); err != nil {
		t.Fatal(err)
	}
	if got := call(t, c, b, "POST", "/instances", token, "5.4.0", newInstance(1)); got.status != 429 ||
		!strings.Contains(string(got.body), "limits.instances_per_user") {
		t.Errorf("second instance of ci, asked of b, over b's quota: %s", got)
	}
	placed, err := a.store.ListInstanceSummaries(ctx, "")
	if err != nil || len(placed) != 1 || placed[0].Host != "a" {
		t.Fatalf("instances after the quota's refusal: %+v, %v", placed, err)
	}
	direct := call(t, c, b, "POST", "/instances", sharedSecret, "5.4.0", newInstance(1))
	through := call(t, c, a, "POST", "/instances", sharedSecret, "5.4.0", newInstance(1))
	code := func(a answer) string {
		var d struct {
			Errors []struct{ Code, Detail string } `json:"errors"`
		}
		json.Unmarshal(a.body, &d)
		if len(d.Errors) != 1 {
			return ""
		}
		return d.Errors[0].Code + ": " + d.Errors[0].Detail
	}
	if direct.status != 503 || !strings.HasPrefix(code(direct), "no_disk_space: ") || !strings.Contains(code(direct), "limits.disk_reserve") {
		t.Fatalf("create on b under its reserve: %s", direct)
	}
	if through.status != 503 || code(through) != strings.Replace(code(direct), ": ", `: host "b": `, 1) {
		t.Errorf("create through a placed on b: %s; b's own answer %s", through, direct)
	}
	if left, err := a.store.ListInstanceSummaries(ctx, ""); err != nil || len(left) != 1 {
		t.Errorf("instances left: %+v, %v", left, err)
	}
	if h, err := a.store.GetHost(ctx, "b", downTimeout); err != nil || h.Instances != 0 {
		t.Errorf("b's placed instances: %d, %v", h.Instances, err)
	}
}

func mustID(t testing.TB, s string) int64 {
	t.Helper()
	var id int64
	if _, err := fmt.Sscan(s, &id); err != nil {
		t.Fatal(err)
	}
	return id
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
