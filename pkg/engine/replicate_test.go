package engine_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/fleet"
	"github.com/sindri-db/sindri/pkg/metrics"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/storage/zfs"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/testfs"
	"github.com/sindri-db/sindri/pkg/version"
)

const (
	testFleetSecret  = "a-fleet-secret-of-at-least-32-characters-0001"
	testSharedSecret = "the-upload-users-shared-secret-0123456789"
)

// fleetHost is one host of a two-host fleet on one metadata database:
// its own store connection (naming the host), filesystem, engine and API
// server on a loopback address.
type fleetHost struct {
	name    string
	store   *store.Store
	storage storage.Driver
	engine  *engine.Engine
	auth    *fleet.PeerAuth
	srv     *httptest.Server
	repl    *engine.Replicator
	// metrics is what its sindrid's /metrics serves; its replicator
	// reports to it.
	metrics *metrics.Metrics
}

// newFleet makes host a on the world (a loopback BTRFS holding image 1,
// made before the fleet and adopted as a's when it joins) and host b on
// a second loopback BTRFS, or a zfs-fuse pool with bOnZFS, both
// registered with a heartbeat and serving the API.
func newFleet(t testing.TB, bOnZFS bool) (*world, *fleetHost, *fleetHost) {
	return newFleetSized(t, bOnZFS, 2<<30)
}

// newFleetSized is newFleet on filesystems of size bytes.
func newFleetSized(t testing.TB, bOnZFS bool, size int64) (*world, *fleetHost, *fleetHost) {
	t.Helper()
	w := newWorldBtrfs(t, 4, size)
	a := &fleetHost{name: "a", store: w.store, storage: w.storage}
	a.store.SetFleetHost("a")
	optsA := w.options()
	optsA.DownTimeout = time.Minute
	a.engine = engine.New(optsA)

	b := &fleetHost{name: "b"}
	var rootB string
	var err error
	if bOnZFS {
		b.storage, err = zfs.New(testfs.ZFSPool(t, size) + "/sindri")
		rootB = t.TempDir()
	} else {
		rootB = filepath.Join(testfs.Btrfs(t, size), "sindri")
		b.storage, err = btrfs.New(rootB)
	}
	if err != nil {
		t.Fatal(err)
	}
	openToPostgres(t, b.storage)
	b.store, err = store.Open(ctx, w.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.store.Close)
	if _, err := b.store.LoadKeyring(ctx, w.store.Keyring().Path(), false); err != nil {
		t.Fatal(err)
	}
	b.store.SetFleetHost("b")
	runDir, err := os.MkdirTemp("", "sr")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(runDir, 0o711)
	t.Cleanup(func() { os.RemoveAll(runDir) })
	opts := w.options()
	opts.Store, opts.Storage, opts.RunDir = b.store, b.storage, runDir
	opts.UploadsDir, opts.BackupsDir = filepath.Join(rootB, "image_uploads"), filepath.Join(rootB, "backups")
	opts.MinPort = pgtest.FreePort(t)
	opts.MaxPort = opts.MinPort + 4
	opts.DownTimeout = time.Minute
	b.engine = engine.New(opts)
	t.Cleanup(func() { stopPostmastersOn(b.storage) })

	for _, h := range []*fleetHost{a, b} {
		h.auth = fleet.NewPeerAuth(h.name, []byte(testFleetSecret))
		h.srv = serveHost(t, h)
		h.beat(t)
		if h == a {
			// The first host to join adopts what was made before the
			// fleet; one that joins later adopts nothing.
			if _, _, err := a.store.AdoptSingleHostRecords(ctx, "a"); err != nil {
				t.Fatal(err)
			}
		}
		eng := h.engine
		h.metrics = metrics.New(func(ctx context.Context) (engine.Status, error) { return eng.Status(ctx) })
		h.repl = h.engine.NewReplicator(engine.ReplicationOptions{Host: h.name, Peers: fleet.NewClient(h.auth, nil),
			DownTimeout: time.Minute, RetryMin: 50 * time.Millisecond, Observer: h.metrics})
	}
	return w, a, b
}

