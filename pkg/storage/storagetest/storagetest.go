// Package storagetest is the conformance suite that every storage driver
// runs, each on a real filesystem that its test makes.
//
// Where drivers differ the suite holds each to what its Capabilities
// declare, never skipping a check for want of one:
//
//   - ImmutableImages: every write into an image, root's included, fails
//     with EROFS or EPERM, and the image shows the volume's modes. Without
//     it: the image shows the volume's modes without write bits, and a
//     thread without CAP_DAC_OVERRIDE (as any user but root) is refused a
//     create, an overwrite, a remove and a mkdir with EACCES.
//   - ThinClones: 100 clones of a 200 MB image take under 5% of it in free
//     space and in ExclusiveBytes. Without it: each of 3 clones of a 64 MB
//     image counts the image's bytes (plus at most 1 MiB) as exclusive; the
//     free space they take is logged, not checked, as the filesystem may be
//     shared or share extents. Either way a write into a clone adds its
//     bytes to the clone's ExclusiveBytes and to no other's.
//   - SnapshotPinsSource: Destroy of a snapshot's source is refused with
//     ErrHasClones while the snapshot exists, or succeeds at once.
//   - AtomicSnapshot: every snapshot of a volume being written holds its
//     files as they were at one instant. Without it nothing is promised of
//     a volume being written, and the suite logs how many snapshots mixed
//     moments.
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/storage"
)

// Factory makes a driver on a new, empty filesystem of at least size bytes.
// The reopen function it returns makes a new driver object over the same
// filesystem, as a restart of sindrid would.
type Factory func(t testing.TB, size int64) (d storage.Driver, reopen func() storage.Driver)

const (
	smallFS = 512 << 20
	largeFS = 1536 << 20
)

// Run runs every conformance test against the driver the factory makes.
func Run(t *testing.T, factory Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"CloneSeesImageBytes", testCloneSeesImageBytes},
		{"CloneWritesAreIsolated", testCloneWritesAreIsolated},
		{"ImageIsReadOnly", testImageIsReadOnly},
		{"FreezeConsumesVolume", testFreezeConsumesVolume},
		{"DestroyCloneLeavesImageAndSiblings", testDestroyCloneLeavesImageAndSiblings},
		{"DestroyImageWithClonesRefused", testDestroyImageWithClonesRefused},
		{"SnapshotPinsSourceAsDeclared", testSnapshotPinsSourceAsDeclared},
		{"ClassifiedErrors", testClassifiedErrors},
		{"InvalidNamesRejected", testInvalidNamesRejected},
		{"ReopenListsWhatExists", testReopenListsWhatExists},
		{"ConcurrentCloneDestroyLeavesNoStray", testConcurrentCloneDestroy},
		{"ClonesCostAsDeclared", testClonesCostAsDeclared},
		{"CloneKeepsModesOwnersAndLinks", testCloneKeepsModesOwnersAndLinks},
		{"SnapshotIsAPointInTimeCopy", testSnapshotIsAPointInTimeCopy},
		{"SnapshotIsAtomicAsDeclared", testSnapshotIsAtomicAsDeclared},
		{"ListAndGetDuringChurn", testListAndGetDuringChurn},
		{"ExclusiveBytesOfMatchesSingle", testExclusiveBytesOfMatchesSingle},
		{"ExclusiveBytesOfDuringChurn", testExclusiveBytesOfDuringChurn},
		{"SendReceiveRoundTrip", testSendReceiveRoundTrip},
		{"ReceiveRefusesOtherFormats", testReceiveRefusesOtherFormats},
		{"ReceiveCutShortLeavesNothing", testReceiveCutShortLeavesNothing},
		{"SendReceiveClassifiedErrors", testSendReceiveClassifiedErrors},
		{"ReceiveIntoAFullFilesystem", testReceiveIntoAFullFilesystem},
		{"ReceiveRefusesUnsafeContent", testReceiveRefusesUnsafeContent},
		{"ReadingACloneKeepsAccessTimes", testReadingACloneKeepsAccessTimes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, factory) })
	}
}

var ctx = context.Background()

