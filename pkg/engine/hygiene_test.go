package engine_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/operation"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// finaliseEnv makes the child sindrid finalise that image instead.
const finaliseEnv = "SINDRI_ENGINE_TEST_FINALISE"

// childFinalise is the short-lived sindrid that finalises one image (a
// pull, when it has a source_url) and exits.
func childFinalise(id string) int {
	imageID, _ := strconv.ParseInt(id, 10, 64)
	s, err := store.Open(ctx, os.Getenv(dbEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := s.LoadKeyring(ctx, os.Getenv(keyEnv), false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	root := os.Getenv(rootEnv)
	d, err := openDriver(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	owner, _ := postgres.LookupUser("postgres")
	e := engine.New(engine.Options{
		Store: s, Storage: d, Owner: owner, BinPattern: pgtest.BinPattern, PublicHostname: "localhost",
		SharedBuffers: "16MB", RunDir: os.Getenv(runDirEnv), UploadsDir: filepath.Join(root, "image_uploads"),
		BackupsDir: filepath.Join(root, "backups"), Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if _, err := e.FinaliseImage(ctx, imageID); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// stallingProxy forwards TCP connections to a Postgres unix socket; while
// stalled, each connection gets budget bytes of the server's answer and
// then nothing more: a pull that hangs half way, as over a congested
// link.
type stallingProxy struct {
	addr    string
	budget  int64
	stalled atomic.Bool
	release chan struct{}
	once    sync.Once
	held    atomic.Int64 // connections being held
}

func newStallingProxy(t *testing.T, socketDir string, port int, budget int64) *stallingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallingProxy{addr: ln.Addr().String(), budget: budget, release: make(chan struct{})}
	p.stalled.Store(true)
	var conns sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.Release()
		conns.Wait()
	})
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer client.Close()
				server, err := net.Dial("unix", filepath.Join(socketDir, fmt.Sprintf(".s.PGSQL.%d", port)))
				if err != nil {
					return
				}
				defer server.Close()
				go func() {
					io.Copy(server, client)
					server.Close()
				}()
				p.serve(client, server)
			}()
		}
	}()
	return p
}

// serve copies the server's answer to the client, holding it once the
// budget is spent while the proxy is stalled.
func (p *stallingProxy) serve(client, server net.Conn) {
	buf := make([]byte, 32<<10)
	var sent int64
	for {
		if p.stalled.Load() && sent >= p.budget {
			p.held.Add(1)
			<-p.release
			p.held.Add(-1)
		}
		n, err := server.Read(buf)
		if n > 0 {
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
			sent += int64(n)
		}
		if err != nil {
			return
		}
	}
}

// Release lets every connection through from now on.
func (p *stallingProxy) Release() {
	p.once.Do(func() {
		p.stalled.Store(false)
		close(p.release)
	})
}

// liveProcesses lists the live processes named comm whose command line
// mentions dir.
func liveProcesses(comm, dir string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		state, name, ok := postgres.ProcessState(pid)
		if !ok || state == 'Z' || state == 'X' || name != comm {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmdline, []byte(dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func processAlive(pid int) bool {
	state, _, ok := postgres.ProcessState(pid)
	return ok && state != 'Z' && state != 'X'
}

// environOf reads a process's environment.
func environOf(pid int) string {
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	return string(bytes.ReplaceAll(env, []byte{0}, []byte{'\n'}))
}

// sindrid is killed with SIGKILL while pg_basebackup pulls an image from
// its source server. pg_basebackup dies with it (it was tied to the
// thread that started it); what is left of the pull (its WAL receiver,
// a forked child that no signal reached) is ended by the next start's
// reconcile, which finds it by the marks it carries; no pg_basebackup
// runs after that start, and the pull tried again completes.
func TestSIGKILLDuringAPullLeavesNoPgBasebackup(t *testing.T) {
	w := newWorld(t, 5)
	installation, err := w.store.InstallationID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	src := replicationSource(t)
	// Enough data that the pull is still under way when the proxy holds it.
	pgtest.Exec(t, src.SocketURL(), "create table bulk as select g, md5(g::text) as h from generate_series(1, 100000) g")
	proxy := newStallingProxy(t, src.SocketDir, src.Port, 1<<20)
	e := engine.New(w.options())
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: "postgres://postgres@" + proxy.addr + "/postgres"})
	if err != nil {
		t.Fatal(err)
	}

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=1", finaliseEnv+"="+strconv.FormatInt(img.ID, 10), dbEnv+"="+w.dbURL,
		rootEnv+"="+w.root, runDirEnv+"="+w.runDir, keyEnv+"="+w.store.Keyring().Path())
	var childLog testenv.SyncBuffer
	child.Stdout, child.Stderr = &childLog, &childLog
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	childDone := make(chan error, 1)
	go func() { childDone <- child.Wait() }()
	defer func() {
		if t.Failed() {
			t.Logf("child sindrid:\n%s", childLog.String())
		}
	}()

	// Until pg_basebackup runs, held by the proxy half way.
	var pulls []int
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		pulls = liveProcesses("pg_basebackup", w.root)
		if len(pulls) > 0 && proxy.held.Load() > 0 {
			break
		}
		select {
		case err := <-childDone:
			t.Fatalf("the child sindrid ended (%v) before its pull was held", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pull held after 2 minutes: pg_basebackup %v, held connections %d", pulls, proxy.held.Load())
		}
	}
	var leader int
	for _, pid := range pulls {
		env := environOf(pid)
		if !strings.Contains(env, operation.Env+"="+operation.Name(installation, "pull", engine.ImageVolume(img.ID))) ||
			!strings.Contains(env, operation.OwnerEnv+"="+strconv.Itoa(child.Process.Pid)+":") {
			t.Fatalf("pg_basebackup %d does not carry the marks of its operation and sindrid:\n%s", pid, env)
		}
		if postgres.ParentPID(pid) == child.Process.Pid {
			leader = pid
		}
	}
	if leader == 0 {
		t.Fatalf("none of the pg_basebackup processes %v is the child sindrid's", pulls)
	}
	t.Logf("pull under way: pg_basebackup %v (started by sindrid %d: %d)", pulls, child.Process.Pid, leader)

	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-childDone
	killed := time.Now()
	for processAlive(leader) {
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("pg_basebackup %d still runs %s after its sindrid was killed", leader, time.Since(killed))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("pg_basebackup %d ended %s after its sindrid; left: %v", leader, time.Since(killed).Round(time.Millisecond), liveProcesses("pg_basebackup", w.root))

	// The next start.
	next := engine.New(w.options())
	if err := next.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if left := liveProcesses("pg_basebackup", w.root); len(left) > 0 {
		t.Fatalf("pg_basebackup still running after the next start's reconcile: %v", left)
	}
	got, err := w.store.GetImage(ctx, img.ID)
	if err != nil || got.Status != store.ImageFailed || !strings.Contains(got.Error, "interrupted") {
		t.Fatalf("the image after the next start: %+v %v, want failed, interrupted", got, err)
	}

	proxy.Release()
	if got, err = next.FinaliseImage(ctx, img.ID); err != nil || got.Status != store.ImageReady {
		t.Fatalf("the pull tried again: %+v %v", got, err)
	}
	inst, err := next.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	if n := mustSQL(t, certConn(t, inst), "select count(*)::text from bulk"); n != "100000" {
		t.Fatalf("rows of bulk in the clone: %s", n)
	}
	if left := liveProcesses("pg_basebackup", w.root); len(left) > 0 {
		t.Fatalf("pg_basebackup left after the pull: %v", left)
	}
}

// silentListener accepts connections and never answers: a pg_basebackup
// against it waits for ever.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return ln.Addr().String()
}

// startedPgBasebackup starts pg_basebackup into a fresh directory under
// dir against a server that never answers, with env added; it is killed
// at cleanup.
func startedPgBasebackup(t *testing.T, dir, server string, env ...string) *exec.Cmd {
	t.Helper()
	host, port, _ := net.SplitHostPort(server)
	target, err := os.MkdirTemp(dir, "pull")
	if err != nil {
		t.Fatal(err)
	}
	bin := strings.ReplaceAll(pgtest.BinPattern, "{version}", "15")
	cmd := exec.Command(filepath.Join(bin, "pg_basebackup"), "-h", host, "-p", port, "-U", "postgres", "-D", target, "--no-password")
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=0"}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return cmd
}

// Reconcile ends the operation processes of a sindrid that is gone, found
// by their marks (a pid whose start time is not the owner's counts as
// gone: the pid was reused), and leaves those of a live sindrid and any
// process without the marks. A finalise of an image whose pull another
// live sindrid runs is refused rather than run twice.
func TestReconcileEndsOperationsOfAGoneSindridOnly(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: "postgres://postgres@127.0.0.1:1/postgres"})
	if err != nil {
		t.Fatal(err)
	}
	server := silentListener(t)
	dir := t.TempDir()

	// A live "sindrid": a process whose pid and start time are known.
	other := exec.Command("sleep", "600")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", other.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	liveOwner := fmt.Sprintf("%d:%s", other.Process.Pid, fields[19])
	goneOwner := fmt.Sprintf("%d:%s", other.Process.Pid, "1") // same pid, another start: reused

	installation, err := w.store.InstallationID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stray := startedPgBasebackup(t, dir, server, operation.Env+"="+operation.Name(installation, "pull", "image-4242"), operation.OwnerEnv+"="+goneOwner)
	strayOfBefore := startedPgBasebackup(t, dir, server, operation.Env+"=pull image-4243", operation.OwnerEnv+"="+goneOwner)
	pulling := startedPgBasebackup(t, dir, server, operation.Env+"="+operation.Name(installation, "pull", engine.ImageVolume(img.ID)), operation.OwnerEnv+"="+liveOwner)
	unmarked := startedPgBasebackup(t, dir, server)
	// Another installation on this host, whose sindrid is gone too, and
	// whose images have the same names: its operations are not ours to end.
	otherInstallations := startedPgBasebackup(t, dir, server, operation.Env+"="+operation.Name("another-installation", "pull", "image-4242"), operation.OwnerEnv+"="+goneOwner)
	for _, c := range []*exec.Cmd{stray, strayOfBefore, pulling, unmarked, otherInstallations} {
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(environOf(c.Process.Pid), "PATH="); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("pg_basebackup %d never exec'd", c.Process.Pid)
			}
		}
	}

	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*exec.Cmd{stray, strayOfBefore} {
		if processAlive(c.Process.Pid) {
			t.Errorf("the pull of a gone sindrid (%d) still runs after reconcile", c.Process.Pid)
		}
	}
	for _, c := range []*exec.Cmd{pulling, unmarked, otherInstallations} {
		if !processAlive(c.Process.Pid) {
			t.Errorf("pg_basebackup %d, not a gone sindrid's, was ended", c.Process.Pid)
		}
	}

	got, err := e.FinaliseImage(ctx, img.ID)
	if !errors.Is(err, engine.ErrFinaliseFailed) || !strings.Contains(got.Error, "another sindrid is running this operation") {
		t.Fatalf("finalise while another sindrid pulls the image: %+v %v, want it refused", got, err)
	}
	if !processAlive(pulling.Process.Pid) {
		t.Errorf("the other sindrid's pull was ended by the refused finalise")
	}

	// Once that pull is over, another installation's live pull of an image
	// of the same name does not hold this one's finalise back.
	pulling.Process.Kill()
	pulling.Wait()
	othersPull := startedPgBasebackup(t, dir, server, operation.Env+"="+operation.Name("another-installation", "pull", engine.ImageVolume(img.ID)), operation.OwnerEnv+"="+liveOwner)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(environOf(othersPull.Process.Pid), "PATH="); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pg_basebackup %d never exec'd", othersPull.Process.Pid)
		}
	}
	got, err = e.FinaliseImage(ctx, img.ID)
	if err == nil || strings.Contains(got.Error, "another sindrid is running this operation") {
		t.Fatalf("finalise while another installation pulls an image of the same name: %+v %v, want it to pull (and fail to reach port 1)", got, err)
	}
	if !processAlive(othersPull.Process.Pid) || !processAlive(otherInstallations.Process.Pid) {
		t.Errorf("the finalise ended another installation's operations")
	}
}