// openToPostgres lets the postgres user reach the data directories below
// the test's temporary directory.
func openToPostgres(t testing.TB, d storage.Driver) {
	t.Helper()
	probe, err := d.Create(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	for dir := filepath.Dir(probe.Path); dir != os.TempDir() && dir != "/"; dir = filepath.Dir(dir) {
		os.Chmod(dir, 0o755)
	}
	if err := d.Destroy(ctx, "probe"); err != nil {
		t.Fatal(err)
	}
}

func stopPostmastersOn(d storage.Driver) {
	entries, _ := d.List(ctx)
	for _, e := range entries {
		if e.Kind == storage.KindVolume {
			postgres.Stop(ctx, e.Path, 5*time.Second)
		}
	}
}

// serveHost serves host h's API as sindrid does in a fleet, with the
// real authenticator (the upload user's shared secret) on its routes and
// the peer proof on /fleet/.
func serveHost(t testing.TB, h *fleetHost) *httptest.Server {
	t.Helper()
	authn, err := auth.New(auth.Options{SharedSecret: testSharedSecret, Store: h.store, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s := api.NewServer(api.Options{Logger: quietLogger(), Authenticate: api.Authenticate(authn)})
	svc := h.engine.Services()
	st := h.store
	routing := &api.Fleet{
		Self: h.name, Auth: h.auth, Placed: svc.Instances, Logger: quietLogger(),
		Hosts:      func(ctx context.Context) ([]store.Host, error) { return st.ListHosts(ctx, time.Minute) },
		ImageHosts: st.ImageReadyHosts,
	}
	(&api.Handlers{
		Images: svc.Images, Instances: svc.Instances, Backups: svc.Backups, Status: svc.Status,
		Hosts: engine.NewHostService(h.store, time.Minute), Fleet: routing, ImageSender: h.engine,
		PublicHostname: "localhost", Version: "test",
	}).Register(s)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

// beat records a heartbeat of h: it is alive for a minute.
func (h *fleetHost) beat(t testing.TB) {
	t.Helper()
	if _, err := h.store.RecordHeartbeat(ctx, store.Heartbeat{Name: h.name, PeerURL: h.srv.URL, PublicHostname: "localhost",
		StorageDriver: h.storage.Name(), TotalBytes: 2 << 30, FreeBytes: 1 << 30}, time.Minute); err != nil {
		t.Fatal(err)
	}
}

// metric reads series (a name with its labels, as /metrics writes it)
// from h's /metrics.
func (h *fleetHost) metric(t testing.TB, series string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	h.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for line := range strings.Lines(rec.Body.String()) {
		if value, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatalf("host %s: /metrics line %q: %v", h.name, line, err)
			}
			return v
		}
	}
	t.Fatalf("host %s: /metrics has no %s", h.name, series)
	return 0
}

// replicate runs one pass of h's replicator and waits for its receives.
func (h *fleetHost) replicate(t testing.TB) {
	t.Helper()
	if err := h.repl.Pass(ctx); err != nil {
		t.Fatalf("host %s: replication pass: %v", h.name, err)
	}
	h.repl.Wait()
}

// makeRecordedImage makes image id on host h as a finalise leaves it: the
// template data directory, its volume record, frozen, marked ready (and
// so h's copy ready). fill, if set, adds to the data directory first.
func makeRecordedImage(t testing.TB, h *fleetHost, id int64, fill func(dir string)) {
	t.Helper()
	img, err := h.store.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil || img.ID != id {
		t.Fatalf("image %+v, %v; want id %d", img, err, id)
	}
	vol, err := h.storage.Create(ctx, engine.UploadVolume(id))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", pgtest.Template(t)+"/.", vol.Path).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if fill != nil {
		fill(vol.Path)
	}
	pgtest.Owner(t).Chown(vol.Path, false)
	os.Chmod(vol.Path, 0o700)
	if err := h.engine.RecordImageVolume(ctx, vol.Path, img); err != nil {
		t.Fatal(err)
	}
	if _, err := h.storage.Freeze(ctx, vol.Name, engine.ImageVolume(id)); err != nil {
		t.Fatal(err)
	}
	if err := h.store.MarkImageReady(ctx, id, "15", 1, false); err != nil {
		t.Fatal(err)
	}
}

// treeDigest is a digest of everything a data directory's copy must
// keep: each path, its type and permission bits, numeric owner, a regular
// file's content and a link's target.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	sum := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		fmt.Fprintf(sum, "%s %v %d:%d", rel, info.Mode(), st.Uid, st.Gid)
		switch {
		case info.Mode().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(sum, f); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(sum, " -> %s", target)
		}
		sum.Write([]byte{0})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(sum.Sum(nil))
}

