package engine_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
)

// postmasterPIDs is what a test checks stayed as it was: each
// instance's postmaster pid.
func postmasterPIDs(t *testing.T, w *world, instances ...store.Instance) map[int64]int {
	t.Helper()
	pids := map[int64]int{}
	for _, inst := range instances {
		st, err := postgres.Status(mustVolume(t, w, engine.InstanceVolume(inst.ID)).Path)
		if err != nil || !st.Alive {
			t.Fatalf("instance %d: %+v %v, want its postmaster alive", inst.ID, st, err)
		}
		pids[inst.ID] = st.PID
	}
	return pids
}

// untouched fails unless the volumes are exactly want and each instance
// still runs on the same postmaster and answers its own password.
func untouched(t *testing.T, w *world, want []string, pids map[int64]int, instances ...store.Instance) {
	t.Helper()
	if got := volumeNames(t, w.storage); !slices.Equal(got, want) {
		t.Fatalf("volumes %v, want %v untouched", got, want)
	}
	for _, inst := range instances {
		st, err := postgres.Status(mustVolume(t, w, engine.InstanceVolume(inst.ID)).Path)
		if err != nil || !st.Alive || st.PID != pids[inst.ID] {
			t.Fatalf("instance %d: postmaster %+v %v, want pid %d still running", inst.ID, st, err, pids[inst.ID])
		}
		mustSQL(t, passwordConn(inst), "select 'still here'")
	}
}

func problemsOf(t *testing.T, e *engine.Engine) string {
	t.Helper()
	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Healthy != (len(st.Problems) == 0) {
		t.Fatalf("status healthy=%v with problems %q", st.Healthy, st.Problems)
	}
	return strings.Join(st.Problems, "\n")
}

// sindrid started on an empty metadata database (a wrong database_url)
// finds volumes that it does not account for: reconcile, however often it
// runs past the grace period, removes, stops and starts nothing, expiry
// destroys nothing, and /status says why. Back on the right database all
// is well.
func TestReconcileAgainstAnEmptyStoreTouchesNothing(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	plain, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	protected, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "ada@example.com", Protected: true})
	if err != nil {
		t.Fatal(err)
	}
	volumes := volumeNames(t, w.storage)
	pids := postmasterPIDs(t, w, plain, protected)

	empty, _ := storetest.New(t)
	opts := w.options()
	opts.Store, opts.OrphanGrace = empty, 0
	wrong := engine.New(opts)
	for range 3 {
		if err := wrong.Reconcile(ctx); !errors.Is(err, engine.ErrStoreMismatch) {
			t.Fatalf("reconcile on an empty store: %v, want ErrStoreMismatch", err)
		}
	}
	if _, err := wrong.DestroyExpired(ctx); !errors.Is(err, engine.ErrStoreMismatch) {
		t.Fatalf("expiry on an empty store: %v, want ErrStoreMismatch", err)
	}
	untouched(t, w, volumes, pids, plain, protected)
	problems := problemsOf(t, wrong)
	for _, want := range []string{"accounts for 0 of the 3 volumes", "image-1 (no image 1 in the store)",
		engine.InstanceVolume(plain.ID) + " (of installation", "nothing is removed", "lists no image and no instance",
		"is database_url the right database?"} {
		if !strings.Contains(problems, want) {
			t.Errorf("/status problems %q do not say %q", problems, want)
		}
	}

	right := engine.New(w.options())
	if err := right.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if problems := problemsOf(t, right); problems != "" {
		t.Fatalf("on the right store: problems %q", problems)
	}
	untouched(t, w, volumes, pids, plain, protected)
}

