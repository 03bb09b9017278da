package engine_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/storage/dircopy"
	"github.com/sindri-db/sindri/pkg/storage/zfs"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
	"github.com/sindri-db/sindri/pkg/testfs"
)

var ctx = context.Background()

// The test binary doubles as a short-lived sindrid: with these variables
// set it creates one instance and exits, or is killed on the way.
const (
	childEnv   = "SINDRI_ENGINE_TEST_CHILD"
	crashEnv   = "SINDRI_ENGINE_TEST_CRASH_AT"
	dbEnv      = "SINDRI_ENGINE_TEST_DB"
	rootEnv    = "SINDRI_ENGINE_TEST_ROOT"
	runDirEnv  = "SINDRI_ENGINE_TEST_RUNDIR"
	portsEnv   = "SINDRI_ENGINE_TEST_PORTS"
	keyEnv     = "SINDRI_ENGINE_TEST_KEY_FILE"
	childImage = 1
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(storetest.Main(m))
}

func quietLogger() *slog.Logger { return storetest.Logger() }

// world is one test's metadata database, filesystem and image.
type world struct {
	dbURL   string
	store   *store.Store
	root    string
	storage storage.Driver
	runDir  string
	owner   postgres.OSUser
	minPort int
	maxPort int
}

func newWorld(t testing.TB, ports int) *world {
	t.Helper()
	return newWorldSized(t, ports, 2<<30)
}

// storageEnv chooses the filesystem and driver of newWorld: "btrfs" (the
// default, and what `make test` runs) or "dircopy", a tmpfs of the same
// size under the copying driver, so that a machine without BTRFS can run
// the engine's tests. On dircopy every clone is a full copy and a snapshot
// is not atomic: a test whose point is what only a copy-on-write driver
// does calls skipOnDircopy, which says why. The ZFS tests use newWorldZFS
// whatever it says.
const storageEnv = "SINDRI_TEST_STORAGE"

// onDircopy tells whether SINDRI_TEST_STORAGE puts newWorld on dircopy.
func onDircopy() bool { return os.Getenv(storageEnv) == "dircopy" }

// worldDriverName is the name of newWorld's driver.
func worldDriverName() string {
	if onDircopy() {
		return "dircopy"
	}
	return "btrfs"
}

// skipOnDircopy skips the test under SINDRI_TEST_STORAGE=dircopy, saying
// why it means nothing there; by default (BTRFS, `make test`) it never
// skips.
func skipOnDircopy(t testing.TB, why string) {
	t.Helper()
	if onDircopy() {
		t.Skipf("skipped under %s=dircopy: %s", storageEnv, why)
	}
}

// newWorldSized is newWorld on a filesystem of size bytes: a loopback
// BTRFS, or a tmpfs when SINDRI_TEST_STORAGE=dircopy.
func newWorldSized(t testing.TB, ports int, size int64) *world {
	t.Helper()
	switch kind := os.Getenv(storageEnv); kind {
	case "", "btrfs":
		return newWorldBtrfs(t, ports, size)
	case "dircopy":
		root := filepath.Join(testfs.Tmpfs(t, size), "sindri")
		driver, err := dircopy.New(root)
		if err != nil {
			t.Fatal(err)
		}
		return newWorldOn(t, ports, driver, root)
	default:
		t.Fatalf("%s=%q: want btrfs or dircopy", storageEnv, kind)
		return nil
	}
}

// newWorldBtrfs is newWorld on a loopback BTRFS of size bytes.
func newWorldBtrfs(t testing.TB, ports int, size int64) *world {
	t.Helper()
	root := filepath.Join(testfs.Btrfs(t, size), "sindri")
	driver, err := btrfs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return newWorldOn(t, ports, driver, root)
}

// openDriver opens, for a child sindrid, the driver of the world whose
// root it is given: btrfs on BTRFS, otherwise dircopy.
func openDriver(root string) (storage.Driver, error) {
	if btrfs.IsBtrfs(root) == nil {
		return btrfs.New(root)
	}
	return dircopy.New(root)
}

// newWorldZFS is newWorld on a zfs-fuse pool; uploads and backups go to a
// plain directory.
func newWorldZFS(t testing.TB, ports int) *world {
	t.Helper()
	pool := testfs.ZFSPool(t, 2<<30)
	driver, err := zfs.New(pool + "/sindri")
	if err != nil {
		t.Fatal(err)
	}
	return newWorldOn(t, ports, driver, t.TempDir())
}