// fixture is a small data directory: a few files in nested directories and
// one larger file of random bytes.
var fixture = map[string][]byte{
	"PG_VERSION":        []byte("15\n"),
	"base/1/1259":       bytes.Repeat([]byte("relation page "), 600),
	"global/pg_control": randomBytes(8192),
	"big.dat":           randomBytes(3 << 20),
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

func writeFiles(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// digest maps every regular file under dir to its sha256.
func digest(t testing.TB, dir string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !de.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = sha256.Sum256(data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func fixtureDigest() map[string][32]byte {
	out := map[string][32]byte{}
	for name, data := range fixture {
		out[name] = sha256.Sum256(data)
	}
	return out
}

func sameDigest(a, b map[string][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// makeImage creates a volume, fills it with files and freezes it.
func makeImage(t testing.TB, d storage.Driver, name string, files map[string][]byte) storage.Entry {
	t.Helper()
	v, err := d.Create(ctx, name+"-upload")
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	writeFiles(t, v.Path, files)
	img, err := d.Freeze(ctx, v.Name, name)
	if err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	if img.Kind != storage.KindImage || img.Name != name {
		t.Fatalf("Freeze returned %+v, want image %q", img, name)
	}
	return img
}

func mustClone(t testing.TB, d storage.Driver, image, name string) storage.Entry {
	t.Helper()
	c, err := d.Clone(ctx, image, name)
	if err != nil {
		t.Fatalf("Clone(%s, %s): %v", image, name, err)
	}
	if c.Kind != storage.KindVolume || c.Origin != image || c.Name != name {
		t.Fatalf("Clone returned %+v, want volume %q from %q", c, name, image)
	}
	return c
}

func names(t testing.TB, d storage.Driver) []string {
	t.Helper()
	entries, err := d.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, fmt.Sprintf("%s:%s<%s", e.Kind, e.Name, e.Origin))
	}
	return out
}

func testCloneSeesImageBytes(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	img := makeImage(t, d, "image-1", fixture)
	if got := digest(t, img.Path); !sameDigest(got, fixtureDigest()) {
		t.Fatalf("image content differs from what was written into its volume")
	}
	c := mustClone(t, d, "image-1", "instance-1")
	if got := digest(t, c.Path); !sameDigest(got, fixtureDigest()) {
		t.Fatalf("clone content differs from the image")
	}
}

func testCloneWritesAreIsolated(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	img := makeImage(t, d, "image-1", fixture)
	a := mustClone(t, d, "image-1", "instance-a")
	b := mustClone(t, d, "image-1", "instance-b")

	writeFiles(t, a.Path, map[string][]byte{"base/1/1259": []byte("changed"), "new-in-a": []byte("x")})
	if err := os.Remove(filepath.Join(a.Path, "big.dat")); err != nil {
		t.Fatal(err)
	}
	// A write into the middle of a file, as Postgres does to a page.
	f, err := os.OpenFile(filepath.Join(a.Path, "global/pg_control"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("page"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	if got := digest(t, img.Path); !sameDigest(got, fixtureDigest()) {
		t.Errorf("a write in a clone changed the image")
	}
	if got := digest(t, b.Path); !sameDigest(got, fixtureDigest()) {
		t.Errorf("a write in a clone changed its sibling")
	}
	if got := digest(t, a.Path); sameDigest(got, fixtureDigest()) {
		t.Errorf("the clone's own writes are not visible in it")
	}
}

func testImageIsReadOnly(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	img := makeImage(t, d, "image-1", fixture)
	requireReadOnly(t, d, img.Path, "PG_VERSION", "big.dat")
	if got := digest(t, img.Path); !sameDigest(got, fixtureDigest()) {
		t.Errorf("image content changed")
	}
}

// requireReadOnly holds the image at dir to what the driver declares (see
// the package doc): file is a file in it and victim one to try removing.
func requireReadOnly(t *testing.T, d storage.Driver, dir, file, victim string) {
	t.Helper()
	attempts := map[string]func() error{
		"create a file": func() error { return os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644) },
		"overwrite a file": func() error {
			f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write([]byte("16\n"))
			return err
		},
		"remove a file": func() error { return os.Remove(filepath.Join(dir, victim)) },
		"make a dir":    func() error { return os.Mkdir(filepath.Join(dir, "dir"), 0o755) },
	}
	if d.Capabilities().ImmutableImages {
		attempts["chmod"] = func() error { return os.Chmod(filepath.Join(dir, file), 0o600) }
		for what, attempt := range attempts {
			if err := attempt(); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EPERM) {
				t.Errorf("%s in an image: got %v, want EROFS or EPERM", what, err)
			}
		}
		return
	}
	// Read-only by mode bits alone: none may be left, and they must bind
	// whoever cannot override them. (Root can; an owner could chmod.)
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.Type()&fs.ModeSymlink != 0 {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s in an image has write bits: %v", p, info.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	results := map[string]error{}
	if err := withoutFileOverride(func() {
		for what, attempt := range attempts {
			results[what] = attempt()
		}
	}); err != nil {
		t.Fatalf("dropping CAP_DAC_OVERRIDE on a thread: %v", err)
	}
	for what, err := range results {
		if !errors.Is(err, syscall.EACCES) {
			t.Errorf("%s in an image, without CAP_DAC_OVERRIDE: got %v, want EACCES", what, err)
		}
	}
}

// withoutFileOverride runs fn on an OS thread of its own that has dropped
// CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER, so that file modes
// bind it as they bind any user but root. Capabilities belong to a thread:
// the rest of the process keeps its own, and the thread ends with fn.
func withoutFileOverride(fn func()) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var caps [2]unix.CapUserData
		if err := unix.Capget(&hdr, &caps[0]); err != nil {
			done <- err
			return
		}
		for _, c := range []uint{unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH, unix.CAP_FOWNER} {
			caps[c/32].Effective &^= 1 << (c % 32)
			caps[c/32].Permitted &^= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &caps[0]); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	return <-done
}

func testSnapshotIsAPointInTimeCopy(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	makeImage(t, d, "image-1", fixture)
	c := mustClone(t, d, "image-1", "instance-1")
	writeFiles(t, c.Path, map[string][]byte{"base/1/1259": []byte("changed before")})
	want := digest(t, c.Path)

	snap, err := d.Snapshot(ctx, "instance-1", "backup-1")
	if err != nil {
		t.Fatalf("Snapshot of a volume: %v", err)
	}
	if snap.Kind != storage.KindImage || snap.Name != "backup-1" {
		t.Fatalf("Snapshot returned %+v, want image backup-1", snap)
	}
	writeFiles(t, c.Path, map[string][]byte{"base/1/1259": []byte("changed after"), "new": []byte("x")})
	if got := digest(t, snap.Path); !sameDigest(got, want) {
		t.Errorf("the snapshot does not hold the volume's bytes at the instant it was taken")
	}
	requireReadOnly(t, d, snap.Path, "PG_VERSION", "base/1/1259")
	if _, err := d.Snapshot(ctx, "instance-1", "backup-1"); !errors.Is(err, storage.ErrExists) {
		t.Errorf("a second snapshot of the same name: %v, want ErrExists", err)
	}
	if _, err := d.Snapshot(ctx, "instance-9", "backup-9"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("snapshot of a missing volume: %v, want ErrNotFound", err)
	}

	imgSnap, err := d.Snapshot(ctx, "image-1", "backup-2")
	if err != nil {
		t.Fatalf("Snapshot of an image: %v", err)
	}
	if got := digest(t, imgSnap.Path); !sameDigest(got, fixtureDigest()) {
		t.Errorf("the snapshot of an image differs from the image")
	}

	// While it exists the snapshot may pin its source (ZFS) or not
	// (BTRFS); either way the snapshot stays whole.
	if err := d.Destroy(ctx, "instance-1"); err != nil && !errors.Is(err, storage.ErrHasClones) {
		t.Fatalf("Destroy of a snapshotted volume: %v, want success or ErrHasClones", err)
	}
	if got := digest(t, snap.Path); !sameDigest(got, want) {
		t.Errorf("destroying the source changed the snapshot")
	}
	for _, name := range []string{"backup-1", "backup-2"} {
		if err := d.Destroy(ctx, name); err != nil {
			t.Fatalf("Destroy(%s): %v", name, err)
		}
	}
	if err := d.Destroy(ctx, "instance-1"); err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Destroy of the volume once its snapshot is gone: %v", err)
	}
	if err := d.Destroy(ctx, "image-1"); err != nil {
		t.Fatalf("Destroy of the image once its snapshot and clone are gone: %v", err)
	}
	if got := names(t, d); len(got) != 0 {
		t.Errorf("left after destroying everything: %v", got)
	}
}

// testSnapshotIsAtomicAsDeclared snapshots a volume while a writer
// counts up in two files, "first" and then "last", so that at every
// instant first is last or last+1, with 4 MB of other files between them
// for a copy to take time over. A driver that declares AtomicSnapshot
// must keep that in every snapshot; of one that does not, the suite only
// logs how many snapshots mixed moments.
func testSnapshotIsAtomicAsDeclared(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	isAtomic := d.Capabilities().AtomicSnapshot
	v, err := d.Create(ctx, "instance-1")
	if err != nil {
		t.Fatal(err)
	}
	between := map[string][]byte{}
	for i := range 16 {
		between[fmt.Sprintf("m/%02d", i)] = randomBytes(256 << 10)
	}
	writeFiles(t, v.Path, between)
	// Each file is replaced whole (a rename), so that at every instant it
	// holds a whole number.
	write := func(name string, n int) error {
		tmp := filepath.Join(v.Path, name+".new")
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(n)), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, filepath.Join(v.Path, name))
	}
	if err := write("first", 0); err != nil {
		t.Fatal(err)
	}
	if err := write("last", 0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for n := 1; ; n++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			if err := write("first", n); err != nil {
				writerDone <- err
				return
			}
			if err := write("last", n); err != nil {
				writerDone <- err
				return
			}
		}
	}()
	const snapshots = 10
	mixed := 0
	for i := range snapshots {
		snap, err := d.Snapshot(ctx, "instance-1", fmt.Sprintf("backup-%d", i))
		if err != nil {
			close(stop)
			t.Fatalf("Snapshot of a volume being written: %v", err)
		}
		var first, last int
		for name, n := range map[string]*int{"first": &first, "last": &last} {
			data, err := os.ReadFile(filepath.Join(snap.Path, name))
			if err == nil {
				*n, err = strconv.Atoi(string(data))
			}
			if err != nil {
				t.Fatalf("snapshot %d: %s: %v", i, name, err)
			}
		}
		if first != last && first != last+1 {
			mixed++
			if isAtomic {
				t.Errorf("snapshot %d holds first=%d, last=%d: not one instant (the writer writes first, then last)", i, first, last)
			}
		}
	}
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	if !isAtomic {
		t.Logf("%s declares no atomic snapshot: %d of %d snapshots of a volume being written mixed moments", d.Name(), mixed, snapshots)
	}
}

// testSnapshotPinsSourceAsDeclared holds the driver to its
// Capabilities().SnapshotPinsSource, for a snapshot of a volume and of an
// image: declared, Destroy of the source is refused with ErrHasClones
// while the snapshot exists, and succeeds once it is gone; not declared,
// the source can be destroyed at once. Either way the snapshot stays whole.
func testSnapshotPinsSourceAsDeclared(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	pins := d.Capabilities().SnapshotPinsSource
	makeImage(t, d, "image-1", fixture)
	c := mustClone(t, d, "image-1", "instance-1")
	writeFiles(t, c.Path, map[string][]byte{"base/1/1259": []byte("written in the clone")})
	cloneDigest := digest(t, c.Path)

	for _, tc := range []struct {
		source, snapshot string
		want             map[string][32]byte
	}{
		// The volume first: while it exists its image has a clone, and
		// could not be destroyed whatever the snapshot does.
		{"instance-1", "backup-1", cloneDigest},
		{"image-1", "backup-2", fixtureDigest()},
	} {
		snap, err := d.Snapshot(ctx, tc.source, tc.snapshot)
		if err != nil {
			t.Fatalf("Snapshot(%s): %v", tc.source, err)
		}
		err = d.Destroy(ctx, tc.source)
		switch {
		case pins && !errors.Is(err, storage.ErrHasClones):
			t.Fatalf("the driver declares that a snapshot pins its source, but Destroy(%s) while %s exists: %v, want ErrHasClones",
				tc.source, tc.snapshot, err)
		case !pins && err != nil:
			t.Fatalf("the driver declares that a snapshot does not pin its source, but Destroy(%s) while %s exists: %v",
				tc.source, tc.snapshot, err)
		}
		if got := digest(t, snap.Path); !sameDigest(got, tc.want) {
			t.Errorf("%s changed when its source %s was destroyed, or refused", tc.snapshot, tc.source)
		}
		if err := d.Destroy(ctx, tc.snapshot); err != nil {
			t.Fatalf("Destroy(%s): %v", tc.snapshot, err)
		}
		if pins {
			if err := d.Destroy(ctx, tc.source); err != nil {
				t.Fatalf("Destroy(%s) once its snapshot %s is gone: %v", tc.source, tc.snapshot, err)
			}
		}
	}
	if got := names(t, d); len(got) != 0 {
		t.Errorf("left after destroying everything: %v", got)
	}
}

func testFreezeConsumesVolume(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	makeImage(t, d, "image-1", fixture)
	if _, err := d.Get(ctx, "image-1-upload"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the frozen volume still exists: %v", err)
	}
	got, err := d.Get(ctx, "image-1")
	if err != nil || got.Kind != storage.KindImage {
		t.Fatalf("Get(image-1) = %+v, %v; want an image", got, err)
	}
}

func testDestroyCloneLeavesImageAndSiblings(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	img := makeImage(t, d, "image-1", fixture)
	a := mustClone(t, d, "image-1", "instance-a")
	b := mustClone(t, d, "image-1", "instance-b")
	writeFiles(t, b.Path, map[string][]byte{"only-in-b": []byte("b")})
	if err := d.Destroy(ctx, a.Name); err != nil {
		t.Fatalf("Destroy clone: %v", err)
	}
	if _, err := os.Stat(a.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destroyed clone's directory remains: %v", err)
	}
	if _, err := d.Get(ctx, a.Name); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get of destroyed clone: %v, want ErrNotFound", err)
	}
	if got := digest(t, img.Path); !sameDigest(got, fixtureDigest()) {
		t.Errorf("image changed when a clone was destroyed")
	}
	want := fixtureDigest()
	want["only-in-b"] = sha256.Sum256([]byte("b"))
	if got := digest(t, b.Path); !sameDigest(got, want) {
		t.Errorf("sibling changed when a clone was destroyed")
	}
	if got, want := names(t, d), []string{"image:image-1<", "volume:instance-b<image-1"}; !slices.Equal(got, want) {
		t.Errorf("List = %v, want %v", got, want)
	}
}