// Reconcile sweeps what uploads cut short and finalises or instances that
// are gone leave: the temporary files of HTTP uploads (older than the
// grace, and not being received), and socket directories of finalises
// not running and of instances with neither record nor volume. What is in
// use, young, or not sindri's to sweep stays.
func TestReconcileSweepsUploadFilesAndSocketDirs(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	uploads := filepath.Join(w.root, "image_uploads", strconv.FormatInt(img.ID, 10))
	old := time.Now().Add(-2 * engine.StrayGrace)
	backdate := func(path string) {
		t.Helper()
		if err := unix.Lutimes(path, []unix.Timeval{unix.NsecToTimeval(old.UnixNano()), unix.NsecToTimeval(old.UnixNano())}); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path string, aged bool) string {
		t.Helper()
		if err := os.WriteFile(path, []byte("part of an upload"), 0o600); err != nil {
			t.Fatal(err)
		}
		if aged {
			backdate(path)
		}
		return path
	}
	mkdir := func(path string, aged bool) string {
		t.Helper()
		if err := os.MkdirAll(path, 0o700); err != nil {
			t.Fatal(err)
		}
		if aged {
			backdate(path)
		}
		return path
	}

	// An upload being received: its temporary file, aged as if the
	// client paused for long.
	pr, pw := io.Pipe()
	uploaded := make(chan error, 1)
	go func() {
		_, err := e.UploadImage(ctx, img.ID, pr)
		uploaded <- err
	}()
	if _, err := pw.Write([]byte("the first bytes")); err != nil {
		t.Fatal(err)
	}
	var receiving string
	for deadline := time.Now().Add(10 * time.Second); receiving == ""; time.Sleep(5 * time.Millisecond) {
		matches, _ := filepath.Glob(filepath.Join(uploads, engine.UploadTempPrefix+"*"))
		if len(matches) == 1 {
			receiving = matches[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload being received has no temporary file")
		}
	}
	backdate(receiving)

	target := write(filepath.Join(t.TempDir(), "not-an-upload"), false)
	cutShort := write(filepath.Join(uploads, engine.UploadTempPrefix+"cut-short"), true)
	link := filepath.Join(uploads, engine.UploadTempPrefix+"link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	backdate(link)
	young := write(filepath.Join(uploads, engine.UploadTempPrefix+"young"), false)
	aDir := mkdir(filepath.Join(uploads, engine.UploadTempPrefix+"dir"), true)
	upload := write(filepath.Join(uploads, "scp-upload.tar"), true)

	finaliseGone := mkdir(filepath.Join(w.runDir, "image-"+strconv.FormatInt(img.ID+40, 10)), true)
	finaliseYoung := mkdir(filepath.Join(w.runDir, "image-"+strconv.FormatInt(img.ID+41, 10)), false)
	instanceGone := mkdir(filepath.Join(w.runDir, "4242"), true)
	instanceHere := filepath.Join(w.runDir, strconv.FormatInt(inst.ID, 10))
	backdate(instanceHere)
	notOurs := mkdir(filepath.Join(w.runDir, "notours"), true)

	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{cutShort, link, finaliseGone, instanceGone} {
		if _, err := os.Lstat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after reconcile: %v", gone, err)
		}
	}
	for _, kept := range []string{receiving, young, aDir, upload, target, finaliseYoung, instanceHere, notOurs} {
		if _, err := os.Lstat(kept); err != nil {
			t.Errorf("%s was swept: %v", kept, err)
		}
	}
	mustSQL(t, w.superuserConn(inst), "select 'its socket works'")

	// The upload being received completes.
	archive := []byte("a whole tarball, as far as this test goes")
	if _, err := pw.Write(archive); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-uploaded; err != nil {
		t.Fatalf("the upload being received during the sweep: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(uploads, engine.UploadFile)); err != nil || !bytes.HasSuffix(got, archive) {
		t.Fatalf("the upload: %q %v", got, err)
	}
}

// Finalises of one image asked for at once, while its pull is held, share
// one pull: one pg_basebackup, and every caller gets the ready image.
func TestFinalisesAtOnceRunOnePull(t *testing.T) {
	w := newWorld(t, 5)
	src := replicationSource(t)
	pgtest.Exec(t, src.SocketURL(), "create table bulk as select g, md5(g::text) as h from generate_series(1, 100000) g")
	proxy := newStallingProxy(t, src.SocketDir, src.Port, 1<<20)
	e := engine.New(w.options())
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: "postgres://postgres@" + proxy.addr + "/postgres"})
	if err != nil {
		t.Fatal(err)
	}
	const callers = 3
	results := make(chan error, callers)
	for range callers {
		go func() {
			got, err := e.FinaliseImage(ctx, img.ID)
			if err == nil && got.Status != store.ImageReady {
				err = fmt.Errorf("finalise returned %+v", got)
			}
			results <- err
		}()
	}
	for deadline := time.Now().Add(2 * time.Minute); proxy.held.Load() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no pull held after 2 minutes")
		}
	}
	time.Sleep(500 * time.Millisecond) // room for a second pull, were one to start
	var ours []int
	for _, pid := range liveProcesses("pg_basebackup", w.root) {
		if postgres.ParentPID(pid) == os.Getpid() {
			ours = append(ours, pid)
		}
	}
	if len(ours) != 1 {
		t.Fatalf("%d finalises at once run pg_basebackup %v, want one", callers, ours)
	}
	proxy.Release()
	for range callers {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
}

