package api

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/jsonapi"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
	"github.com/sindri-db/sindri/pkg/version"
)

// seedInstances adds instances to st until it holds n, of every shape a
// listing shows: each status, protected or not, an expiry or none, an
// error or none, credentials sealed as sindrid seals them (a P-256 key's
// PEM is about 240 bytes).
func seedInstances(tb testing.TB, st *store.Store, imageID int64, n int) {
	tb.Helper()
	ctx := context.Background()
	have, err := st.ListInstanceSummaries(ctx, "")
	if err != nil {
		tb.Fatal(err)
	}
	statuses := []store.InstanceStatus{store.InstanceRunning, store.InstanceRunning, store.InstanceRunning,
		store.InstanceStopped, store.InstanceFailed, store.InstanceCreating, store.InstanceResetting, store.InstanceDestroying}
	for i := len(have); i < n; i++ {
		in := store.InstanceInput{ImageID: imageID, Owner: "upload", Protected: i%5 == 0}
		if i%7 == 0 {
			in.Owner = []string{"ada@example.com", "bob@example.com"}[i%2]
		}
		if i%2 == 0 {
			exp := time.Date(2026, 12, 1, 10, 0, i%60, 0, time.UTC)
			in.ExpiresAt = &exp
		}
		inst, err := st.CreateInstance(ctx, in)
		if err != nil {
			tb.Fatal(err)
		}
		key := "-----BEGIN EC PRIVATE KEY-----\n" + strings.Repeat("k", 200) + "\n-----END EC PRIVATE KEY-----\n"
		if err := st.SetInstanceCredentials(ctx, inst.ID, store.Credentials{Username: "sindri",
			Password:      fmt.Sprintf("Yl8sT3kq%08dwQ-b64+/pAdDeD=", i),
			CACertificate: "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n", ServerCertificate: "sc", ServerKey: key,
			ClientCertificate: "cc", ClientKey: key}); err != nil {
			tb.Fatal(err)
		}
		if _, err := st.AllocatePort(ctx, inst.ID, 20000, 30000, func(int) bool { return true }); err != nil {
			tb.Fatal(err)
		}
		errText := ""
		status := statuses[i%len(statuses)]
		if status == store.InstanceFailed {
			errText = "postgres crashed 5 times; last log lines:\nFATAL: \"x\"\t<y> é"
		}
		if err := st.SetInstanceStatus(ctx, inst.ID, status, errText); err != nil {
			tb.Fatal(err)
		}
	}
}

