package engine_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// limitErr fails the test unless err is a *engine.LimitError of class
// (ErrQuotaExceeded or ErrNoDiskSpace) for key whose message holds each of
// parts.
func limitErr(t *testing.T, what string, err error, class error, key string, parts ...string) *engine.LimitError {
	t.Helper()
	var le *engine.LimitError
	if !errors.As(err, &le) || !errors.Is(err, class) {
		t.Fatalf("%s: %v, want a refusal by %s (%v)", what, err, key, class)
	}
	if le.Key != key {
		t.Errorf("%s: refused by %s, want %s (%v)", what, le.Key, key, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: message %q does not say %q", what, err, p)
		}
	}
	return le
}

// footprint is what instances hold: rows, instance volumes, ports and
// live postmasters.
type footprint struct {
	rows, volumes, ports []string
	postmasters          int
}

func (w *world) footprint(t *testing.T) footprint {
	t.Helper()
	var f footprint
	insts, err := w.store.ListInstances(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, inst := range insts {
		f.rows = append(f.rows, fmt.Sprintf("%d:%s:%s", inst.ID, inst.Owner, inst.Status))
		if inst.Port != 0 {
			f.ports = append(f.ports, fmt.Sprint(inst.Port))
		}
	}
	entries, err := w.storage.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range entries {
		if strings.HasPrefix(v.Name, "instance-") {
			f.volumes = append(f.volumes, v.Name)
			if st, err := postgres.Status(v.Path); err == nil && st.Alive {
				f.postmasters++
			}
		}
	}
	return f
}

func (f footprint) equal(g footprint) bool {
	return slices.Equal(f.rows, g.rows) && slices.Equal(f.volumes, g.volumes) &&
		slices.Equal(f.ports, g.ports) && f.postmasters == g.postmasters
}

func TestInstanceLimitsRefuseLeavingNothing(t *testing.T) {
	w := newWorld(t, 12)
	opts := w.options()
	opts.Limits = engine.Limits{InstancesPerUser: 3, ProtectedInstancesPerUser: 1, UploadUserInstances: 2}
	e := engine.New(opts)
	const ada = "ada@example.com"
	asAda, asUpload := engine.WithActor(ctx, ada), engine.WithActor(ctx, engine.UploadOwner)
	create := func(c context.Context, owner string, protected bool) (store.Instance, error) {
		return e.CreateInstance(c, engine.InstanceRequest{ImageID: 1, Owner: owner, Protected: protected})
	}
	must := func(inst store.Instance, err error) store.Instance {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return inst
	}

	first := must(create(asAda, ada, true))
	before := w.footprint(t)
	_, err := create(asAda, ada, true)
	limitErr(t, "a second protected instance", err, engine.ErrQuotaExceeded, "limits.protected_instances_per_user",
		"you have 1 protected instance, the limit (limits.protected_instances_per_user) is 1")
	if after := w.footprint(t); !after.equal(before) {
		t.Fatalf("the refused creation left something: %+v, before %+v", after, before)
	}
	second := must(create(asAda, ada, false))
	must(create(asAda, ada, false))
	before = w.footprint(t)
	_, err = create(asAda, ada, false)
	limitErr(t, "a fourth instance", err, engine.ErrQuotaExceeded, "limits.instances_per_user",
		"you have 3 instances, the limit (limits.instances_per_user) is 3")
	if after := w.footprint(t); !after.equal(before) || len(after.rows) != 3 || after.postmasters != 3 {
		t.Fatalf("the refused creation left something: %+v, before %+v", after, before)
	}

	// Protecting by an update is held by the same limit; the upload user,
	// acting on ada's instance, is told whose limit it is.
	yes, no := true, false
	_, err = e.UpdateInstance(asAda, second.ID, nil, &yes)
	limitErr(t, "protecting a second instance", err, engine.ErrQuotaExceeded, "limits.protected_instances_per_user", "you have 1 protected instance,")
	_, err = e.UpdateInstance(asUpload, second.ID, nil, &yes)
	limitErr(t, "the upload user protecting ada's second instance", err, engine.ErrQuotaExceeded,
		"limits.protected_instances_per_user", ada+" has 1 protected instance,")
	if got, _ := e.GetInstance(ctx, second.ID); got.Protected {
		t.Fatal("a refused update protected the instance")
	}
	if _, err := e.UpdateInstance(asAda, first.ID, nil, &no); err != nil {
		t.Fatal(err)
	}
	if got, err := e.UpdateInstance(asAda, second.ID, nil, &yes); err != nil || !got.Protected {
		t.Fatalf("protecting once the other is not: %+v, %v", got, err)
	}

	// Another user has limits of their own; the upload user only its own.
	must(create(ctx, "bob@example.com", true))
	for range 2 {
		must(create(asUpload, engine.UploadOwner, true))
	}
	_, err = create(asUpload, engine.UploadOwner, false)
	limitErr(t, "the upload user's third instance", err, engine.ErrQuotaExceeded, "limits.upload_user_instances",
		"you have 2 instances, the limit (limits.upload_user_instances) is 2")

	log, err := w.store.AuditLog(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, entry := range log {
		if entry.Outcome == "refused" && strings.Contains(entry.Detail, "limits.") {
			refused++
		}
	}
	if refused != 5 {
		t.Errorf("%d refusals by limits in the audit log, want 5", refused)
	}
}

// Fifty creations at once by one user at a limit of ten: exactly ten
// instances run, the other forty are refused before anything is made.
func TestConcurrentCreatesStopAtTheLimit(t *testing.T) {
	w := newWorld(t, 15)
	opts := w.options()
	opts.Limits = engine.Limits{InstancesPerUser: 10}
	e := engine.New(opts)
	const tries, limit = 50, 10
	errs := make([]error, tries)
	var wg sync.WaitGroup
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.CreateInstance(engine.WithActor(ctx, "ada@example.com"),
				engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
		}()
	}
	wg.Wait()
	made := 0
	for _, err := range errs {
		if err == nil {
			made++
			continue
		}
		limitErr(t, "a creation past the limit", err, engine.ErrQuotaExceeded, "limits.instances_per_user", "the limit (limits.instances_per_user) is 10")
	}
	f := w.footprint(t)
	if made != limit || len(f.rows) != limit || len(f.volumes) != limit || len(f.ports) != limit || f.postmasters != limit {
		t.Fatalf("%d creations passed; %d rows, %d volumes, %d ports, %d postmasters; want %d of each",
			made, len(f.rows), len(f.volumes), len(f.ports), f.postmasters, limit)
	}
}

func TestBackupLimits(t *testing.T) {
	w := newWorld(t, 5)
	hold := make(chan struct{})
	opts := w.options()
	opts = engine.WithBackupSnapshotted(opts, func(int64) { <-hold })
	opts.Limits = engine.Limits{RunningBackupsPerUser: 1, RunningBackups: 2, BackupsTotal: engine.Amount{Bytes: 1}}
	e := engine.New(opts)
	backup := func(owner string) (store.Backup, error) {
		return e.CreateBackup(engine.WithActor(ctx, owner), engine.BackupRequest{ImageID: 1, Owner: owner})
	}
	count := func() int {
		bs, err := w.store.ListBackups(ctx, store.BackupFilter{})
		if err != nil {
			t.Fatal(err)
		}
		return len(bs)
	}
	first, err := backup("ada@example.com")
	if err != nil {
		t.Fatal(err)
	}
	_, err = backup("ada@example.com")
	limitErr(t, "ada's second running backup", err, engine.ErrQuotaExceeded, "limits.running_backups_per_user",
		"you have 1 backup being written, the limit (limits.running_backups_per_user) is 1")
	if _, err := backup("bob@example.com"); err != nil {
		t.Fatal(err)
	}
	_, err = backup("cy@example.com")
	limitErr(t, "a third running backup", err, engine.ErrQuotaExceeded, "limits.running_backups",
		"2 backups are being written, the limit (limits.running_backups) is 2")
	// The upload user counts in all but is not held by it.
	if _, err := backup(engine.UploadOwner); err != nil {
		t.Fatalf("the upload user's backup with 2 running: %v", err)
	}
	if n := count(); n != 3 {
		t.Fatalf("%d backups recorded, want 3", n)
	}
	if entries := volumeNames(t, w.storage); len(entries) != 4 { // the image and 3 snapshots
		t.Fatalf("volumes %v: a refused backup left a snapshot", entries)
	}
	close(hold)
	if b := waitBackup(t, e, first.ID); b.Status != store.BackupDone || b.SizeBytes <= 1 {
		t.Fatalf("backup %+v", b)
	}
	for id := first.ID + 1; id <= first.ID+2; id++ {
		waitBackup(t, e, id)
	}
	_, err = backup("cy@example.com")
	limitErr(t, "a backup once the archives are over the limit", err, engine.ErrQuotaExceeded, "limits.backups_total_bytes",
		"the limit (limits.backups_total_bytes) is 1 B")
	if _, err := backup(engine.UploadOwner); err != nil {
		t.Fatalf("the upload user's backup over the total: %v", err)
	}
}

// fill writes a file of zeros into dir until the filesystem has less than
// leave bytes free (0: until it is full), and returns its path.
func fill(t *testing.T, d storage.Driver, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for {
		c, err := d.Capacity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if leave > 0 && c.FreeBytes < leave {
			return path
		}
		chunk := buf
		if leave > 0 {
			chunk = buf[:min(int64(len(buf)), max(c.FreeBytes-leave+1, 4096))]
		}
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) && leave == 0 {
				f.Sync()
				return path
			}
			t.Fatal(err)
		}
		f.Sync()
	}
}