func testDestroyImageWithClonesRefused(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	img := makeImage(t, d, "image-1", fixture)
	mustClone(t, d, "image-1", "instance-a")
	err := d.Destroy(ctx, "image-1")
	if !errors.Is(err, storage.ErrHasClones) {
		t.Fatalf("Destroy of an image with a clone: %v, want ErrHasClones", err)
	}
	if got := digest(t, img.Path); !sameDigest(got, fixtureDigest()) {
		t.Fatalf("refused destroy changed the image")
	}
	if err := d.Destroy(ctx, "instance-a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, "image-1"); err != nil {
		t.Fatalf("Destroy of an image without clones: %v", err)
	}
	if _, err := os.Stat(img.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destroyed image's directory remains: %v", err)
	}
	if got := names(t, d); len(got) != 0 {
		t.Errorf("List after destroying everything = %v", got)
	}
}

func testClassifiedErrors(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	makeImage(t, d, "image-1", fixture)
	if _, err := d.Create(ctx, "volume-1"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		what string
		err  error
		want error
	}{}
	add := func(what string, err error, want error) {
		cases = append(cases, struct {
			what string
			err  error
			want error
		}{what, err, want})
	}
	_, err := d.Create(ctx, "volume-1")
	add("Create over a volume", err, storage.ErrExists)
	_, err = d.Create(ctx, "image-1")
	add("Create over an image", err, storage.ErrExists)
	_, err = d.Clone(ctx, "image-1", "volume-1")
	add("Clone over a volume", err, storage.ErrExists)
	_, err = d.Clone(ctx, "no-such-image", "clone-1")
	add("Clone of a missing image", err, storage.ErrNotFound)
	_, err = d.Clone(ctx, "volume-1", "clone-2")
	add("Clone of a volume", err, storage.ErrWrongKind)
	_, err = d.Freeze(ctx, "volume-1", "image-1")
	add("Freeze into an existing image", err, storage.ErrExists)
	_, err = d.Freeze(ctx, "image-1", "image-2")
	add("Freeze of an image", err, storage.ErrWrongKind)
	_, err = d.Freeze(ctx, "no-such-volume", "image-3")
	add("Freeze of a missing volume", err, storage.ErrNotFound)
	add("Destroy of a missing entry", d.Destroy(ctx, "no-such-thing"), storage.ErrNotFound)
	_, err = d.Get(ctx, "no-such-thing")
	add("Get of a missing entry", err, storage.ErrNotFound)
	_, err = d.ExclusiveBytes(ctx, "no-such-thing")
	add("ExclusiveBytes of a missing entry", err, storage.ErrNotFound)
	for _, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: got %v, want %v", c.what, c.err, c.want)
		}
	}
	if got, want := names(t, d), []string{"image:image-1<", "volume:volume-1<"}; !slices.Equal(got, want) {
		t.Errorf("failed calls changed what exists: List = %v, want %v", got, want)
	}
}