// readyHosts reads the hosts holding a ready copy of image id.
func readyHosts(t testing.TB, st *store.Store, id int64) string {
	t.Helper()
	hosts, err := st.ImageReadyHosts(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(hosts, ",")
}

// checkCopy checks that h holds image id as a read-only image with the
// bytes of from's.
func checkCopy(t *testing.T, from, h *fleetHost, id int64) {
	t.Helper()
	src, err := from.storage.Get(ctx, engine.ImageVolume(id))
	if err != nil {
		t.Fatal(err)
	}
	dst, err := h.storage.Get(ctx, engine.ImageVolume(id))
	if err != nil || dst.Kind != storage.KindImage {
		t.Fatalf("host %s: image %d's copy %+v, %v; want a read-only image", h.name, id, dst, err)
	}
	if err := os.WriteFile(filepath.Join(dst.Path, "written"), nil, 0o600); err == nil {
		t.Errorf("host %s: root wrote into the received copy of image %d", h.name, id)
	}
	if a, b := treeDigest(t, src.Path), treeDigest(t, dst.Path); a != b {
		t.Errorf("host %s's copy of image %d differs from host %s's (digests %s and %s)", h.name, id, from.name, b, a)
	}
}

// getJSON sends a GET with the upload user's shared secret.
func getJSON(t *testing.T, url string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+testSharedSecret)
	req.Header.Set(api.VersionHeader, version.API)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// An image made on host a becomes ready on host b through b's replicator
// (btrfs send over a's peer route, btrfs receive): the same bytes,
// read-only, an instance of it runs on b, and the image lists both hosts.
func TestAnImageMadeOnOneHostBecomesReadyOnTheOther(t *testing.T) {
	_, a, b := newFleet(t, false)
	if got := readyHosts(t, a.store, 1); got != "a" {
		t.Fatalf("before replication, image 1 is ready on %q; want a", got)
	}
	a.replicate(t) // a holds it already: nothing to receive
	b.replicate(t)
	if got := readyHosts(t, a.store, 1); got != "a,b" {
		t.Fatalf("after b's pass, image 1 is ready on %q; want a,b", got)
	}
	checkCopy(t, a, b, 1)

	// b's /metrics tells the operator: one copy received, none failed,
	// at least the image's file bytes read, one duration, and the image
	// that b's pass found waiting for its copy.
	src, err := a.storage.Get(ctx, engine.ImageVolume(1))
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{
		`sindri_image_replications_total{result="ok"}`:     1,
		`sindri_image_replications_total{result="failed"}`: 0,
		`sindri_image_replication_seconds_count`:           1,
		`sindri_images_awaiting_replication`:               1,
	} {
		if got := b.metric(t, series); got != want {
			t.Errorf("host b: %s = %v; want %v", series, got, want)
		}
	}
	if got, files := b.metric(t, "sindri_image_replication_bytes_total"), fileBytes(t, src.Path); got < float64(files) {
		t.Errorf("host b: sindri_image_replication_bytes_total = %v; want at least the image's %d bytes of files", got, files)
	}
	for _, series := range []string{`sindri_image_replications_total{result="ok"}`, "sindri_image_replication_bytes_total", "sindri_images_awaiting_replication"} {
		if got := a.metric(t, series); got != 0 {
			t.Errorf("host a, which received nothing: %s = %v; want 0", series, got)
		}
	}

	for _, h := range []*fleetHost{a, b} {
		var doc struct {
			Data struct {
				Attributes struct {
					Hosts []string `json:"hosts"`
				} `json:"attributes"`
			} `json:"data"`
		}
		if code := getJSON(t, h.srv.URL+"/images/1", &doc); code != http.StatusOK || !slices.Equal(doc.Data.Attributes.Hosts, []string{"a", "b"}) {
			t.Errorf("GET /images/1 on host %s: %d, hosts %v; want 200 and [a b]", h.name, code, doc.Data.Attributes.Hosts)
		}
	}

	// Placed on b: a takes no new instance.
	if err := a.store.SetHostState(ctx, "a", store.HostDraining); err != nil {
		t.Fatal(err)
	}
	inst, err := b.engine.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
	if err != nil {
		t.Fatalf("an instance of b's copy: %v", err)
	}
	if got := mustSQL(t, passwordConn(inst), "select (count(*) > 0)::text from pg_class where relname = 'pg_database'"); got != "true" {
		t.Errorf("the instance cloned from b's copy answers %q", got)
	}
	if _, err := b.storage.Get(ctx, engine.InstanceVolume(inst.ID)); err != nil {
		t.Errorf("the instance's volume is not on b: %v", err)
	}

	// Nothing more to do: a second pass receives nothing again.
	b.replicate(t)
	copies, err := a.store.ListImageCopies(ctx)
	if err != nil || len(copies) != 2 || copies[1].Host != "b" || copies[1].Status != store.CopyReady {
		t.Errorf("copies after another pass: %+v, %v", copies, err)
	}
	if got := b.metric(t, `sindri_image_replications_total{result="ok"}`); got != 1 {
		t.Errorf("host b after a pass with nothing to receive: %v copies received; want still 1", got)
	}
	if got := b.metric(t, "sindri_images_awaiting_replication"); got != 0 {
		t.Errorf("host b holds every image, yet %v await their copy", got)
	}
}

// fileBytes is the sum of the sizes of the regular files below dir.
func fileBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		n += info.Size()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The peer route answers a host of the fleet alone: without a proof, with
// the upload user's valid shared secret, with a proof under another
// secret, for another request or of a forged host name, it is 403
// not_a_peer; with a proof, the stream, and the announced size after it.
func TestPeerRoutesAnswerOnlyPeers(t *testing.T) {
	_, a, b := newFleet(t, false)
	url := a.srv.URL + fleet.ImageStreamPath(1, storage.StreamBtrfs)
	do := func(t *testing.T, req *http.Request) (*http.Response, string) {
		t.Helper()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}
	get := func(target string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, target, nil)
		return req
	}
	if code := getJSON(t, a.srv.URL+"/images/1", nil); code != http.StatusOK {
		t.Fatalf("the shared secret on GET /images/1: %d; want 200 (a valid user credential)", code)
	}
	refused := map[string]*http.Request{}
	refused["no proof"] = get(url)
	req := get(url)
	req.Header.Set("Authorization", "Bearer "+testSharedSecret)
	req.Header.Set(api.VersionHeader, version.API)
	refused["the upload user's shared secret"] = req
	req = get(url)
	fleet.NewPeerAuth("b", []byte("another-secret-of-at-least-32-characters-000")).Sign(req)
	refused["a proof under another secret"] = req
	req, other := get(url), get(a.srv.URL+fleet.ImageStreamPath(1, storage.StreamTarZstd))
	b.auth.Sign(other)
	req.Header.Set(fleet.PeerHeader, other.Header.Get(fleet.PeerHeader))
	refused["a proof of another request"] = req
	req = get(url)
	b.auth.Sign(req)
	req.Header.Set(fleet.PeerHeader, "c"+strings.TrimPrefix(req.Header.Get(fleet.PeerHeader), "b"))
	refused["a proof with a forged host name"] = req
	req = get(url)
	req.Header.Set(fleet.PeerHeader, testFleetSecret)
	refused["the fleet secret itself"] = req
	for name, req := range refused {
		resp, body := do(t, req)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, `"not_a_peer"`) {
			t.Errorf("%s: %s %s; want 403 not_a_peer", name, resp.Status, body)
		}
		if strings.HasPrefix(body, "btrfs-stream") {
			t.Errorf("%s: the stream was sent", name)
		}
	}

	req = get(url)
	b.auth.Sign(req)
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusOK || storage.StreamFormatOf([]byte(body)) != storage.StreamBtrfs ||
		resp.Header.Get(fleet.StreamFormatHeader) != storage.StreamBtrfs {
		t.Fatalf("a peer's request: %s, format %q; want 200 and a btrfs stream", resp.Status, storage.StreamFormatOf([]byte(body)))
	}
	sum := fleet.NewStreamCRC()
	sum.Write([]byte(body))
	if resp.Trailer.Get(fleet.StreamBytesTrailer) != fmt.Sprint(len(body)) || resp.Trailer.Get(fleet.StreamCRC32CTrailer) != fleet.StreamCRCText(sum) {
		t.Errorf("trailers %v for %d bytes", resp.Trailer, len(body))
	}
	for target, want := range map[string]int{
		a.srv.URL + fleet.ImageStreamPath(99, storage.StreamBtrfs): http.StatusNotFound,
		a.srv.URL + fleet.ImageStreamPath(1, "cpio"):               http.StatusBadRequest,
		a.srv.URL + fleet.ImageStreamPath(1, storage.StreamZFS):    http.StatusBadRequest,
	} {
		req := get(target)
		b.auth.Sign(req)
		if resp, body := do(t, req); resp.StatusCode != want {
			t.Errorf("a peer's GET %s: %s %s; want %d", target, resp.Status, body, want)
		}
	}
}