// unfill removes the filler and waits until free space is back above
// want (BTRFS frees space at its next commit).
func unfill(t *testing.T, d storage.Driver, path string, want int64) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	exec.Command("sync").Run()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := d.Capacity(ctx)
		if err == nil && c.FreeBytes >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("free space %d after removing the filler, want %d", c.FreeBytes, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Below the disk reserve, new instances, uploads, finalises, restores and
// backups are refused, naming the reserve and the free bytes, and nothing
// of them is made; the running instance goes on answering.
func TestDiskReserveRefusesNewWorkNotRunningInstances(t *testing.T) {
	w := newWorldSized(t, 5, 1<<30)
	opts := w.options()
	opts.Limits = engine.Limits{DiskReserve: engine.Amount{Percent: 25}}
	e := engine.New(opts)
	running, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, w.superuserConn(running), "create table notes (id int); grant all on notes to public; insert into notes values (1)")
	tarball := sourceTarball(t)
	pending := newImage(t, e, "", tarball) // uploaded, not finalised
	empty, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.CreateBackup(ctx, engine.BackupRequest{ImageID: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitBackup(t, e, done.ID)

	c, err := w.storage.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reserve := c.TotalBytes / 4
	filler := fill(t, w.storage, w.root, reserve/2)
	before := w.footprint(t)
	images, _ := w.store.ListImages(ctx)
	backups, _ := w.store.ListBackups(ctx, store.BackupFilter{})

	_, err = e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
	le := limitErr(t, "a new instance", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "a new instance refused", "bytes) of", "is free", "limits.disk_reserve = 25%")
	if le.Used >= reserve || le.Limit != reserve || !strings.Contains(err.Error(), fmt.Sprintf("(%d bytes)", le.Used)) {
		t.Errorf("refusal figures: free %d, reserve %d; want free under %d and the free bytes in %q", le.Used, le.Limit, reserve, err)
	}
	_, err = e.UploadImage(ctx, empty.ID, strings.NewReader("x"))
	limitErr(t, "an upload", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "an upload refused")
	if entries, _ := os.ReadDir(filepath.Join(w.root, "image_uploads", fmt.Sprint(empty.ID))); len(entries) != 0 {
		t.Errorf("the refused upload left %v", entries)
	}
	_, err = e.FinaliseImage(ctx, pending.ID)
	limitErr(t, "a finalise", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "finalising an image refused")
	if img, _ := w.store.GetImage(ctx, pending.ID); img.Status != store.ImagePending || !strings.Contains(img.Error, "limits.disk_reserve") {
		t.Errorf("the image after the refused finalise: %s %q, want pending, saying why", img.Status, img.Error)
	}
	_, err = e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), BackupID: done.ID})
	limitErr(t, "a restore", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "a restore refused")
	_, err = e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: "postgres://u@db.example.com/postgres"})
	limitErr(t, "a pull", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "a pull from a source server refused")
	_, err = e.CreateBackup(ctx, engine.BackupRequest{InstanceID: running.ID, Owner: "ada@example.com"})
	limitErr(t, "a backup", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "a new backup refused")

	if after := w.footprint(t); !after.equal(before) {
		t.Errorf("refusals left something: %+v, before %+v", after, before)
	}
	if got, _ := w.store.ListImages(ctx); len(got) != len(images) {
		t.Errorf("%d images after the refusals, %d before", len(got), len(images))
	}
	if got, _ := w.store.ListBackups(ctx, store.BackupFilter{}); len(got) != len(backups) {
		t.Errorf("%d backups after the refusals, %d before", len(got), len(backups))
	}
	// The running instance is not touched: it answers, and writes into
	// the reserve.
	pgtest.Exec(t, passwordConn(running), "insert into notes values (2)")
	if got := mustSQL(t, passwordConn(running), "select count(*)::text from notes"); got != "2" {
		t.Fatalf("the running instance's rows: %s", got)
	}
	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Healthy || !slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "under the disk reserve") }) {
		t.Errorf("status %v %q: want degraded, saying the free space is under the reserve", st.Healthy, st.Problems)
	}

	unfill(t, w.storage, filler, reserve+64<<20)
	if _, err := e.FinaliseImage(ctx, pending.ID); err != nil {
		t.Fatalf("the finalise once space is freed: %v", err)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"}); err != nil {
		t.Fatalf("a new instance once space is freed: %v", err)
	}
}

