package engine_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// A branch of a running instance holds what was written into it, is
// cloned like any image, and is its owner's: another user neither sees
// it nor clones it. The instance runs on, untouched.
func TestBranchOfAnInstance(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	svc := e.Services()
	ada := engine.Actor{Owner: "ada@example.com"}
	bob := engine.Actor{Owner: "bob@example.com"}
	upload := engine.Actor{Owner: engine.UploadOwner, Upload: true}
	inst, err := svc.Instances.Create(ctx, ada, engine.NewInstance{ImageID: 1})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, w.superuserConn(inst), "create table notes (id int primary key, body text); grant all on notes to public")
	pgtest.Exec(t, passwordConn(inst), "insert into notes values (1, 'written before the branch')")

	if _, err := svc.Images.Create(ctx, bob, engine.ImageRequest{InstanceID: inst.ID}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("bob branches ada's instance: %v, want not found", err)
	}
	if _, err := svc.Images.Create(ctx, ada, engine.ImageRequest{InstanceID: inst.ID, AnonymisationScript: "select 1"}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("a branch with a script: %v, want invalid", err)
	}
	img, err := svc.Images.Create(ctx, ada, engine.ImageRequest{InstanceID: inst.ID, Name: "before-migration"})
	if err != nil {
		t.Fatal(err)
	}
	if img.Owner != "ada@example.com" || img.FromInstanceID != inst.ID || !img.UserWritten {
		t.Fatalf("branch %+v", img)
	}
	// Written after the branch was taken: not in it.
	pgtest.Exec(t, passwordConn(inst), "insert into notes values (2, 'written after the branch')")
	ready, err := svc.Images.Finalise(ctx, ada, img.ID)
	if err != nil || ready.Status != store.ImageReady {
		t.Fatalf("finalising the branch: %+v, %v", ready, err)
	}
	if _, err := w.storage.Get(ctx, engine.BranchVolume(img.ID)); err == nil {
		t.Error("the branch's snapshot of the instance is still there once it is ready")
	}
	// The instance ran on and kept both rows.
	if n := mustSQL(t, passwordConn(inst), "select count(*)::text from notes"); n != "2" {
		t.Fatalf("rows in the instance after the branch: %s", n)
	}

	clone, err := svc.Instances.Create(ctx, ada, engine.NewInstance{ImageID: img.ID})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustSQL(t, passwordConn(clone), "select string_agg(body, ',' order by id) from notes"); got != "written before the branch" {
		t.Fatalf("the clone of the branch holds %q", got)
	}

	// Bob sees neither the branch nor a way to it; the upload user sees it.
	for who, a := range map[string]engine.Actor{"bob": bob, "upload": upload, "ada": ada} {
		list, err := svc.Images.List(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		listed := false
		for _, i := range list {
			listed = listed || i.ID == img.ID
		}
		_, getErr := svc.Images.Get(ctx, a, img.ID)
		if want := who != "bob"; listed != want || (getErr == nil) != want {
			t.Errorf("%s: listed %v, get %v; want seen %v", who, listed, getErr, want)
		}
	}
	if _, err := svc.Instances.Create(ctx, bob, engine.NewInstance{ImageID: img.ID}); !errors.Is(err, engine.ErrNotFound) || !strings.Contains(err.Error(), "no image") {
		t.Fatalf("bob clones ada's branch: %v, want not found", err)
	}
	if err := svc.Images.Destroy(ctx, bob, img.ID, false); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("bob destroys ada's branch: %v, want not found", err)
	}
	if _, err := svc.Images.Upload(ctx, ada, img.ID, strings.NewReader("x"), 1); !errors.Is(err, engine.ErrForbidden) {
		t.Fatalf("ada uploads into her branch: %v, want forbidden", err)
	}
	// Ada may not destroy her branch with its clones (force is the upload
	// user's), and the clone runs on.
	if err := svc.Images.Destroy(ctx, ada, img.ID, true); !errors.Is(err, engine.ErrForbidden) {
		t.Fatalf("ada destroys her branch with force: %v, want forbidden", err)
	}
	if _, err := svc.Instances.Get(ctx, ada, clone.ID); err != nil {
		t.Fatalf("the clone after a refused forced destroy of its branch: %v", err)
	}
	// Ada destroys her branch once its clone is gone.
	if err := svc.Instances.Destroy(ctx, ada, clone.ID); err != nil {
		t.Fatal(err)
	}
	if err := svc.Images.Destroy(ctx, ada, img.ID, false); err != nil {
		t.Fatalf("ada destroys her branch: %v", err)
	}
	if _, err := w.store.GetImage(ctx, img.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the branch after its destroy: %v", err)
	}
}

// On ZFS a branch's snapshot pins its instance's volume until the branch
// is copied: a reset meanwhile is refused before it touches the instance
// (it would stop it, fail to destroy the volume and leave it failed), and
// goes through once the branch is ready.
func TestResetWaitsForABranchOnZFS(t *testing.T) {
	w := newWorldZFS(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, w.superuserConn(inst), "create table notes (id int); insert into notes values (1)")
	branch, err := e.CreateImage(ctx, engine.ImageRequest{InstanceID: inst.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ResetInstance(ctx, inst.ID); !errors.Is(err, engine.ErrConflict) || !strings.Contains(err.Error(), "branch") {
		t.Fatalf("reset while the branch's snapshot pins the instance: %v, want a conflict naming the branch", err)
	}
	if got, err := e.GetInstance(ctx, inst.ID); err != nil || got.Status != store.InstanceRunning {
		t.Fatalf("the instance after the refused reset: %+v, %v", got, err)
	}
	if n := mustSQL(t, w.superuserConn(inst), "select count(*)::text from notes"); n != "1" {
		t.Fatalf("notes in the instance after the refused reset: %s", n)
	}
	if ready, err := e.FinaliseImage(ctx, branch.ID); err != nil || ready.Status != store.ImageReady {
		t.Fatalf("finalising the branch: %+v, %v", ready, err)
	}
	if got, err := e.ResetInstance(ctx, inst.ID); err != nil || got.Status != store.InstanceRunning {
		t.Fatalf("reset once the branch is ready: %+v, %v", got, err)
	}
}