// Destroying an image on the host that made it removes its copy there
// at once, and from the other host at that host's next pass; the other
// images' copies stay.
func TestADestroyedImageGoesFromEveryHost(t *testing.T) {
	_, a, b := newFleet(t, false)
	makeRecordedImage(t, a, 2, nil)
	b.replicate(t) // image 1: one receive at a time
	b.replicate(t) // image 2
	if got := readyHosts(t, a.store, 2); got != "a,b" {
		t.Fatalf("image 2 ready on %q; want a,b", got)
	}
	if err := a.engine.DestroyImage(ctx, 2, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.storage.Get(ctx, engine.ImageVolume(2)); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a's copy after the destroy: %v", err)
	}
	if _, err := b.storage.Get(ctx, engine.ImageVolume(2)); err != nil {
		t.Fatalf("b's copy before b's pass: %v", err)
	}
	b.replicate(t)
	if _, err := b.storage.Get(ctx, engine.ImageVolume(2)); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("b's copy after b's pass: %v; want it gone", err)
	}
	if got := readyHosts(t, a.store, 1); got != "a,b" {
		t.Errorf("image 1 ready on %q after image 2's destroy; want a,b", got)
	}
	if _, err := b.storage.Get(ctx, engine.ImageVolume(1)); err != nil {
		t.Errorf("b's copy of image 1: %v", err)
	}
}