// zeros reads n zero bytes.
func zeros(n int64) io.Reader { return io.LimitReader(zeroReader{}, n) }

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// An upload and a finalise that reach the reserve on their way stop
// there, and give their space back.
func TestWorkStopsAtTheReserve(t *testing.T) {
	w := newWorldSized(t, 5, 1<<30)
	opts := w.options()
	opts.ReserveCheckEvery = 20 * time.Millisecond
	c, err := w.storage.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Room for 150 MiB above the reserve.
	opts.Limits = engine.Limits{DiskReserve: engine.Amount{Bytes: c.FreeBytes - 150<<20}}
	e := engine.New(opts)

	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.UploadImage(ctx, img.ID, zeros(400<<20))
	limitErr(t, "an upload of 400 MiB with 150 MiB above the reserve", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "an upload stopped")
	if entries, _ := os.ReadDir(filepath.Join(w.root, "image_uploads", fmt.Sprint(img.ID))); len(entries) != 0 {
		t.Errorf("the stopped upload left %v", entries)
	}
	exec.Command("sync").Run()

	// A tarball whose first entry is 300 MiB of zeros: small to upload,
	// past the reserve to extract.
	big := t.TempDir()
	if err := os.WriteFile(filepath.Join(big, "zeros"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(big, "zeros"), 300<<20); err != nil {
		t.Fatal(err)
	}
	tarball, err := exec.Command("tar", "-czf", "-", "-C", big, "zeros", "-C", pgtest.Template(t), ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.UploadImage(ctx, img.ID, strings.NewReader(string(tarball))); err != nil {
		t.Fatalf("uploading a %d-byte tarball: %v", len(tarball), err)
	}
	_, err = e.FinaliseImage(ctx, img.ID)
	limitErr(t, "a finalise whose extraction passes the reserve", err, engine.ErrNoDiskSpace, "limits.disk_reserve", "finalising an image stopped")
	got, _ := w.store.GetImage(ctx, img.ID)
	if got.Status != store.ImageFailed || !strings.Contains(got.Error, "limits.disk_reserve") {
		t.Errorf("the image after the stopped finalise: %s %q, want failed, saying why", got.Status, got.Error)
	}
	// What it extracted is gone: its upload volume with it, or emptied.
	if vol, err := w.storage.Get(ctx, engine.UploadVolume(img.ID)); err == nil {
		if entries, _ := os.ReadDir(vol.Path); len(entries) != 0 {
			t.Errorf("the stopped finalise left %d entries in its upload volume", len(entries))
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	if pids := postmastersUnder(w.root); len(pids) != 0 {
		t.Errorf("postmasters left by the stopped finalise: %v", pids)
	}
}

// imageFootprint is the image rows' ids, and the volumes of images
// (image-, upload-, branch-N) whose N is no image's: what a refused
// branch must not leave.
func (w *world) imageFootprint(t *testing.T) (ids []int64, strays []string) {
	t.Helper()
	images, err := w.store.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range images {
		ids = append(ids, img.ID)
	}
	entries, err := w.storage.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range entries {
		kind, n, _ := strings.Cut(v.Name, "-")
		if kind == "image" || kind == "upload" || kind == "branch" {
			if !slices.ContainsFunc(ids, func(id int64) bool { return fmt.Sprint(id) == n }) {
				strays = append(strays, v.Name)
			}
		}
	}
	return ids, strays
}

// A user at branches_per_user is refused a branch with nothing made (no
// image row, no snapshot volume), whatever the status of the branches
// they hold; another user is not held by it; once one of their branches
// is destroyed they branch again. The upload user is held by
// upload_user_branches alone.
func TestBranchLimitRefusesLeavingNothing(t *testing.T) {
	w := newWorld(t, 6)
	opts := w.options()
	opts.Limits = engine.Limits{BranchesPerUser: 2, UploadUserBranches: 1}
	e := engine.New(opts)
	svc := e.Services()
	ada := engine.Actor{Owner: "ada@example.com"}
	bob := engine.Actor{Owner: "bob@example.com"}
	upload := engine.Actor{Owner: engine.UploadOwner, Upload: true}
	instanceOf := func(a engine.Actor) store.Instance {
		t.Helper()
		inst, err := svc.Instances.Create(ctx, a, engine.NewInstance{ImageID: 1})
		if err != nil {
			t.Fatal(err)
		}
		return inst
	}
	branch := func(a engine.Actor, inst store.Instance) (store.Image, error) {
		return svc.Images.Create(ctx, a, engine.ImageRequest{InstanceID: inst.ID})
	}
	mustBranch := func(a engine.Actor, inst store.Instance) store.Image {
		t.Helper()
		img, err := branch(a, inst)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}

	adas := instanceOf(ada)
	first := mustBranch(ada, adas)
	if ready, err := svc.Images.Finalise(ctx, ada, first.ID); err != nil || ready.Status != store.ImageReady {
		t.Fatalf("finalising ada's first branch: %+v, %v", ready, err)
	}
	second := mustBranch(ada, adas) // finalised in the background meanwhile
	idsBefore, _ := w.imageFootprint(t)
	_, err := branch(ada, adas)
	limitErr(t, "ada's third branch", err, engine.ErrQuotaExceeded, "limits.branches_per_user",
		"you have 2 branches, the limit (limits.branches_per_user) is 2: destroy one first")
	// The upload user may branch anybody's instance; the branch is the
	// owner's, and so is the limit.
	_, err = branch(upload, adas)
	limitErr(t, "the upload user branching ada's instance", err, engine.ErrQuotaExceeded, "limits.branches_per_user",
		"ada@example.com has 2 branches")
	if ids, strays := w.imageFootprint(t); !slices.Equal(ids, idsBefore) || len(strays) != 0 {
		t.Fatalf("the refused branches left something: images %v (before %v), volumes of no image %v", ids, idsBefore, strays)
	}

	// Bob has a limit of his own.
	bobs := instanceOf(bob)
	mustBranch(bob, bobs)
	mustBranch(bob, bobs)

	st, err := svc.Status.Get(ctx, ada)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range st.Limits {
		if l.Name == "branches_per_user" {
			found = true
			if l.Limit != 2 || l.Used != 2 || l.Yours == nil || *l.Yours != 2 {
				t.Errorf("branches_per_user in ada's /status: %+v", l)
			}
		}
	}
	if !found {
		t.Error("/status has no branches_per_user")
	}

	// Once a branch is destroyed, ada branches again.
	if err := svc.Images.Destroy(ctx, ada, second.ID, false); err != nil {
		t.Fatal(err)
	}
	if again := mustBranch(ada, adas); again.Owner != ada.Owner {
		t.Fatalf("ada's branch after a destroy: %+v", again)
	}

	uploads := instanceOf(upload)
	mustBranch(upload, uploads)
	_, err = branch(upload, uploads)
	limitErr(t, "the upload user's second branch", err, engine.ErrQuotaExceeded, "limits.upload_user_branches",
		"you have 1 branch, the limit (limits.upload_user_branches) is 1")

	log, err := w.store.AuditLog(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, entry := range log {
		if entry.Action == "create_image" && entry.Outcome == "refused" && strings.Contains(entry.Detail, "branches") {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("%d refused branches in the audit log, want 3", refused)
	}
}