func testInvalidNamesRejected(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	makeImage(t, d, "image-1", fixture)
	if _, err := d.Create(ctx, "volume-1"); err != nil {
		t.Fatal(err)
	}
	before := names(t, d)
	bad := []string{"", ".", "..", "../x", "x/..", "a/b", "/abs", "a b", " a", "a\x00b", "a..b", "-x",
		"UPPER", "a\nb", string(make([]byte, 65))}
	for _, name := range bad {
		calls := map[string]error{}
		_, calls["Create"] = d.Create(ctx, name)
		_, calls["Clone to"] = d.Clone(ctx, "image-1", name)
		_, calls["Clone from"] = d.Clone(ctx, name, "clone-x")
		_, calls["Freeze from"] = d.Freeze(ctx, name, "image-x")
		_, calls["Freeze to"] = d.Freeze(ctx, "volume-1", name)
		_, calls["Snapshot from"] = d.Snapshot(ctx, name, "image-y")
		_, calls["Snapshot to"] = d.Snapshot(ctx, "volume-1", name)
		calls["Destroy"] = d.Destroy(ctx, name)
		_, calls["Get"] = d.Get(ctx, name)
		_, calls["ExclusiveBytes"] = d.ExclusiveBytes(ctx, name)
		_, calls["ExclusiveBytesOf"] = d.ExclusiveBytesOf(ctx, []string{"image-1", name})
		calls["Send"] = d.Send(ctx, name, io.Discard)
		_, calls["Receive"] = d.Receive(ctx, name, bytes.NewReader(nil))
		for call, err := range calls {
			if !errors.Is(err, storage.ErrInvalidName) {
				t.Errorf("%s(%q): got %v, want ErrInvalidName", call, name, err)
			}
		}
	}
	if after := names(t, d); !slices.Equal(before, after) {
		t.Errorf("rejected names changed what exists: %v, then %v", before, after)
	}
}