// newWorldOn makes the world around a storage driver; root holds the
// uploads and backups directories.
func newWorldOn(t testing.TB, ports int, driver storage.Driver, root string) *world {
	t.Helper()
	w := &world{owner: pgtest.Owner(t), storage: driver, root: root}
	w.store, w.dbURL = storetest.New(t)
	openToPostgres(t, driver)
	var err error
	if w.runDir, err = os.MkdirTemp("", "sr"); err != nil {
		t.Fatal(err)
	}
	os.Chmod(w.runDir, 0o711)
	t.Cleanup(func() { os.RemoveAll(w.runDir) })
	w.minPort = pgtest.FreePort(t)
	w.maxPort = w.minPort + ports
	w.makeImage(t, childImage, "")
	t.Cleanup(func() { w.stopAll(t) })
	return w
}

// makeImage freezes a copy of the template data directory into image id,
// with PG_VERSION replaced when pgVersion is set ("-" removes it).
func (w *world) makeImage(t testing.TB, id int64, pgVersion string) {
	t.Helper()
	img, err := w.store.CreateImage(ctx, store.ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != id {
		t.Fatalf("image id %d, want %d", img.ID, id)
	}
	vol, err := w.storage.Create(ctx, fmt.Sprintf("upload-%d", id))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", pgtest.Template(t)+"/.", vol.Path).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	switch pgVersion {
	case "":
	case "-":
		os.Remove(filepath.Join(vol.Path, "PG_VERSION"))
	default:
		os.WriteFile(filepath.Join(vol.Path, "PG_VERSION"), []byte(pgVersion+"\n"), 0o600)
	}
	w.owner.Chown(vol.Path, false)
	os.Chmod(vol.Path, 0o700)
	if _, err := w.storage.Freeze(ctx, vol.Name, engine.ImageVolume(id)); err != nil {
		t.Fatal(err)
	}
	if err := w.store.MarkImageReady(ctx, id, "15", 1, false); err != nil {
		t.Fatal(err)
	}
}

func (w *world) options() engine.Options {
	return engine.Options{
		Store: w.store, Storage: w.storage, Owner: w.owner, BinPattern: pgtest.BinPattern,
		MinPort: w.minPort, MaxPort: w.maxPort, PublicHostname: "localhost", SharedBuffers: "16MB",
		RunDir: w.runDir, UploadsDir: filepath.Join(w.root, "image_uploads"), BackupsDir: filepath.Join(w.root, "backups"),
		Logger: quietLogger(), SupervisePeriod: 200 * time.Millisecond,
	}
}

// stopAll stops every postmaster left on the test's filesystem, so that
// its unmount succeeds.
func (w *world) stopAll(t testing.TB) {
	entries, _ := w.storage.List(ctx)
	for _, e := range entries {
		if e.Kind == storage.KindVolume {
			postgres.Stop(ctx, e.Path, 5*time.Second)
		}
	}
}