// cutPeers cancels the receive once after bytes of the stream.
type cutPeers struct {
	engine.PeerImages
	after  int64
	cancel context.CancelFunc
	cut    atomic.Bool
}

func (c *cutPeers) OpenImage(ctx context.Context, peerURL string, id int64, format string) (engine.ImageStream, error) {
	s, err := c.PeerImages.OpenImage(ctx, peerURL, id, format)
	if err != nil {
		return nil, err
	}
	return &cutStream{ImageStream: s, c: c}, nil
}

type cutStream struct {
	engine.ImageStream
	c    *cutPeers
	read int64
}

func (s *cutStream) Read(p []byte) (int, error) {
	n, err := s.ImageStream.Read(p)
	if s.read += int64(n); s.read >= s.c.after && !s.c.cut.Swap(true) {
		s.c.cancel()
	}
	return n, err
}

// A receive cancelled in the middle of the stream leaves no copy and is
// recorded failed; what a crash in the middle of a tar.zst receive leaves
// (its stage volume) goes at the next start's first pass, which receives
// the image whole.
func TestACutShortReceiveLeavesNothing(t *testing.T) {
	_, a, b := newFleet(t, false)
	cutCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	cutter := &cutPeers{PeerImages: fleet.NewClient(b.auth, nil), after: 1 << 20, cancel: cancel}
	repl := b.engine.NewReplicator(engine.ReplicationOptions{Host: "b", Peers: cutter, DownTimeout: time.Minute, Observer: b.metrics})
	if err := repl.Pass(cutCtx); err != nil {
		t.Fatal(err)
	}
	repl.Wait()
	if !cutter.cut.Load() {
		t.Fatal("the stream ended before it was cut")
	}
	if names := volumeNames(t, b.storage); len(names) != 0 {
		t.Errorf("b holds %v after the cut-short receive; want nothing", names)
	}
	copies, err := b.store.ListImageCopies(ctx)
	if err != nil || len(copies) != 2 || copies[1].Host != "b" || copies[1].Status != store.CopyFailed || copies[1].Error == "" {
		t.Fatalf("copies after the cut-short receive: %+v, %v; want b's failed, with the reason", copies, err)
	}
	// Counted failed, with the bytes read before the cut, and no duration.
	wantMetrics := func(when string, ok, failed float64) {
		t.Helper()
		for series, want := range map[string]float64{
			`sindri_image_replications_total{result="ok"}`:     ok,
			`sindri_image_replications_total{result="failed"}`: failed,
			`sindri_image_replication_seconds_count`:           ok,
		} {
			if got := b.metric(t, series); got != want {
				t.Errorf("host b %s: %s = %v; want %v", when, series, got, want)
			}
		}
	}
	wantMetrics("after the cut-short receive", 0, 1)
	if got := b.metric(t, "sindri_image_replication_bytes_total"); got < 1<<20 {
		t.Errorf("host b read %v bytes of the cut-short stream; want at least the 1 MiB read before the cut", got)
	}
	// Not tried again before its backoff (10 s after a first failure).
	if err := repl.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	repl.Wait()
	if names := volumeNames(t, b.storage); len(names) != 0 || readyHosts(t, a.store, 1) != "a" {
		t.Errorf("a pass within the backoff received the image again: b holds %v", names)
	}
	wantMetrics("after a pass within the backoff", 0, 1)

	// What a sindrid killed during a tar.zst receive leaves: the volume
	// it was extracting into.
	stage, err := b.storage.Create(ctx, engine.ImageVolume(1)+".receiving")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage.Path, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.replicate(t) // the next start's replicator
	if names := volumeNames(t, b.storage); !slices.Equal(names, []string{"image-1"}) {
		t.Errorf("b holds %v after the next pass; want image-1 alone", names)
	}
	if got := readyHosts(t, a.store, 1); got != "a,b" {
		t.Errorf("image 1 ready on %q; want a,b", got)
	}
	checkCopy(t, a, b, 1)
	wantMetrics("after the receive that copied the image", 1, 1)
}