func testReopenListsWhatExists(t *testing.T, factory Factory) {
	d, reopen := factory(t, smallFS)
	makeImage(t, d, "image-1", fixture)
	makeImage(t, d, "image-2", map[string][]byte{"PG_VERSION": []byte("16\n")})
	mustClone(t, d, "image-1", "instance-1")
	mustClone(t, d, "image-2", "instance-2")
	if _, err := d.Create(ctx, "upload-3"); err != nil {
		t.Fatal(err)
	}
	want := []string{"image:image-1<", "image:image-2<", "volume:instance-1<image-1", "volume:instance-2<image-2", "volume:upload-3<"}
	if got := names(t, d); !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	d2 := reopen()
	if got := names(t, d2); !slices.Equal(got, want) {
		t.Fatalf("a new driver lists %v, want %v", got, want)
	}
	// The new driver object knows the relations too, not only the names.
	if err := d2.Destroy(ctx, "image-1"); !errors.Is(err, storage.ErrHasClones) {
		t.Fatalf("new driver destroyed an image with clones: %v", err)
	}
	c, err := d2.Get(ctx, "instance-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := digest(t, c.Path); !sameDigest(got, fixtureDigest()) {
		t.Fatalf("clone content differs through the new driver")
	}
}

func testConcurrentCloneDestroy(t *testing.T, factory Factory) {
	d, reopen := factory(t, smallFS)
	makeImage(t, d, "image-1", fixture)
	const workers, rounds = 20, 3
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*2)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				name := fmt.Sprintf("instance-%d-%d", w, r)
				c, err := d.Clone(ctx, "image-1", name)
				if err != nil {
					errs <- fmt.Errorf("Clone %s: %w", name, err)
					continue
				}
				if err := os.WriteFile(filepath.Join(c.Path, "mine"), []byte(name), 0o644); err != nil {
					errs <- err
				}
				if err := d.Destroy(ctx, name); err != nil {
					errs <- fmt.Errorf("Destroy %s: %w", name, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := []string{"image:image-1<"}
	if got := names(t, d); !slices.Equal(got, want) {
		t.Errorf("List after concurrent clones and destroys = %v, want %v", got, want)
	}
	if got := names(t, reopen()); !slices.Equal(got, want) {
		t.Errorf("a new driver lists %v, want %v", got, want)
	}
}

// churnFor is how long testListAndGetDuringChurn creates and destroys
// entries while it lists and gets.
const churnFor = 3 * time.Second

// testListAndGetDuringChurn lists and gets while other entries are created
// and destroyed from several goroutines, as sindrid does when creates race
// destroys: a List or Get never fails because of an entry that came or
// went meanwhile, what they return is whole, and a Get of a name being
// destroyed finds the entry or ErrNotFound, nothing else.
func testListAndGetDuringChurn(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	image := makeImage(t, d, "image-1", map[string][]byte{"PG_VERSION": []byte("15\n")})
	stable := map[string]storage.Entry{image.Name: image}
	for i := range 3 {
		c := mustClone(t, d, "image-1", fmt.Sprintf("stable-%d", i))
		stable[c.Name] = c
	}
	upload, err := d.Create(ctx, "upload-1")
	if err != nil {
		t.Fatal(err)
	}
	stable[upload.Name] = upload

	var (
		mu       sync.Mutex
		failures []string
		failed   atomic.Int64
	)
	fail := func(format string, args ...any) {
		if failed.Add(1) > 20 {
			return // the first twenty say enough
		}
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	// A churned name's parity tells how it was made (see churn).
	origin := func(name string) string {
		var w, i int
		fmt.Sscanf(name, "churn-%d-%d", &w, &i)
		if i%2 == 0 {
			return "image-1"
		}
		return ""
	}
	// check reports an entry that is not what its name says it is.
	check := func(call string, e storage.Entry) {
		want, isStable := stable[e.Name]
		switch {
		case isStable:
			if e != want {
				fail("%s: %+v, want %+v", call, e, want)
			}
		case strings.HasPrefix(e.Name, "churn-"):
			if e.Kind != storage.KindVolume || e.Origin != origin(e.Name) || !filepath.IsAbs(e.Path) {
				fail("%s: %+v, want a volume from %q with an absolute path", call, e, origin(e.Name))
			}
		default:
			fail("%s: an entry nobody made: %+v", call, e)
		}
	}

	const churners = 4
	churning, stop := context.WithTimeout(ctx, churnFor)
	defer stop()
	var (
		current [churners]atomic.Pointer[string] // the name each churner works on
		cycles  atomic.Int64
		lists   atomic.Int64
		gets    atomic.Int64
		found   atomic.Int64
		wg      sync.WaitGroup
	)
	for w := range churners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			churn(churning, d, w, &current[w], &cycles, fail)
		}()
	}
	readers := sync.WaitGroup{}
	readers.Add(3)
	go func() {
		defer readers.Done()
		for churning.Err() == nil {
			entries, err := d.List(ctx)
			if err != nil {
				fail("List: %v", err)
				continue
			}
			lists.Add(1)
			seen := map[string]bool{}
			for i, e := range entries {
				check("List", e)
				if i > 0 && entries[i-1].Name >= e.Name {
					fail("List is not sorted by name: %q before %q", entries[i-1].Name, e.Name)
				}
				seen[e.Name] = true
			}
			for name := range stable {
				if !seen[name] {
					fail("List left out %q, which nobody destroyed", name)
				}
			}
		}
	}()
	go func() {
		defer readers.Done()
		for churning.Err() == nil {
			for w := range churners {
				p := current[w].Load()
				if p == nil {
					continue
				}
				e, err := d.Get(ctx, *p)
				gets.Add(1)
				switch {
				case err == nil:
					found.Add(1)
					if e.Name != *p {
						fail("Get(%s) returned %+v", *p, e)
					}
					check("Get", e)
				case !errors.Is(err, storage.ErrNotFound):
					fail("Get(%s) while it comes and goes: %v, want the entry or ErrNotFound", *p, err)
				}
			}
		}
	}()
	go func() {
		defer readers.Done()
		for churning.Err() == nil {
			for name := range stable {
				e, err := d.Get(ctx, name)
				if err != nil {
					fail("Get(%s), which nobody destroyed: %v", name, err)
					continue
				}
				check("Get", e)
			}
		}
	}()
	wg.Wait()
	readers.Wait()
	t.Logf("%s: %d create/destroy cycles, %d lists, %d gets of a churned name (%d found) in %s",
		d.Name(), cycles.Load(), lists.Load(), gets.Load(), found.Load(), churnFor)
	for _, f := range failures {
		t.Error(f)
	}
	if n := failed.Load(); n > int64(len(failures)) {
		t.Errorf("... and %d more failures", n-int64(len(failures)))
	}
	// Nothing above may pass for want of trying.
	if cycles.Load() < churners || lists.Load() == 0 || gets.Load() == 0 {
		t.Errorf("too little happened to tell: %d cycles, %d lists, %d gets", cycles.Load(), lists.Load(), gets.Load())
	}
	want := []string{"image:image-1<", "volume:stable-0<image-1", "volume:stable-1<image-1", "volume:stable-2<image-1", "volume:upload-1<"}
	if got := names(t, d); !slices.Equal(got, want) {
		t.Errorf("List after the churn = %v, want %v", got, want)
	}
}