// newStoreServer serves the real routes over the real engine's services
// on st (no storage and no postmaster: what a listing reads is the
// store), authenticating the tokens of testPrincipals.
func newStoreServer(st *store.Store) http.Handler {
	svc := engine.New(engine.Options{Store: st, Logger: discardLogger()}).Services()
	s := NewServer(Options{Logger: discardLogger(), Authenticate: func(r *http.Request) (any, error) {
		p, ok := testPrincipals[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		if !ok {
			return nil, ErrUnauthorized
		}
		return p, nil
	}})
	(&Handlers{Images: svc.Images, Instances: svc.Instances, Backups: svc.Backups, Status: svc.Status,
		PublicHostname: "db.example.com", Version: "9.9.9"}).Register(s)
	return s.Handler()
}

// BenchmarkInstancesOverTheStore serves GET /instances to the upload
// user, and GET /instances/{id}, with 100, 500 and 1,000 instances in a
// real metadata store, through the real router, engine and store: the
// server's cost of a listing as the access log times it, less the
// network. Besides the mean (ns/op) it reports the median and the 99th
// percentile of the requests it timed.
func BenchmarkInstancesOverTheStore(b *testing.B) {
	st, _ := storetest.New(b)
	ctx := context.Background()
	img, err := st.CreateImage(ctx, store.ImageInput{Name: "prod", BackedUpAt: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	if err := st.MarkImageReady(ctx, img.ID, "15", 1<<30, false); err != nil {
		b.Fatal(err)
	}
	h := newStoreServer(st)
	for _, n := range []int{100, 500, 1000} {
		seedInstances(b, st, img.ID, n)
		b.Run(fmt.Sprintf("list/%d", n), func(b *testing.B) {
			timeRequests(b, h, as("secret", http.MethodGet, "/instances", ""))
		})
		b.Run(fmt.Sprintf("get/%d", n), func(b *testing.B) {
			timeRequests(b, h, as("secret", http.MethodGet, fmt.Sprintf("/instances/%d", n/2), ""))
		})
	}
}

// discardWriter is a ResponseWriter that keeps nothing of the body: what a
// server does with it, sending it, is not the handler's cost (an
// httptest.ResponseRecorder's growing buffer would be counted instead).
type discardWriter struct {
	header  http.Header
	status  int
	written int
}

func (w *discardWriter) Header() http.Header { return w.header }

func (w *discardWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.written += len(p)
	return len(p), nil
}

// timeRequests serves q through h b.N times and reports the median and
// the 99th percentile in milliseconds, and the CPU time this process
// spent per request (the metadata Postgres's not counted): on a shared
// machine the wall times follow the other loads, the CPU time less so.
func timeRequests(b *testing.B, h http.Handler, q req) {
	var took []time.Duration
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	r := httptest.NewRequest(q.method, q.path, nil)
	r.Header.Set(VersionHeader, version.API)
	for k, v := range q.header {
		r.Header.Set(k, v)
	}
	cpuBefore := cpu()
	for b.Loop() {
		w := &discardWriter{header: http.Header{}}
		start := time.Now()
		h.ServeHTTP(w, r)
		took = append(took, time.Since(start))
		if w.status != http.StatusOK || w.written == 0 {
			b.Fatalf("%s %s: %d, %d bytes", q.method, q.path, w.status, w.written)
		}
	}
	b.ReportMetric(float64(cpu()-cpuBefore)/1e6/float64(len(took)), "cpu-ms/op")
	slices.Sort(took)
	ms := func(q float64) float64 { return float64(took[int(q*float64(len(took)-1))]) / 1e6 }
	b.ReportMetric(ms(0.5), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}

// oldInstanceList is GET /instances as it was rendered before listings
// kept their rendered instances: every instance the store holds for owner
// ("": all), read afresh, through google/jsonapi.
func oldInstanceList(t *testing.T, st *store.Store, owner string) string {
	t.Helper()
	insts, err := st.ListInstances(context.Background(), owner)
	if err != nil {
		t.Fatal(err)
	}
	h := &Handlers{PublicHostname: "db.example.com"}
	list := []*resource.Instance{}
	for _, inst := range insts {
		list = append(list, h.instanceResource(inst, false))
	}
	var buf bytes.Buffer
	if err := jsonapi.MarshalPayload(&buf, list); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// GET /instances answers, in both wire formats, the very bytes it
// answered before it kept rendered instances, for the upload user and for
// two owners, over instances of every shape (each status, protected or
// not, an expiry or none, an error with characters to escape), and again
// after each kind of change, each asked twice (the second from what the
// first kept).
func TestInstanceListOverTheStoreIsAsBefore(t *testing.T) {
	st, _ := storetest.New(t)
	ctx := context.Background()
	img, err := st.CreateImage(ctx, store.ImageInput{Name: "prod", BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	seedInstances(t, st, img.ID, 40)
	h := newStoreServer(st)
	formats := map[string]map[string]string{
		"application/vnd.api+json": nil,
		"application/json":         {VersionHeader: "5.3.6"},
	}
	compare := func(step string) {
		t.Helper()
		for token, owner := range map[string]string{"secret": "", "ada": "ada@example.com", "bob": "bob@example.com"} {
			want := oldInstanceList(t, st, owner)
			for mediaType, header := range formats {
				for range 2 {
					q := as(token, http.MethodGet, "/instances", "")
					for k, v := range header {
						q.header[k] = v
					}
					w := do(h, q)
					if w.Code != http.StatusOK || w.Header().Get("Content-Type") != mediaType {
						t.Fatalf("%s: %s as %s: %d %s", step, token, mediaType, w.Code, w.Header().Get("Content-Type"))
					}
					if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(w.Body.Len()) {
						t.Fatalf("%s: Content-Length %s of a body of %d bytes", step, cl, w.Body.Len())
					}
					if got := w.Body.String(); got != want {
						t.Fatalf("%s: %s as %s:\n got %.800s\nwant %.800s", step, token, mediaType, got, want)
					}
				}
			}
		}
	}
	compare("seeded")

	insts, err := st.ListInstances(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	ada := insts[0] // the first is ada's (seedInstances)
	if ada.Owner != "ada@example.com" {
		t.Fatalf("instance %d is %s's", ada.ID, ada.Owner)
	}
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	check(st.SetInstanceStatus(ctx, ada.ID, store.InstanceFailed, "it \"died\" <here>\n"))
	compare("failed")
	check(st.SetInstanceStatus(ctx, insts[1].ID, store.InstanceDestroying, ""))
	compare("destroying")
	exp := time.Date(2031, 2, 3, 4, 5, 6, 789, time.FixedZone("x", -7200))
	yes, no := true, false
	check(st.SetInstanceExpiry(ctx, insts[2].ID, &exp, &yes))
	compare("an expiry, protected")
	check(st.SetInstanceExpiry(ctx, insts[2].ID, &time.Time{}, &no))
	compare("no expiry, unprotected")
	check(st.SetInstanceCredentials(ctx, insts[3].ID, store.Credentials{Username: "sindri", Password: "new/pass+word=&"}))
	compare("new password")
	check(st.DeleteInstance(ctx, insts[4].ID))
	compare("deleted")
	seedInstances(t, st, img.ID, 45)
	compare("five more")
}
