package api

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/jsonapi"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// someInstances are n instances as a listing shows them, with every kind
// of value: an error or none, an expiry or none; odd characters in the
// passwords when odd (real ones are base64).
func someInstances(n int, odd bool) []*resource.Instance {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 11, 30, 8, 0, 0, 0, time.FixedZone("x", 3600))
	out := make([]*resource.Instance, n)
	for i := range out {
		inst := &resource.Instance{
			ID: int64(i + 1), Hostname: "sindri.example.com", ImageID: int64(r.IntN(5) + 1), Port: 15432 + i,
			Status: []string{"running", "creating", "stopped", "failed"}[r.IntN(4)], Username: "sindri",
			Password:  fmt.Sprintf("Yl8sT3kq-%x_wQ", r.Int()),
			Protected: r.IntN(2) == 0,
			CreatedAt: base.Add(time.Duration(r.IntN(1e6)) * time.Millisecond), UpdatedAt: base.Add(time.Duration(r.IntN(1e9))),
		}
		if i%3 == 1 { // in a fleet
			inst.Host = "sindri-b"
		}
		if odd {
			inst.Password += "-<&>\"\\\u2028é\x01"
		}
		inst.DatabaseURL = fmt.Sprintf("postgres://sindri:%s@%s:%d/postgres?sslmode=require", inst.Password, inst.Hostname, inst.Port)
		if r.IntN(3) == 0 {
			inst.Error = "postgres crashed 5 times; last log lines:\nFATAL: \"x\"\t<y>"
		}
		if r.IntN(2) == 0 {
			e := base.Add(time.Duration(r.IntN(1e9)) * time.Microsecond)
			inst.ExpiresAt = &e
		}
		if r.IntN(10) == 0 {
			inst.CreatedAt, inst.UpdatedAt = time.Time{}, time.Time{}
		}
		out[i] = inst
	}
	return out
}

// The list of GET /instances renders to the very bytes that google/jsonapi
// renders, for no instance, one, and many of every shape.
func TestInstanceListRendersAsJSONAPI(t *testing.T) {
	for _, n := range []int{0, 1, 200} {
		list := someInstances(n, true)
		var want bytes.Buffer
		if err := jsonapi.MarshalPayload(&want, list); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		if err := writeInstanceList(rec, 200, list); err != nil {
			t.Fatal(err)
		}
		if got := rec.Body.String(); got != want.String() {
			t.Fatalf("%d instances:\n got %.600s\nwant %.600s", n, got, want.String())
		}
		if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(rec.Body.Len()) {
			t.Errorf("Content-Length %s of a body of %d bytes", cl, rec.Body.Len())
		}
		if rec.Header().Get("Content-Type") != "application/vnd.api+json" {
			t.Errorf("Content-Type %q", rec.Header().Get("Content-Type"))
		}
	}
}

// BenchmarkInstanceList renders a thousand instances: jsonapi's way and
// writeInstanceList's.
func BenchmarkInstanceList(b *testing.B) {
	list := someInstances(1000, false)
	b.Run("jsonapi", func(b *testing.B) {
		for b.Loop() {
			WriteResources(httptest.NewRecorder(), 200, list)
		}
	})
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			writeInstanceList(httptest.NewRecorder(), 200, list)
		}
	})
}

// What listings keep rendered is bounded by the instances there are: a
// listing forgets the instances of its scope it no longer shows (an
// owner's, or all for the upload user), and a destroy its instance.
func TestRenderedInstancesForgetWhatIsGone(t *testing.T) {
	h := &Handlers{PublicHostname: "db.example.com"}
	inst := func(id int64, owner string) store.Instance {
		return store.Instance{ID: id, Owner: owner, Status: store.InstanceRunning, Credentials: store.Credentials{Username: "sindri", Password: "pw"}}
	}
	ada, bob := engine.Actor{Owner: "ada@example.com"}, engine.Actor{Owner: "bob@example.com"}
	upload := engine.Actor{Upload: true}
	c := &h.renderedInstances
	held := func(want ...int64) {
		t.Helper()
		var got []int64
		for id := range c.entries {
			got = append(got, id)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("holds %v, want %v", got, want)
		}
	}
	c.render(h, upload, []store.Instance{inst(1, ada.Owner), inst(2, bob.Owner), inst(3, bob.Owner), inst(4, ada.Owner)})
	held(1, 2, 3, 4)
	c.render(h, ada, []store.Instance{inst(1, ada.Owner)})
	held(1, 2, 3)
	c.render(h, bob, []store.Instance{inst(3, bob.Owner)})
	held(1, 3)
	c.forget(3)
	held(1)
	c.render(h, upload, []store.Instance{inst(5, bob.Owner)})
	held(5)
}