// sindrid is killed while a finalise runs the anonymisation script: psql
// dies with it, the private postmaster (in a session of its own, like
// every postmaster) outlives it, and the next start's reconcile stops
// that postmaster, marks the image failed and, once it is older than the
// grace, removes the finalise's socket directory.
func TestSIGKILLDuringAnonymisationLeavesNothingRunning(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	img := newImage(t, e, "select pg_sleep(600);", sourceTarball(t))

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=1", finaliseEnv+"="+strconv.FormatInt(img.ID, 10), dbEnv+"="+w.dbURL,
		rootEnv+"="+w.root, runDirEnv+"="+w.runDir, keyEnv+"="+w.store.Keyring().Path())
	var childLog testenv.SyncBuffer
	child.Stdout, child.Stderr = &childLog, &childLog
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	childDone := make(chan error, 1)
	go func() { childDone <- child.Wait() }()
	defer func() {
		if t.Failed() {
			t.Logf("child sindrid:\n%s", childLog.String())
		}
	}()
	socketDir := filepath.Join(w.runDir, engine.ImageVolume(img.ID))
	var psql []int
	for deadline := time.Now().Add(2 * time.Minute); len(psql) == 0; time.Sleep(20 * time.Millisecond) {
		psql = liveProcesses("psql", socketDir)
		select {
		case err := <-childDone:
			t.Fatalf("the child sindrid ended (%v) before its script ran", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no psql running the script after 2 minutes")
		}
	}
	upload := mustVolume(t, w, engine.UploadVolume(img.ID)).Path
	private := postgres.Postmasters(upload)
	if len(private) != 1 {
		t.Fatalf("private postmasters on %s: %v, want one", upload, private)
	}

	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-childDone
	for deadline := time.Now().Add(5 * time.Second); len(liveProcesses("psql", socketDir)) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("psql %v still runs 5 s after its sindrid was killed", liveProcesses("psql", socketDir))
		}
	}
	if !processAlive(private[0]) {
		t.Fatalf("the private postmaster %d died with sindrid: the test does not build its case", private[0])
	}

	next := engine.New(w.options())
	if err := next.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if left := postgres.Postmasters(upload); len(left) > 0 || processAlive(private[0]) {
		t.Fatalf("postgres still running on the upload volume after the next start's reconcile: %v", left)
	}
	got, err := w.store.GetImage(ctx, img.ID)
	if err != nil || got.Status != store.ImageFailed || !strings.Contains(got.Error, "interrupted") {
		t.Fatalf("the image after the next start: %+v %v, want failed, interrupted", got, err)
	}
	if _, err := os.Stat(socketDir); err != nil {
		t.Fatalf("the finalise's socket directory went before its grace: %v", err)
	}
	old := time.Now().Add(-2 * engine.StrayGrace)
	if err := os.Chtimes(socketDir, old, old); err != nil {
		t.Fatal(err)
	}
	if err := next.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(socketDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the finalise's socket directory %s after the grace: %v", socketDir, err)
	}
}