// Another installation's metadata database, whose rows have the same ids
// as this one's volumes and ask for every action reconcile and the API
// take (a creation to undo, a destruction to finish, an expiry, an image
// to destroy): reconcile does nothing, and the API verbs that destroy or
// read a volume refuse, or drop only their own record.
func TestAnotherInstallationsStoreTouchesNothing(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	img := newImage(t, e, "", sourceTarball(t)) // image 2, frozen by sindri: it has a record
	if _, err := e.FinaliseImage(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	first, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	volumes := volumeNames(t, w.storage)
	pids := postmasterPIDs(t, w, first, second)

	other, _ := storetest.New(t)
	for id := int64(1); id <= img.ID; id++ {
		theirs, err := other.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
		if err != nil || theirs.ID != id {
			t.Fatalf("their image %+v %v, want id %d", theirs, err, id)
		}
		if err := other.MarkImageReady(ctx, id, "15", 1, false); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-time.Hour)
	for _, want := range []struct {
		id     int64
		status store.InstanceStatus
	}{{first.ID, store.InstanceRunning}, {second.ID, store.InstanceDestroying}, {second.ID + 1, store.InstanceCreating}} {
		theirs, err := other.CreateInstance(ctx, store.InstanceInput{ImageID: img.ID, Owner: "mallory@example.com", ExpiresAt: &past})
		if err != nil || theirs.ID != want.id {
			t.Fatalf("their instance %+v %v, want id %d", theirs, err, want.id)
		}
		if err := other.SetInstanceStatus(ctx, theirs.ID, want.status, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.SetImageStatus(ctx, 1, store.ImageDestroying, ""); err != nil {
		t.Fatal(err)
	}

	opts := w.options()
	opts.Store, opts.OrphanGrace = other, 0
	wrong := engine.New(opts)
	if err := wrong.Reconcile(ctx); !errors.Is(err, engine.ErrStoreMismatch) {
		t.Fatalf("reconcile on another installation's store: %v, want ErrStoreMismatch", err)
	}
	if _, err := wrong.DestroyExpired(ctx); !errors.Is(err, engine.ErrStoreMismatch) {
		t.Fatalf("expiry: %v, want ErrStoreMismatch", err)
	}
	untouched(t, w, volumes, pids, first, second)
	if problems := problemsOf(t, wrong); !strings.Contains(problems, "belong to another sindri installation") {
		t.Fatalf("/status problems %q do not name the other installation", problems)
	}

	// The verbs a user of that store can call.
	if _, err := wrong.ResetInstance(ctx, first.ID); !errors.Is(err, engine.ErrNotItsVolume) {
		t.Errorf("reset: %v, want ErrNotItsVolume", err)
	}
	if _, err := wrong.CreateBackup(ctx, engine.BackupRequest{InstanceID: first.ID}); !errors.Is(err, engine.ErrNotItsVolume) {
		t.Errorf("backup of an instance: %v, want ErrNotItsVolume", err)
	}
	if _, err := wrong.CreateBackup(ctx, engine.BackupRequest{ImageID: img.ID}); !errors.Is(err, engine.ErrNotItsVolume) {
		t.Errorf("backup of an image: %v, want ErrNotItsVolume", err)
	}
	// Its image of the same id is not this one: no clone of it is made.
	if _, err := wrong.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "mallory@example.com"}); !errors.Is(err, engine.ErrNotItsVolume) {
		t.Errorf("an instance of their image %d: %v, want ErrNotItsVolume", img.ID, err)
	}
	// A destroy drops that store's record; the volume of that name is
	// not its instance's and stays.
	if err := wrong.DestroyInstance(ctx, second.ID); err != nil {
		t.Errorf("destroy: %v", err)
	}
	if _, err := other.GetInstance(ctx, second.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("their destroyed instance's record: %v, want it gone", err)
	}
	if err := wrong.DestroyImage(ctx, img.ID, true); !errors.Is(err, engine.ErrNotItsVolume) {
		t.Errorf("forced destroy of the image: %v, want ErrNotItsVolume", err)
	}
	untouched(t, w, volumes, pids, first, second)
	if err := engine.New(w.options()).Reconcile(ctx); err != nil {
		t.Fatalf("back on the right store: %v", err)
	}
	untouched(t, w, volumes, pids, first, second)
}

// pgDump writes the database at url to a custom-format dump.
func pgDump(t *testing.T, url string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "meta.dump")
	bin := strings.ReplaceAll(pgtest.BinPattern, "{version}", "15")
	if out, err := exec.Command(filepath.Join(bin, "pg_dump"), "-Fc", "-f", file, "-d", url).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	return file
}