// node is what a clone must keep of each path besides its bytes.
type node struct {
	Mode     fs.FileMode
	UID, GID uint32
	Target   string // a symlink's, or the first path of a hard-linked file
	Mtime    int64
	Blocks   int64 // a sparse file's, to show its hole is kept
}

// holeAt is where the fixture's sparse file has its data: a copy that
// fills the hole takes at least that much disk. The blocks a kept hole
// costs are not compared with the volume's, because they differ between
// filesystems and moments: ZFS counts a write's blocks once its
// transaction group commits, a record (128 KiB) at a time.
const holeAt = 8 << 20

func holeFilled(n node) bool { return n.Blocks*512 >= holeAt }

// tree maps every path under dir to its node.
func tree(t testing.TB, dir string) map[string]node {
	t.Helper()
	out := map[string]node{}
	inos := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, p)
		n := node{Mode: info.Mode(), UID: st.Uid, GID: st.Gid, Mtime: info.ModTime().UnixNano()}
		if info.Mode()&fs.ModeSymlink != 0 {
			n.Target, _ = os.Readlink(p)
		}
		if rel == "sparse" {
			n.Blocks = st.Blocks
		}
		if info.Mode().IsRegular() && st.Nlink > 1 {
			// Hard links: name the first path of the inode instead.
			if first, ok := inos[st.Ino]; ok {
				n.Target = "link to " + first
			} else {
				inos[st.Ino] = rel
			}
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testCloneKeepsModesOwnersAndLinks freezes a volume of unusual modes,
// owners, links and a sparse file, and requires the image to show them as
// its capabilities say, and a clone of the image, and a clone of a
// snapshot of it, to have them all as the volume had.
func testCloneKeepsModesOwnersAndLinks(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	v, err := d.Create(ctx, "upload-1")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, v.Path, fixture)
	mustDo := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustDo(os.Chmod(filepath.Join(v.Path, "PG_VERSION"), 0o400))
	mustDo(os.Chmod(filepath.Join(v.Path, "big.dat"), 0o664))
	mustDo(os.Chmod(filepath.Join(v.Path, "global/pg_control"), 0o600))
	mustDo(os.Chmod(filepath.Join(v.Path, "base"), 0o750))
	mustDo(os.Chmod(v.Path, 0o700))
	mustDo(os.Symlink("../../global/pg_control", filepath.Join(v.Path, "base/1/link")))
	mustDo(os.Link(filepath.Join(v.Path, "base/1/1259"), filepath.Join(v.Path, "base/1/1259.hard")))
	sparse, err := os.Create(filepath.Join(v.Path, "sparse"))
	mustDo(err)
	_, err = sparse.WriteAt([]byte("data after a hole"), holeAt)
	mustDo(err)
	mustDo(sparse.Close())
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	mustDo(os.Chtimes(filepath.Join(v.Path, "big.dat"), old, old))
	if os.Geteuid() == 0 {
		mustDo(os.Lchown(filepath.Join(v.Path, "global"), 65534, 65534))
		mustDo(os.Lchown(filepath.Join(v.Path, "big.dat"), 65534, 0))
		mustDo(os.Lchown(filepath.Join(v.Path, "base/1/link"), 65534, 65534))
	} else {
		t.Log("not root: owners are not changed, so only that the copier keeps the caller's is checked")
	}
	want := tree(t, v.Path)
	if holeFilled(want["sparse"]) {
		t.Fatalf("the test's filesystem keeps no holes (%d blocks for an 8 MiB sparse file)", want["sparse"].Blocks)
	}
	img, err := d.Freeze(ctx, "upload-1", "image-1")
	if err != nil {
		t.Fatal(err)
	}
	// The image itself shows the volume's modes, less the write bits where
	// they are what makes it read-only.
	immutable := d.Capabilities().ImmutableImages
	got := tree(t, img.Path)
	if holeFilled(got["sparse"]) {
		t.Errorf("image-1 fills the hole of a sparse file: %d blocks", got["sparse"].Blocks)
	}
	for path, w := range want {
		if !immutable && w.Mode&fs.ModeSymlink == 0 {
			w.Mode &^= 0o222
		}
		g := got[path]
		g.Blocks, w.Blocks = 0, 0
		if g != w {
			t.Errorf("image-1 shows %s as %+v, want %+v (the volume's, immutable images: %v)", path, g, w, immutable)
		}
	}
	if _, err := d.Snapshot(ctx, "image-1", "image-2"); err != nil {
		t.Fatal(err)
	}
	for _, image := range []string{"image-1", "image-2"} {
		c := mustClone(t, d, image, "clone-of-"+image)
		got := tree(t, c.Path)
		for path, w := range want {
			g, ok := got[path]
			switch {
			case !ok:
				t.Errorf("a clone of %s lacks %s", image, path)
			case path == "sparse" && holeFilled(g):
				t.Errorf("a clone of %s fills the hole of a sparse file: %d blocks, the volume's had %d", image, g.Blocks, w.Blocks)
			case g.Mtime != w.Mtime:
				t.Errorf("a clone of %s changes the time of %s: %v, want %v", image, path, time.Unix(0, g.Mtime), time.Unix(0, w.Mtime))
			}
			g.Blocks, w.Blocks, g.Mtime, w.Mtime = 0, 0, 0, 0
			if ok && g != w {
				t.Errorf("a clone of %s has %s as %+v, want %+v as in the volume", image, path, g, w)
			}
		}
		for path := range got {
			if _, ok := want[path]; !ok {
				t.Errorf("a clone of %s has %s, which the volume had not", image, path)
			}
		}
	}
}

