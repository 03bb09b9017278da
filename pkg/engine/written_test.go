package engine_test

import (
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
)

// Written measures the disk an actor's own instances wrote, and nobody
// else's.
func TestWrittenIsTheActorsOwn(t *testing.T) {
	w := newWorld(t, 4)
	e := engine.New(w.options())
	svc := e.Services()
	ada := engine.Actor{Owner: "ada@example.com"}
	bob := engine.Actor{Owner: "bob@example.com"}
	upload := engine.Actor{Owner: engine.UploadOwner, Upload: true}
	inst, err := svc.Instances.Create(ctx, ada, engine.NewInstance{ImageID: childImage, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Instances.Destroy(ctx, upload, inst.ID) })
	for _, c := range []struct {
		who  engine.Actor
		want int
	}{{ada, 1}, {bob, 0}, {upload, 1}, {engine.Actor{}, 0}} {
		written, err := svc.Instances.Written(ctx, c.who)
		if err != nil || len(written) != c.want {
			t.Fatalf("%+v: written %v (%v), want %d instance(s)", c.who, written, err, c.want)
		}
		if c.want == 1 && written[inst.ID] <= 0 {
			t.Fatalf("%+v: instance %d wrote %d bytes; a running Postgres writes some", c.who, inst.ID, written[inst.ID])
		}
	}
}
