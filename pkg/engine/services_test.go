package engine_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// wantClass fails unless err is of class and its message says want.
func wantClass(t *testing.T, what string, err, class error, want string) {
	t.Helper()
	if !errors.Is(err, class) || !strings.Contains(fmt.Sprint(err), want) {
		t.Errorf("%s: %v, want %v saying %q", what, err, class, want)
	}
}

// The services decide what an actor sees and may do: an instance or a
// backup is its owner's (and the upload user's), another's is not found
// and stays as it is; images are everybody's to see and the upload
// user's to change; a failed finalise's text is the upload user's.
func TestServicesDecideWhatAnActorSees(t *testing.T) {
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
	if inst.Owner != ada.Owner || inst.Status != store.InstanceRunning || inst.ClientKey == "" || inst.ServerKey != "" || inst.ExpiresAt == nil {
		t.Errorf("ada's new instance: owner %q, status %s, client key %v, server key %v, expiry %v",
			inst.Owner, inst.Status, inst.ClientKey != "", inst.ServerKey != "", inst.ExpiresAt)
	}
	for _, c := range []struct {
		who  engine.Actor
		want int
	}{{ada, 1}, {bob, 0}, {upload, 1}, {engine.Actor{}, 0}} {
		list, err := svc.Instances.List(ctx, c.who)
		if err != nil || len(list) != c.want {
			t.Errorf("%+v lists %d instances (%v), want %d", c.who, len(list), err, c.want)
		}
		for _, i := range list {
			if i.ServerKey != "" {
				t.Errorf("%+v reads instance %d's server key", c.who, i.ID)
			}
		}
	}
	noInstance := fmt.Sprintf("there is no instance %d", inst.ID)
	_, err = svc.Instances.Get(ctx, bob, inst.ID)
	wantClass(t, "bob gets ada's instance", err, engine.ErrNotFound, noInstance)
	_, err = svc.Instances.Update(ctx, bob, inst.ID, nil, new(bool))
	wantClass(t, "bob updates ada's instance", err, engine.ErrNotFound, noInstance)
	_, err = svc.Instances.Reset(ctx, bob, inst.ID)
	wantClass(t, "bob resets ada's instance", err, engine.ErrNotFound, noInstance)
	wantClass(t, "bob destroys ada's instance", svc.Instances.Destroy(ctx, bob, inst.ID), engine.ErrNotFound, noInstance)
	_, err = svc.Backups.Create(ctx, bob, engine.BackupSource{InstanceID: inst.ID})
	wantClass(t, "bob backs up ada's instance", err, engine.ErrNotFound, noInstance)
	if got, err := svc.Instances.Get(ctx, upload, inst.ID); err != nil || got.Status != store.InstanceRunning {
		t.Errorf("after bob's tries, ada's instance is %s (%v)", got.Status, err)
	}
	_, err = svc.Instances.Create(ctx, ada, engine.NewInstance{ImageID: 999})
	wantClass(t, "an instance of no image", err, engine.ErrNotFound, "there is no image 999")
	_, err = svc.Instances.Create(ctx, ada, engine.NewInstance{ImageID: childImage, TTL: -time.Hour})
	wantClass(t, "a negative ttl", err, engine.ErrInvalid, "negative")

	// Images: everybody sees them, only the upload user changes them.
	if list, err := svc.Images.List(ctx, bob); err != nil || len(list) != 1 {
		t.Errorf("bob lists %d images (%v)", len(list), err)
	}
	_, err = svc.Images.Create(ctx, ada, engine.ImageRequest{BackedUpAt: time.Now()})
	wantClass(t, "ada creates an image", err, engine.ErrForbidden, "only the upload user")
	wantClass(t, "ada destroys an image", svc.Images.Destroy(ctx, ada, childImage, true), engine.ErrForbidden, "only the upload user")
	_, err = svc.Images.Upload(ctx, ada, childImage, strings.NewReader("x"), 1)
	wantClass(t, "ada uploads", err, engine.ErrForbidden, "only the upload user")
	_, err = svc.Images.Finalise(ctx, ada, 999)
	wantClass(t, "ada finalises no image", err, engine.ErrNotFound, "there is no image 999")
	_, err = svc.Backups.Create(ctx, ada, engine.BackupSource{ImageID: childImage})
	wantClass(t, "ada backs up an image", err, engine.ErrForbidden, "back up an instance of yours instead")
	_, err = svc.Images.Create(ctx, upload, engine.ImageRequest{})
	wantClass(t, "an image without backed_up_at", err, engine.ErrInvalid, "backed_up_at is required")
	if img, err := svc.Images.Get(ctx, bob, childImage); err != nil || img.Status != store.ImageReady {
		t.Errorf("after ada's tries the image is %s (%v)", img.Status, err)
	}

	scriptErr := "the anonymisation script failed: Key (email)=(ada@real-customer.example) already exists."
	failed, err := w.store.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.store.SetImageStatus(ctx, failed.ID, store.ImageFailed, scriptErr); err != nil {
		t.Fatal(err)
	}
	if img, _ := svc.Images.Get(ctx, upload, failed.ID); img.Error != scriptErr {
		t.Errorf("the upload user reads %q", img.Error)
	}
	if img, _ := svc.Images.Get(ctx, bob, failed.ID); img.Error != engine.HiddenFinaliseError || img.Status != store.ImageFailed {
		t.Errorf("bob reads %s %q", img.Status, img.Error)
	}
	list, _ := svc.Images.List(ctx, ada)
	for _, img := range list {
		if strings.Contains(img.Error, "real-customer") {
			t.Errorf("ada's list shows image %d's %q", img.ID, img.Error)
		}
	}

	// Backups: ada's is ada's.
	b, err := svc.Backups.Create(ctx, ada, engine.BackupSource{InstanceID: inst.ID})
	if err != nil {
		t.Fatal(err)
	}
	if waitBackup(t, e, b.ID).Status != store.BackupDone {
		t.Fatalf("backup %d not done", b.ID)
	}
	noBackup := fmt.Sprintf("there is no backup %d", b.ID)
	if list, err := svc.Backups.List(ctx, bob); err != nil || len(list) != 0 {
		t.Errorf("bob lists %d backups (%v)", len(list), err)
	}
	_, _, err = svc.Backups.Open(ctx, bob, b.ID)
	wantClass(t, "bob opens ada's backup", err, engine.ErrNotFound, noBackup)
	wantClass(t, "bob deletes ada's backup", svc.Backups.Delete(ctx, bob, b.ID), engine.ErrNotFound, noBackup)
	f, got, err := svc.Backups.Open(ctx, ada, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, f)
	f.Close()
	if err != nil || n != got.SizeBytes || n == 0 {
		t.Errorf("ada reads %d bytes of backup %d (%v), its size is %d", n, b.ID, err, got.SizeBytes)
	}
	if err := svc.Backups.Delete(ctx, ada, b.ID); err != nil {
		t.Error(err)
	}

	// Status: each per-user limit with the actor's own figure.
	for _, c := range []struct {
		who   engine.Actor
		yours int64 // -1: none
	}{{ada, 1}, {bob, 0}, {upload, -1}} {
		st, err := svc.Status.Get(ctx, c.who)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range st.Limits {
			if l.Name != "instances_per_user" {
				continue
			}
			switch {
			case c.yours < 0 && (l.Yours != nil || l.ByOwner[ada.Owner] != 1):
				t.Errorf("the upload user's %s: yours %v, by owner %v", l.Name, l.Yours, l.ByOwner)
			case c.yours >= 0 && (l.Yours == nil || *l.Yours != c.yours || l.ByOwner != nil):
				t.Errorf("%s's %s: yours %v, by owner %v; want %d and no one else's", c.who.Owner, l.Name, l.Yours, l.ByOwner, c.yours)
			}
		}
	}
}