// Between hosts of different drivers (BTRFS to ZFS) the image goes as
// tar.zst, and is a whole image on the ZFS host: the same tree, and an
// instance of it runs there.
func TestAnImageGoesFromBtrfsToZFSAsTarZstd(t *testing.T) {
	_, a, b := newFleet(t, true)
	b.replicate(t)
	if got := readyHosts(t, a.store, 1); got != "a,b" {
		t.Fatalf("image 1 ready on %q; want a,b", got)
	}
	checkCopy(t, a, b, 1)
	if err := a.store.SetHostState(ctx, "a", store.HostDraining); err != nil {
		t.Fatal(err)
	}
	inst, err := b.engine.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
	if err != nil {
		t.Fatalf("an instance of the ZFS copy: %v", err)
	}
	if got := mustSQL(t, passwordConn(inst), "select (6 * 7)::text"); got != "42" {
		t.Errorf("the instance on ZFS answers %q", got)
	}
}

// An image of the copy's name that no check passed (a crash between the
// receive and the mark ready leaves one, with the copy recorded
// receiving) is removed and the image received again, whole.
func TestAnUncheckedCopyLeftByACrashIsReceivedAgain(t *testing.T) {
	_, a, b := newFleet(t, false)
	v, err := b.storage.Create(ctx, "left")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Path, "PG_VERSION"), []byte("14\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.storage.Freeze(ctx, "left", engine.ImageVolume(1)); err != nil {
		t.Fatal(err)
	}
	if err := b.store.SetImageCopy(ctx, 1, "b", store.CopyReceiving, ""); err != nil {
		t.Fatal(err)
	}
	b.replicate(t) // the next start's replicator
	if got := readyHosts(t, a.store, 1); got != "a,b" {
		t.Fatalf("image 1 ready on %q; want a,b", got)
	}
	checkCopy(t, a, b, 1)
	if names := volumeNames(t, b.storage); !slices.Equal(names, []string{"image-1"}) {
		t.Errorf("b holds %v; want image-1 alone", names)
	}
}