// postmastersUnder lists the live postgres processes whose working
// directory is under dir.
func postmastersUnder(dir string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || !postgres.Running(pid) {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err == nil && strings.HasPrefix(cwd, dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func certConn(t *testing.T, inst store.Instance) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{"ca.crt": inst.CACertificate, "client.crt": inst.ClientCertificate, "client.key": inst.ClientKey}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("host=localhost port=%d dbname=postgres user=draupnir sslmode=verify-ca sslrootcert=%s sslcert=%s sslkey=%s",
		inst.Port, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
}

func passwordConn(inst store.Instance) string {
	return fmt.Sprintf("postgres://%s:%s@localhost:%d/postgres?sslmode=require", inst.Username, inst.Password, inst.Port)
}

func sql(t testing.TB, conn, query string) (string, error) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	db, err := pgx.Connect(c, conn)
	if err != nil {
		return "", err
	}
	defer db.Close(ctx)
	var out string
	err = db.QueryRow(c, query).Scan(&out)
	return out, err
}

func mustSQL(t testing.TB, conn, query string) string {
	t.Helper()
	out, err := sql(t, conn, query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return out
}

func volumeNames(t *testing.T, d storage.Driver) []string {
	t.Helper()
	entries, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	return names
}

func TestCreateLoginIsolationDestroy(t *testing.T) {
	w := newWorld(t, 10)
	e := engine.New(w.options())
	a, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "a@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "b@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != store.InstanceRunning || a.Port == b.Port || a.Port < w.minPort || a.Port >= w.maxPort {
		t.Fatalf("instances %+v and %+v: want running, distinct ports in range", a, b)
	}
	for name, conn := range map[string]string{"certificate": certConn(t, a), "password": passwordConn(a)} {
		if got := mustSQL(t, conn, "select rolsuper::text from pg_roles where rolname = current_user"); got != "false" {
			t.Errorf("%s login is a superuser", name)
		}
	}
	// Grants are the image's business (finalise); here the superuser, over
	// the private socket, makes a table the client roles may write.
	pgtest.Exec(t, w.superuserConn(a), "create table only_in_a (x int); grant all on only_in_a to draupnir")
	pgtest.Exec(t, passwordConn(a), "insert into only_in_a values (1)")
	if got := mustSQL(t, certConn(t, a), "select count(*)::text from only_in_a"); got != "1" {
		t.Fatalf("the certificate login does not see the password login's table: %s", got)
	}
	if _, err := sql(t, passwordConn(b), "select count(*)::text from only_in_a"); err == nil {
		t.Fatal("a table made in one instance is visible in another")
	}

	if err := e.DestroyInstance(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", a.Port), time.Second); err == nil {
		c.Close()
		t.Fatalf("port %d still accepts connections after destroy", a.Port)
	}
	if _, err := w.store.GetInstance(ctx, a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("record after destroy: %v", err)
	}
	if got, want := volumeNames(t, w.storage), []string{"image-1", "instance-2"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("volumes after destroy: %v, want %v", got, want)
	}
	if err := e.DestroyInstance(ctx, a.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("second destroy: %v, want ErrNotFound", err)
	}
}

func TestKilledPostmasterAnswersAgainWithinTwoSeconds(t *testing.T) {
	w := newWorld(t, 5)
	inst, vol, st := supervised(t, w.options())
	killed := time.Now()
	syscall.Kill(st.PID, syscall.SIGKILL)
	answersWithin(t, inst, vol.Path, killed, 2*time.Second)
	if st2, _ := postgres.Status(vol.Path); st2.PID == st.PID {
		t.Fatal("same pid: the postmaster was not restarted")
	}
}

func TestRepeatedCrashesMarkTheInstanceFailed(t *testing.T) {
	w := newWorld(t, 5)
	opts := w.options()
	opts.MaxCrashes = 3
	e := engine.New(opts)
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	run, stop := context.WithCancel(ctx)
	defer stop()
	go e.Run(run, time.Minute, time.Minute)
	vol, _ := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := w.store.GetInstance(ctx, inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == store.InstanceFailed {
			if !strings.Contains(got.Error, "crashed 3 times") || !strings.Contains(got.Error, "database system") {
				t.Fatalf("error %q: want the crash count and the log's last lines", got.Error)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance still %s after repeated crashes", got.Status)
		}
		if st, err := postgres.Status(vol.Path); err == nil && st.Alive {
			syscall.Kill(st.PID, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Reconcile frees the port of a failed instance.
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := w.store.GetInstance(ctx, inst.ID); got.Port != 0 {
		t.Fatalf("failed instance still holds port %d", got.Port)
	}
}

// childMain is the short-lived sindrid: it creates one instance of image 1
// and exits 0, unless killAt kills it first.
func childMain() int {
	if id := os.Getenv(finaliseEnv); id != "" {
		return childFinalise(id)
	}
	if id := os.Getenv(refreshEnv); id != "" {
		return childRefresh(id)
	}
	ports := strings.Split(os.Getenv(portsEnv), "-")
	minPort, _ := strconv.Atoi(ports[0])
	maxPort, _ := strconv.Atoi(ports[1])
	s, err := store.Open(ctx, os.Getenv(dbEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := s.LoadKeyring(ctx, os.Getenv(keyEnv), false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	d, err := openDriver(os.Getenv(rootEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	owner, _ := postgres.LookupUser("postgres")
	e := engine.New(engine.WithStepHook(engine.Options{
		Store: s, Storage: d, Owner: owner, BinPattern: pgtest.BinPattern, MinPort: minPort, MaxPort: maxPort,
		PublicHostname: "localhost", SharedBuffers: "16MB", RunDir: os.Getenv(runDirEnv),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}, killAt(os.Getenv(crashEnv))))
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "upload"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Println(inst.ID)
	if slices.Contains(engine.ImageDestroySteps, os.Getenv(crashEnv)) {
		// Then a forced destroy of the image, killed on its way.
		if err := e.DestroyImage(ctx, childImage, true); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 4
		}
	}
	return 0
}

// killAt is a step hook that kills the process with SIGKILL at the named
// step of CreateSteps or ImageDestroySteps: a fault tests cannot cause
// otherwise. The engine itself never sends it.
func killAt(step string) func(name string, id int64) {
	return func(name string, id int64) {
		if step == "" || name != step {
			return
		}
		fmt.Fprintf(os.Stderr, "child: killing itself on purpose at step %s (id %d)\n", name, id)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

func (w *world) runChild(t *testing.T, crashAt string) (stdout string, err error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", crashEnv+"="+crashAt, dbEnv+"="+w.dbURL, keyEnv+"="+w.store.Keyring().Path(),
		rootEnv+"="+w.root, runDirEnv+"="+w.runDir, fmt.Sprintf("%s=%d-%d", portsEnv, w.minPort, w.maxPort))
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if testing.Verbose() {
		t.Logf("child (crash at %q): %v\n%s", crashAt, err, errOut.String())
	}
	return out.String(), err
}

// crashChild runs the child sindrid, killed at step, and fails the test
// unless it died there by SIGKILL.
func (w *world) crashChild(t *testing.T, step string) {
	t.Helper()
	_, err := w.runChild(t, step)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL at %s: %v", step, err)
	}
}

// childInstance reads the instance whose id the child printed.
func (w *world) childInstance(t *testing.T, out string) store.Instance {
	t.Helper()
	id, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	inst, err := w.store.GetInstance(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

func TestSIGKILLAtEachCreationStepLeavesNothingHalfMade(t *testing.T) {
	for _, step := range engine.CreateSteps {
		t.Run(step, func(t *testing.T) {
			w := newWorld(t, 5)
			w.crashChild(t, step)
			// A new sindrid starts and reconciles.
			e := engine.New(w.options())
			if err := e.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			instances, err := w.store.ListInstances(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(instances) != 0 {
				t.Fatalf("after a crash at %s and reconcile: %+v, want the creation undone", step, instances)
			}
			if got := volumeNames(t, w.storage); strings.Join(got, ",") != "image-1" {
				t.Fatalf("volumes left: %v, want only image-1", got)
			}
			if pids := postmastersUnder(w.root); len(pids) != 0 {
				t.Fatalf("postmasters left running: %v", pids)
			}
			for p := w.minPort; p < w.maxPort; p++ {
				if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), 200*time.Millisecond); err == nil {
					c.Close()
					t.Fatalf("port %d still in use", p)
				}
			}
			// And creation works again, on the lowest port.
			inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
			if err != nil {
				t.Fatal(err)
			}
			if inst.Port != w.minPort {
				t.Fatalf("new instance on port %d, want the freed %d", inst.Port, w.minPort)
			}
		})
	}
}

// A forced image destroy killed after its intent is recorded, or after its
// instances went, is finished by the next start's reconcile: no image, no
// instance, no volume, no postmaster, and no clone made meanwhile.
func TestSIGKILLDuringAnImageDestroyIsFinishedByReconcile(t *testing.T) {
	for _, step := range engine.ImageDestroySteps {
		t.Run(step, func(t *testing.T) {
			w := newWorld(t, 5)
			w.crashChild(t, step)
			img, err := w.store.GetImage(ctx, childImage)
			if err != nil || img.Status != store.ImageDestroying {
				t.Fatalf("image after the crash: %+v %v, want it marked destroying", img, err)
			}
			e := engine.New(w.options())
			if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: childImage, Owner: "upload"}); !errors.Is(err, engine.ErrImageNotReady) {
				t.Fatalf("a clone of an image being destroyed: %v, want ErrImageNotReady", err)
			}
			if _, err := e.FinaliseImage(ctx, childImage); !errors.Is(err, engine.ErrImageNotPending) {
				t.Fatalf("a finalise of an image being destroyed: %v, want ErrImageNotPending (it would undo the destroy)", err)
			}
			if err := e.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := w.store.GetImage(ctx, childImage); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("image after reconcile: %v, want it gone", err)
			}
			if instances, _ := w.store.ListInstances(ctx, ""); len(instances) != 0 {
				t.Fatalf("instances after reconcile: %+v", instances)
			}
			if got := volumeNames(t, w.storage); len(got) != 0 {
				t.Fatalf("volumes after reconcile: %v, want none", got)
			}
			if pids := postmastersUnder(w.root); len(pids) != 0 {
				t.Fatalf("postmasters left running: %v", pids)
			}
		})
	}
}

func TestRestartAdoptsRunningInstances(t *testing.T) {
	w := newWorld(t, 5)
	out, err := w.runChild(t, "")
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	inst := w.childInstance(t, out)
	// The sindrid that made it has exited; the instance keeps answering.
	if got := mustSQL(t, passwordConn(inst), "select 'ok'"); got != "ok" {
		t.Fatal(got)
	}
	e := engine.New(w.options())
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := w.store.GetInstance(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	vol, _ := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	st, _ := postgres.Status(vol.Path)
	if after.Status != store.InstanceRunning || st.PID != inst.PID || after.PID != inst.PID {
		t.Fatalf("after restart: status %s, pid %d (recorded %d), want running with the same pid %d", after.Status, st.PID, after.PID, inst.PID)
	}
	mustSQL(t, certConn(t, inst), "select 'ok'")

	// A postmaster that died while no sindrid ran is started by the next.
	postgres.Stop(ctx, vol.Path, 5*time.Second)
	e = engine.New(w.options())
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	mustSQL(t, passwordConn(inst), "select 'ok'")
}

// A reconcile by the sindrid that runs an instance, which skips reading
// again an instance whose listing matches what runs, reads it again when
// it does not: a pid changed in the store behind the engine's back is put
// right, and a postmaster killed is started again.
func TestReconcileOfARunningInstanceFollowsWhatRuns(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	vol, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	if err != nil {
		t.Fatal(err)
	}
	recorded := func(t *testing.T, want store.InstanceStatus, pid int) {
		t.Helper()
		if err := e.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := w.store.GetInstance(ctx, inst.ID)
		if err != nil || got.Status != want || got.PID != pid {
			t.Fatalf("after a reconcile: %s with pid %d (%v), want %s with pid %d", got.Status, got.PID, err, want, pid)
		}
	}
	first, err := postgres.Status(vol.Path)
	if err != nil || !first.Alive {
		t.Fatalf("the new instance's postmaster: %+v %v", first, err)
	}
	recorded(t, store.InstanceRunning, first.PID)

	pgtest.Exec(t, w.dbURL, fmt.Sprintf("update instances set pid = 1 where id = %d", inst.ID))
	recorded(t, store.InstanceRunning, first.PID)

	// Killed: its postmaster.pid stays, naming a process that is gone.
	if err := syscall.Kill(first.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); postgres.Running(first.PID); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("postmaster %d still runs after SIGKILL", first.PID)
		}
	}
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	mustSQL(t, passwordConn(inst), "select 'ok'")
	st, err := postgres.Status(vol.Path)
	if err != nil || !st.Alive || st.PID == first.PID {
		t.Fatalf("after the postmaster died: %+v %v, want a new postmaster", st, err)
	}
	recorded(t, store.InstanceRunning, st.PID)
}

func TestFiftyInstancesAtOnce(t *testing.T) {
	w := newWorld(t, 60)
	e := engine.New(w.options())
	const n = 50
	var wg sync.WaitGroup
	insts := make([]store.Instance, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			insts[i], errs[i] = e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
	}
	for _, inst := range insts {
		if got := mustSQL(t, passwordConn(inst), "select current_setting('port')"); got != strconv.Itoa(inst.Port) {
			t.Fatalf("instance %d answers on port %s, want %d", inst.ID, got, inst.Port)
		}
	}
	for _, inst := range insts {
		if err := e.DestroyInstance(ctx, inst.ID); err != nil {
			t.Fatal(err)
		}
	}
	if pids := postmastersUnder(w.root); len(pids) != 0 {
		t.Fatalf("postmasters left: %v", pids)
	}
}

func TestClassifiedCreationErrorsLeaveNothing(t *testing.T) {
	w := newWorld(t, 1)
	w.makeImage(t, 2, "9.6")
	w.makeImage(t, 3, "-")
	e := engine.New(w.options())
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 2, Owner: "upload"}); !errors.Is(err, postgres.ErrVersionMissing) || !strings.Contains(err.Error(), "9.6") {
		t.Errorf("image of PostgreSQL 9.6: %v, want ErrVersionMissing naming 9.6", err)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 3, Owner: "upload"}); !errors.Is(err, postgres.ErrNotDataDir) {
		t.Errorf("image without PG_VERSION: %v, want ErrNotDataDir", err)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 99, Owner: "upload"}); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("missing image: %v, want ErrNotFound", err)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); !errors.Is(err, engine.ErrNoPort) {
		t.Errorf("second instance with one port: %v, want ErrNoPort", err)
	}
	instances, _ := w.store.ListInstances(ctx, "")
	if len(instances) != 1 {
		t.Fatalf("failed creations left records: %+v", instances)
	}
	if got := volumeNames(t, w.storage); strings.Join(got, ",") != "image-1,image-2,image-3,instance-"+strconv.FormatInt(instances[0].ID, 10) {
		t.Fatalf("volumes: %v", got)
	}
}

// A volume whose instance was destroyed (its tombstone in the store, its
// own record naming it) is removed once its grace period is over. One
// that nothing shows abandoned is kept, whatever the grace, and reported:
// a clone no instance of the store ever had, and a volume whose record
// names another creation of the destroyed instance's id.
func TestOrphanVolumesAreRemovedAfterGraceOnlyWhenProvenAbandoned(t *testing.T) {
	w := newWorld(t, 3)
	opts := w.options()
	e := engine.New(opts)
	destroyed, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	stopPostgres(t, mustVolume(t, w, engine.InstanceVolume(destroyed.ID)).Path)
	if err := w.store.DeleteInstance(ctx, destroyed.ID); err != nil { // its record goes; a tombstone stays
		t.Fatal(err)
	}
	if _, err := w.storage.Clone(ctx, "image-1", "instance-999"); err != nil {
		t.Fatal(err)
	}
	// Another destroyed instance, whose volume's record names a creation
	// at another time (as a reused id would).
	other, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	stopPostgres(t, mustVolume(t, w, engine.InstanceVolume(other.ID)).Path)
	forged := mustVolume(t, w, engine.InstanceVolume(other.ID)).Path + "/" + engine.VolumeRecordFile
	data, err := os.ReadFile(forged)
	if err != nil {
		t.Fatal(err)
	}
	created := other.CreatedAt.UTC().Format(time.RFC3339Nano)
	if !strings.Contains(string(data), created) {
		t.Fatalf("record %s does not hold the creation time %s", data, created)
	}
	if err := os.WriteFile(forged, []byte(strings.Replace(string(data), created, "2001-01-01T00:00:00Z", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := w.store.DeleteInstance(ctx, other.ID); err != nil {
		t.Fatal(err)
	}

	opts.OrphanGrace = time.Hour
	if err := engine.New(opts).Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.storage.Get(ctx, engine.InstanceVolume(destroyed.ID)); err != nil {
		t.Fatalf("orphan removed before its grace period: %v", err)
	}
	opts.OrphanGrace = 0
	e = engine.New(opts)
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.storage.Get(ctx, engine.InstanceVolume(destroyed.ID)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the destroyed instance's volume is still there after the grace period: %v", err)
	}
	for _, kept := range []string{"instance-999", engine.InstanceVolume(other.ID)} {
		if _, err := w.storage.Get(ctx, kept); err != nil {
			t.Errorf("%s, which nothing shows abandoned, was removed: %v", kept, err)
		}
	}
	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	problems := strings.Join(st.Problems, "\n")
	if st.Healthy || !strings.Contains(problems, "instance-999 (no instance 999 in the store, nor a tombstone of one)") ||
		!strings.Contains(problems, engine.InstanceVolume(other.ID)+" (records instance") {
		t.Fatalf("status healthy=%v problems %q; want both kept volumes named with their reasons", st.Healthy, st.Problems)
	}
}

func mustVolume(t testing.TB, w *world, name string) storage.Entry {
	t.Helper()
	v, err := w.storage.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func stopPostgres(t *testing.T, dataDir string) {
	t.Helper()
	if err := postgres.StopAll(ctx, dataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

func sqlQuiet(conn string) (string, error) {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	db, err := pgx.Connect(c, conn)
	if err != nil {
		return "", err
	}
	defer db.Close(ctx)
	var out string
	err = db.QueryRow(c, "select 'ok'").Scan(&out)
	return out, err
}

// superuserConn reaches an instance as the superuser over its private
// socket, as sindrid does.
func (w *world) superuserConn(inst store.Instance) string {
	return postgres.SocketURL(filepath.Join(w.runDir, strconv.FormatInt(inst.ID, 10)), inst.Port, "postgres", "postgres")
}