// pgRestore restores a dump into a fresh database and opens it.
func pgRestore(t *testing.T, file, keyFile string) *store.Store {
	t.Helper()
	s, url := storetest.New(t)
	bin := strings.ReplaceAll(pgtest.BinPattern, "{version}", "15")
	if out, err := exec.Command(filepath.Join(bin, "pg_restore"), "--clean", "--if-exists", "--single-transaction",
		"-d", url, file).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	// The dump's secrets are sealed with the installation's key file.
	if _, err := s.LoadKeyring(ctx, keyFile, false); err != nil {
		t.Fatal(err)
	}
	return s
}

// An older dump of the metadata database restored with pg_restore: the
// instances made since (a protected one among them) are in no row, and
// one being created when the dump was taken is still "creating" in it.
// When they are most of the volumes, reconcile does nothing; when they
// are few, the rest is reconciled, and they are kept and reported, the
// "creating" one too: its volume says its creation finished. The ids the
// dump would hand out again are moved past theirs, so that a new
// instance never takes the name of one on disk.
func TestReconcileAgainstAnOlderDump(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after int
		mismatch      bool
	}{
		{"most volumes unaccounted", 1, 3, true},
		{"a few volumes unaccounted", 3, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, 8)
			e := engine.New(w.options())
			var all []store.Instance
			create := func(protected bool) {
				inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload", Protected: protected})
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, inst)
			}
			for range tc.before {
				create(false)
			}
			// As the dump saw the first instance: still being created.
			if err := w.store.SetInstanceStatus(ctx, all[0].ID, store.InstanceCreating, ""); err != nil {
				t.Fatal(err)
			}
			dump := pgDump(t, w.dbURL)
			if err := w.store.SetInstanceStatus(ctx, all[0].ID, store.InstanceRunning, ""); err != nil {
				t.Fatal(err)
			}
			for i := range tc.after {
				create(i == 0)
			}
			volumes := volumeNames(t, w.storage)
			pids := postmasterPIDs(t, w, all...)

			opts := w.options()
			opts.Store, opts.OrphanGrace = pgRestore(t, dump, w.store.Keyring().Path()), 0
			old := engine.New(opts)
			// The first reconcile after a start undoes every creation it
			// finds, were it allowed to; later ones only old ones.
			err := old.Reconcile(ctx)
			if tc.mismatch != errors.Is(err, engine.ErrStoreMismatch) ||
				(!tc.mismatch && (err == nil || !strings.Contains(err.Error(), "recorded creating, but its volume"))) {
				t.Fatalf("reconcile on the older dump: %v, want mismatch %v", err, tc.mismatch)
			}
			if err := old.Reconcile(ctx); tc.mismatch != errors.Is(err, engine.ErrStoreMismatch) {
				t.Fatalf("reconcile again on the older dump: %v, want mismatch %v", err, tc.mismatch)
			}
			untouched(t, w, volumes, pids, all...)
			newer := all[tc.before]
			problems := problemsOf(t, old)
			if want := engine.InstanceVolume(newer.ID) + " (no instance"; !strings.Contains(problems, want) {
				t.Fatalf("/status problems %q do not name %s", problems, want)
			}
			if want := engine.InstanceVolume(all[0].ID) + " (instance " + strconv.FormatInt(all[0].ID, 10) + " is recorded creating"; !tc.mismatch && !strings.Contains(problems, want) {
				t.Fatalf("/status problems %q do not name %s", problems, want)
			}
			if tc.mismatch {
				if !strings.Contains(problems, "older dump") {
					t.Fatalf("/status problems %q do not suggest an older dump", problems)
				}
				// The store's next id is a newer instance's: the creation
				// fails and forgets its record, and that instance stays.
				if _, err := old.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); !errors.Is(err, engine.ErrStoreMismatch) {
					t.Fatalf("a creation through the older store: %v, want ErrStoreMismatch", err)
				}
				untouched(t, w, volumes, pids, all...)
				return
			}
			// A creation through the older store takes a fresh id.
			inst, err := old.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
			if err != nil {
				t.Fatal(err)
			}
			if last := all[len(all)-1].ID; inst.ID <= last {
				t.Fatalf("new instance got id %d, not past the %d on disk", inst.ID, last)
			}
			mustSQL(t, passwordConn(inst), "select 'new'")
			volumes = append(volumes, engine.InstanceVolume(inst.ID))
			slices.Sort(volumes)
			untouched(t, w, volumes, pids, all...)
		})
	}
}