// testClonesCostAsDeclared measures the filesystem's free space and the
// clones' exclusive bytes before and after cloning an image: 100 clones of
// 200 MB for a driver that declares thin clones, 3 of 64 MB for one that
// copies.
func testClonesCostAsDeclared(t *testing.T, factory Factory) {
	d, _ := factory(t, largeFS)
	thin := d.Capabilities().ThinClones
	imageBytes, clones := 200<<20, 100
	if !thin {
		imageBytes, clones = 64<<20, 3
	}
	v, err := d.Create(ctx, "upload-1")
	if err != nil {
		t.Fatal(err)
	}
	chunk := randomBytes(1 << 20)
	for i := range 20 {
		f, err := os.Create(filepath.Join(v.Path, fmt.Sprintf("segment.%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		for j := range imageBytes / 20 / len(chunk) {
			chunk[0], chunk[1] = byte(i), byte(j) // no two chunks alike
			if _, err := f.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	imageBytes = imageBytes / 20 / len(chunk) * len(chunk) * 20 // what was written
	if _, err := d.Freeze(ctx, "upload-1", "image-1"); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	before, err := d.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range clones {
		mustClone(t, d, "image-1", fmt.Sprintf("instance-%d", i))
	}
	syscall.Sync()
	after, err := d.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	added := before.FreeBytes - after.FreeBytes
	var exclusive, least int64
	for i := range clones {
		n, err := d.ExclusiveBytes(ctx, fmt.Sprintf("instance-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		exclusive += n
		if i == 0 || n < least {
			least = n
		}
	}
	t.Logf("%s: %d clones of a %d MB image: free space fell by %d bytes (%.2f%% of the image); their exclusive bytes sum to %d (%.2f%%)",
		d.Name(), clones, imageBytes>>20, added, 100*float64(added)/float64(imageBytes), exclusive, 100*float64(exclusive)/float64(imageBytes))
	if thin {
		limit := int64(imageBytes / 20)
		if added >= limit {
			t.Errorf("%d clones took %d bytes of free space, want under %d (5%% of the image)", clones, added, limit)
		}
		if exclusive >= limit {
			t.Errorf("%d clones hold %d exclusive bytes, want under %d (5%% of the image)", clones, exclusive, limit)
		}
	} else {
		// Copies: each holds the image's bytes as its own. What free space
		// they take is logged above, not held to anything: a copying driver
		// may run on a filesystem others write to, or one that shares
		// extents between copies.
		if most := int64(imageBytes + 1<<20); least < int64(imageBytes) || exclusive > int64(clones)*most {
			t.Errorf("%d copies of %d bytes hold %d exclusive bytes (the least %d), want each between %d and %d",
				clones, imageBytes, exclusive, least, imageBytes, most)
		}
		if after.TotalBytes <= 0 || after.FreeBytes < 0 || after.FreeBytes > after.TotalBytes {
			t.Errorf("Capacity = %+v, want 0 <= free <= total, total > 0", after)
		}
	}

	// A clone's exclusive bytes grow by what is written into it, and only
	// by that.
	base, err := d.ExclusiveBytes(ctx, "instance-0")
	if err != nil {
		t.Fatal(err)
	}
	if thin {
		base = 0
	}
	const written = 4 << 20
	c, err := d.Get(ctx, "instance-0")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Path, "new.dat"), randomBytes(written), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	// ZFS accounts a write when its transaction group commits, seconds
	// later; wait for that, as a user re-running `zfs get used` would.
	var excl int64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if excl, err = d.ExclusiveBytes(ctx, "instance-0"); err != nil {
			t.Fatal(err)
		}
		if excl-base >= written || time.Now().After(deadline) {
			break
		}
	}
	if excl-base < written || excl-base > written+2<<20 {
		t.Errorf("ExclusiveBytes after writing %d bytes into a clone = %d, want %d plus at most 2 MiB of metadata more than its %d", written, excl, written, base)
	}
	other, err := d.ExclusiveBytes(ctx, "instance-1")
	if err != nil {
		t.Fatal(err)
	}
	if thin && other > 1<<20 {
		t.Errorf("ExclusiveBytes of an untouched clone = %d, want under 1 MiB", other)
	}
	if !thin && other > base {
		t.Errorf("ExclusiveBytes of an untouched copy = %d, more than %d before the write into its sibling", other, base)
	}
}

// Bench measures the two steps an instance's life costs the storage layer:
// cloning an image into a volume and destroying that volume. The image is
// a 64 MB data directory of 1,000 files; a copy-on-write clone's cost does
// not depend on it, which is the point.
func Bench(b *testing.B, factory Factory) {
	d, _ := factory(b, largeFS)
	files := map[string][]byte{}
	for i := range 1000 {
		files[fmt.Sprintf("base/%d/%d", i%10, i)] = randomBytes(64 << 10)
	}
	makeImage(b, d, "image-1", files)

	b.Run("Clone", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			name := fmt.Sprintf("clone-%d", i)
			if _, err := d.Clone(ctx, "image-1", name); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := d.Destroy(ctx, name); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	// What a user without sindri does: copy the data directory.
	b.Run("FullCopy", func(b *testing.B) {
		img, err := d.Get(ctx, "image-1")
		if err != nil {
			b.Fatal(err)
		}
		dst := filepath.Join(b.TempDir(), "copy")
		for i := 0; i < b.N; i++ {
			if out, err := exec.Command("cp", "-a", "--reflink=never", img.Path, dst).CombinedOutput(); err != nil {
				b.Fatalf("cp: %v %s", err, out)
			}
			b.StopTimer()
			os.RemoveAll(dst)
			b.StartTimer()
		}
	})
	b.Run("Destroy", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			name := fmt.Sprintf("destroy-%d", i)
			b.StopTimer()
			if _, err := d.Clone(ctx, "image-1", name); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := d.Destroy(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchGet measures Get of one clone with each number of volumes present
// (clones of one image), so that a lookup's cost can be seen not to grow
// with the number of volumes.
func BenchGet(b *testing.B, factory Factory, sizes ...int) {
	d, _ := factory(b, smallFS)
	makeImage(b, d, "image-1", map[string][]byte{"PG_VERSION": []byte("15\n")})
	made := 0
	for _, n := range sizes {
		for ; made < n; made++ {
			mustClone(b, d, "image-1", fmt.Sprintf("instance-%d", made))
		}
		b.Run(fmt.Sprintf("volumes=%d", n), func(b *testing.B) {
			name := fmt.Sprintf("instance-%d", n/2)
			for b.Loop() {
				if _, err := d.Get(ctx, name); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchCloneDestroy times a clone and its destroy with each count of other
// clones in sizes already made: the cost of a create and of a destroy as
// the host fills.
func BenchCloneDestroy(b *testing.B, factory Factory, sizes ...int) {
	d, _ := factory(b, smallFS)
	makeImage(b, d, "image-1", map[string][]byte{"PG_VERSION": []byte("15\n")})
	made := 0
	for _, n := range sizes {
		for ; made < n; made++ {
			mustClone(b, d, "image-1", fmt.Sprintf("instance-%d", made))
		}
		b.Run(fmt.Sprintf("volumes=%d", n), func(b *testing.B) {
			for b.Loop() {
				mustClone(b, d, "image-1", "timed")
				if err := d.Destroy(ctx, "timed"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// testReadingACloneKeepsAccessTimes: reading a clone of an image, or of an
// image made by Snapshot, writes nothing into it, not even an access time.
// On a copy-on-write filesystem an access time written into a clone copies
// the metadata its image shares with every other clone.
func testReadingACloneKeepsAccessTimes(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	if !d.Capabilities().ThinClones {
		t.Skip("a clone that is a copy shares no metadata with its image")
	}
	makeImage(t, d, "image-1", fixture)
	source := mustClone(t, d, "image-1", "instance-source")
	writeFiles(t, source.Path, map[string][]byte{"base/1/16384": []byte("written into the source")})
	if _, err := d.Snapshot(ctx, "instance-source", "image-2"); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	for _, image := range []string{"image-1", "image-2"} {
		c := mustClone(t, d, image, "instance-of-"+image)
		before := accessTimes(t, c.Path)
		time.Sleep(10 * time.Millisecond) // past the clock's granularity
		if err := filepath.WalkDir(c.Path, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.Type().IsRegular() {
				_, err = os.ReadFile(path)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		after := accessTimes(t, c.Path)
		for path, at := range before {
			if !after[path].Equal(at) {
				t.Errorf("clone of %s: reading %s changed its access time from %s to %s", image, path, at, after[path])
			}
		}
	}
}

// accessTimes is the access time of every file and directory under dir.
func accessTimes(t *testing.T, dir string) map[string]time.Time {
	t.Helper()
	out := map[string]time.Time{}
	if err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = time.Unix(st.Atim.Sec, st.Atim.Nsec)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// churn makes and destroys entries named churn-W-I, one after another,
// until until ends (each one is made and destroyed whole): even ones
// clones of image-1, odd ones empty volumes. It keeps the name it works
// on in current, counts each cycle in cycles, and stops at the first
// failure, told to fail.
func churn(until context.Context, d storage.Driver, w int, current *atomic.Pointer[string], cycles *atomic.Int64, fail func(format string, args ...any)) {
	for i := 0; until.Err() == nil; i++ {
		name := fmt.Sprintf("churn-%d-%d", w, i)
		current.Store(&name)
		var err error
		if i%2 == 0 {
			_, err = d.Clone(ctx, "image-1", name)
		} else {
			_, err = d.Create(ctx, name)
		}
		if err != nil {
			fail("making %s: %v", name, err)
			return
		}
		if err := d.Destroy(ctx, name); err != nil {
			fail("Destroy(%s): %v", name, err)
			return
		}
		cycles.Add(1)
	}
}
