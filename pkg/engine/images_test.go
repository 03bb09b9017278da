package engine_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// sourceTarball is a tar.gz of a stopped data directory holding table
// people (3 rows), made the way a user makes one: tar czf.
func sourceTarball(t *testing.T) []byte {
	t.Helper()
	src := pgtest.StartInstance(t)
	pgtest.Exec(t, src.SocketURL(), "create table people (id int primary key, email text); insert into people values (1, 'a@x'), (2, 'b@x'), (3, 'c@y')")
	if err := postgres.Stop(ctx, src.DataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tar", "-C", filepath.Dir(src.DataDir), "-czf", "-", filepath.Base(src.DataDir)).Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newImage(t *testing.T, e *engine.Engine, script string, archive []byte) store.Image {
	t.Helper()
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), AnonymisationScript: script})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.UploadImage(ctx, img.ID, bytes.NewReader(archive)); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestImageFromTarballToInstance(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	img := newImage(t, e, "", sourceTarball(t))

	var wg sync.WaitGroup
	results := make([]store.Image, 2)
	errs := make([]error, 2)
	for i := range 2 { // two callers of done share one finalise
		wg.Add(1)
		go func() { defer wg.Done(); results[i], errs[i] = e.FinaliseImage(ctx, img.ID) }()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil || results[i].Status != store.ImageReady || results[i].PGVersion != "15" || results[i].SizeBytes <= 0 {
			t.Fatalf("finalise %d: %+v, %v", i, results[i], errs[i])
		}
	}
	if again, err := e.FinaliseImage(ctx, img.ID); err != nil || again.Status != store.ImageReady {
		t.Fatalf("done on a ready image: %+v, %v", again, err)
	}
	if _, err := e.UploadImage(ctx, img.ID, strings.NewReader("x")); !errors.Is(err, engine.ErrImageNotPending) {
		t.Fatalf("upload into a ready image: %v, want ErrImageNotPending", err)
	}
	frozen, _ := w.storage.Get(ctx, engine.ImageVolume(img.ID))
	// A read-only subvolume on BTRFS; on dircopy, as root, every file
	// carries the immutable flag.
	refusal := syscall.EROFS
	if onDircopy() {
		refusal = syscall.EPERM
	}
	if err := os.WriteFile(filepath.Join(frozen.Path, "PG_VERSION"), []byte("16\n"), 0o600); !errors.Is(err, refusal) {
		t.Fatalf("writing into the image: %v, want %v (%s declares %+v)", err, refusal, w.storage.Name(), w.storage.Capabilities())
	}

	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustSQL(t, certConn(t, inst), "select count(*)::text from people"); got != "3" {
		t.Fatalf("people in the clone: %s", got)
	}
	pgtest.Exec(t, passwordConn(inst), "insert into people values (4, 'd@x')")
	pgtest.Exec(t, certConn(t, inst), "create table mine (x int)")

	if err := e.DestroyImage(ctx, img.ID, false); !errors.Is(err, engine.ErrImageHasInstances) {
		t.Fatalf("destroy with an instance: %v, want ErrImageHasInstances", err)
	}
	if err := e.DestroyImage(ctx, img.ID, true); err != nil {
		t.Fatalf("forced destroy: %v", err)
	}
	if _, err := w.store.GetInstance(ctx, inst.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the instance outlived its forced image destroy: %v", err)
	}
	names := volumeNames(t, w.storage)
	for _, n := range names {
		if n != "image-1" { // the fixture image of newWorld
			t.Fatalf("volumes left after destroying the image: %v", names)
		}
	}

	// The audit log tells what was done to what, and how it ended,
	// refusals included.
	log, err := w.store.AuditLog(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range log {
		if a.TargetType == "image" && a.TargetID == img.ID || a.TargetType == "instance" && a.TargetID == inst.ID {
			got = append(got, a.Action+" "+a.Outcome)
		}
	}
	slices.Reverse(got) // AuditLog is newest first
	want := []string{"create_image ok", "finalise_image ok", "create_instance ok", "destroy_image refused", "destroy_instance ok", "destroy_image ok"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit log of image %d and instance %d:\n got %q\nwant %q", img.ID, inst.ID, got, want)
	}
}

func TestAnonymisationScript(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	archive := sourceTarball(t)

	img := newImage(t, e, "\\c postgres\ndelete from people where email like '%@y';\n", archive)
	if _, err := e.FinaliseImage(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustSQL(t, passwordConn(inst), "select string_agg(email, ',' order by id) from people"); got != "a@x,b@x" {
		t.Fatalf("after anonymisation the clone has %s", got)
	}

	bad := newImage(t, e, "delete from no_such_table;\n", archive)
	got, err := e.FinaliseImage(ctx, bad.ID)
	if !errors.Is(err, engine.ErrFinaliseFailed) || got.Status != store.ImageFailed || !strings.Contains(got.Error, `relation "no_such_table" does not exist`) {
		t.Fatalf("script with an SQL error: %+v, %v", got, err)
	}
	if entries, err := os.ReadDir(filepath.Join(w.root, "image_uploads", "3")); err != nil || len(entries) != 0 {
		t.Fatalf("the upload directory of a failed image holds %v (%v); want it empty, the upload removed", entries, err)
	}
	if !strings.Contains(got.Error, "upload the data directory again") {
		t.Errorf("the failed image's error %q does not say that a retry needs a new upload", got.Error)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: bad.ID, Owner: "upload"}); !errors.Is(err, engine.ErrImageNotReady) {
		t.Fatalf("instance of a failed image: %v, want ErrImageNotReady", err)
	}
}

func TestReadyImageWithoutItsVolumeIsMarkedFailed(t *testing.T) {
	w := newWorld(t, 3)
	// As if a destroy of image 1 died after its volume went.
	if err := w.storage.Destroy(ctx, engine.ImageVolume(1)); err != nil {
		t.Fatal(err)
	}
	e := engine.New(w.options())
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	img, err := w.store.GetImage(ctx, 1)
	if err != nil || img.Status != store.ImageFailed || !strings.Contains(img.Error, "gone") {
		t.Fatalf("image after reconcile: %+v, %v", img, err)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); !errors.Is(err, engine.ErrImageNotReady) {
		t.Fatalf("instance of it: %v, want ErrImageNotReady", err)
	}
	if err := e.DestroyImage(ctx, 1, false); err != nil {
		t.Fatalf("destroying the broken image: %v", err)
	}
}

// uploadDirEntries lists what image id's upload directory holds.
func uploadDirEntries(t *testing.T, w *world, id int64) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(w.root, "image_uploads", strconv.FormatInt(id, 10)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range entries {
		names = append(names, de.Name())
	}
	return names
}

// TestUploadIsRemovedOnceReadyOrFailed checks that nothing of an upload
// (the tarball, an HTTP upload still being received) stays once the image
// is ready, nor once a failure is recorded, after which a new upload
// finalises; and that reconcile removes what an older sindri kept of a
// ready image's upload.
func TestUploadIsRemovedOnceReadyOrFailed(t *testing.T) {
	w := newWorld(t, 3)
	e := engine.New(w.options())
	archive := sourceTarball(t)
	uploads := filepath.Join(w.root, "image_uploads")
	// receiving starts an upload that is still being received when the
	// image is finalised: its first bytes are in a temporary file of the
	// upload directory. finish sends the rest and returns its outcome.
	receiving := func(id int64) (finish func() error) {
		t.Helper()
		r, w := io.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := e.UploadImage(ctx, id, r)
			done <- err
		}()
		if _, err := w.Write(archive[:1000]); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(uploads, strconv.FormatInt(id, 10))
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if tmp, _ := filepath.Glob(filepath.Join(dir, ".upload-*")); len(tmp) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the upload's temporary file did not appear")
			}
		}
		return func() error {
			w.Write(archive[1000:])
			w.Close()
			return <-done
		}
	}

	ready := newImage(t, e, "", archive)
	late := receiving(ready.ID)
	if got, err := e.FinaliseImage(ctx, ready.ID); err != nil || got.Status != store.ImageReady {
		t.Fatalf("finalise: %+v, %v", got, err)
	}
	if left := uploadDirEntries(t, w, ready.ID); len(left) != 0 {
		t.Errorf("the upload directory of a ready image holds %v; want it empty", left)
	}
	if err := late(); !errors.Is(err, engine.ErrImageNotPending) {
		t.Errorf("an upload that ended after its image was ready: %v; want ErrImageNotPending", err)
	}
	if left := uploadDirEntries(t, w, ready.ID); len(left) != 0 {
		t.Errorf("the upload directory of a ready image holds %v after a late upload; want it empty", left)
	}

	failed := newImage(t, e, "delete from people;", []byte("not a tarball\n"))
	late = receiving(failed.ID)
	got, err := e.FinaliseImage(ctx, failed.ID)
	if !errors.Is(err, engine.ErrFinaliseFailed) || got.Status != store.ImageFailed {
		t.Fatalf("finalise of a broken upload: %+v, %v", got, err)
	}
	if left := uploadDirEntries(t, w, failed.ID); len(left) != 0 {
		t.Errorf("the upload directory of a failed image holds %v; want it empty", left)
	}
	for _, says := range []string{"not a tar", "the upload was removed", "upload the data directory again"} {
		if !strings.Contains(got.Error, says) {
			t.Errorf("the failed image's error %q does not say %q", got.Error, says)
		}
	}
	// The upload being received when the finalise failed was removed
	// with the rest: it says so, and leaves nothing.
	if err := late(); !errors.Is(err, engine.ErrImageNotPending) || !strings.Contains(err.Error(), "upload again") {
		t.Errorf("an upload that ended after its image failed: %v; want ErrImageNotPending saying to upload again", err)
	}
	if left := uploadDirEntries(t, w, failed.ID); len(left) != 0 {
		t.Errorf("the upload directory of a failed image holds %v after a late upload; want it empty", left)
	}
	if got, err := e.FinaliseImage(ctx, failed.ID); err == nil || !strings.Contains(got.Error, "nothing was uploaded") {
		t.Errorf("finalise again without a new upload: %+v, %v; want it to say nothing was uploaded", got, err)
	}
	// A new upload, and the image finalises.
	if _, err := e.UploadImage(ctx, failed.ID, bytes.NewReader(archive)); err != nil {
		t.Fatal(err)
	}
	if got, err := e.FinaliseImage(ctx, failed.ID); err != nil || got.Status != store.ImageReady || !got.Anonymised {
		t.Fatalf("finalise after a new upload: %+v, %v", got, err)
	}
	if left := uploadDirEntries(t, w, failed.ID); len(left) != 0 {
		t.Errorf("the upload directory holds %v once ready after a retry; want it empty", left)
	}

	// An older sindri kept the tarball of a ready image: reconcile at
	// start removes it.
	if err := os.WriteFile(filepath.Join(uploads, strconv.FormatInt(ready.ID, 10), engine.UploadFile), archive, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := engine.New(w.options()).Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if left := uploadDirEntries(t, w, ready.ID); len(left) != 0 {
		t.Errorf("after reconcile the upload directory of a ready image holds %v; want it empty", left)
	}
}