// classify gives the store's, the storage's and Postgres's errors the
// engine's classes and keeps their messages (the API's detail).
func TestClassify(t *testing.T) {
	plain := errors.New("exit status 1")
	for _, c := range []struct {
		err, class error
	}{
		{fmt.Errorf("store: create image: %w: %w", store.ErrInvalid, errors.New("SQLSTATE 22021")), engine.ErrInvalid},
		{fmt.Errorf("store: create token: %w: %w", store.ErrConflict, errors.New("SQLSTATE 23505")), engine.ErrConflict},
		{fmt.Errorf("store: delete image: %w", store.ErrInUse), engine.ErrConflict},
		{fmt.Errorf("store: get instance 3: %w", store.ErrNotFound), engine.ErrNotFound},
		{fmt.Errorf("store: get instance 3: %w: %w", store.ErrUnavailable, errors.New("SQLSTATE 57P01")), engine.ErrMetadataUnavailable},
		{storage.HasClones("image-3"), engine.ErrImageHasInstances},
		{fmt.Errorf("%w: PostgreSQL 9 (no /usr/lib/postgresql/9/bin/postgres)", postgres.ErrVersionMissing), engine.ErrPGVersionMissing},
		{fmt.Errorf("image 3: writing the upload after 10 bytes: %w", &os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}), engine.ErrDiskFull},
		{fmt.Errorf("%w: the disk filled: %w", engine.ErrFinaliseFailed, syscall.ENOSPC), engine.ErrFinaliseFailed},
	} {
		got := engine.Classify(c.err)
		if !errors.Is(got, c.class) || got.Error() != c.err.Error() || !errors.Is(got, c.err) {
			t.Errorf("%v: classified %v (of %v), want %v with the same message and cause", c.err, got, c.class, c.class)
		}
	}
	if got := engine.Classify(plain); got != plain {
		t.Errorf("an unclassified error became %v", got)
	}
	if engine.Classify(nil) != nil {
		t.Error("nil classified")
	}
}
