package testfs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	zfs "github.com/mistifyio/go-zfs/v3"

	"github.com/sindri-db/sindri/pkg/testfs"
)

// realZFS is zfs-fuse's own zfs, which the adapter wraps.
func realZFS() string {
	if p := os.Getenv("ZFS_FUSE_ZFS"); p != "" {
		return p
	}
	return "/usr/sbin/zfs"
}

// realGet returns what the real zfs prints for `get -Hp -o value PROPS
// name`, one value per property.
func realGet(t *testing.T, name string, props ...string) []string {
	t.Helper()
	out, err := testfs.Run(context.Background(), realZFS(), "get", "-Hp", "-o", "value", strings.Join(props, ","), name)
	if err != nil {
		t.Fatal(err)
	}
	vals := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(vals) != len(props) {
		t.Fatalf("zfs get %v %s printed %q", props, name, out)
	}
	return vals
}

// realUint parses a value of realGet: "-" is 0, as go-zfs reads it.
func realUint(t *testing.T, v string) uint64 {
	t.Helper()
	if v == "-" {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("zfs printed %q for a size: %v", v, err)
	}
	return n
}

// settled reads name through go-zfs between two identical readings of the
// real zfs, so both saw the same sizes, and checks that they agree.
func settled(t *testing.T, name string) *zfs.Dataset {
	t.Helper()
	props := []string{"used", "referenced", "available", "usedbydataset", "origin", "type", "mountpoint", "compression", "quota", "volsize"}
	deadline := time.Now().Add(60 * time.Second)
	for {
		before := realGet(t, name, props...)
		ds, err := zfs.GetDataset(name)
		if err != nil {
			t.Fatalf("GetDataset(%s): %v", name, err)
		}
		after := realGet(t, name, props...)
		if !reflect.DeepEqual(before, after) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not settle: %v then %v", name, before, after)
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		want := map[string]string{}
		for i, p := range props {
			want[p] = after[i]
		}
		str := func(v string) string {
			if v == "-" {
				return ""
			}
			return v
		}
		for _, c := range []struct {
			prop string
			got  uint64
		}{
			{"used", ds.Used},
			{"referenced", ds.Referenced},
			{"available", ds.Avail},
			{"usedbydataset", ds.Usedbydataset},
			{"quota", ds.Quota},
			{"volsize", ds.Volsize},
		} {
			if w := realUint(t, want[c.prop]); c.got != w {
				t.Errorf("%s: go-zfs %s = %d, zfs get -Hp says %d", name, c.prop, c.got, w)
			}
		}
		for _, c := range []struct{ prop, got string }{
			{"origin", ds.Origin},
			{"type", ds.Type},
			{"mountpoint", ds.Mountpoint},
			{"compression", ds.Compression},
		} {
			if w := str(want[c.prop]); c.got != w {
				t.Errorf("%s: go-zfs %s = %q, zfs get -Hp says %q", name, c.prop, c.got, w)
			}
		}
		// zfs-fuse has neither property: the adapter prints "-".
		if ds.Written != 0 || ds.Logicalused != 0 {
			t.Errorf("%s: written = %d, logicalused = %d, want 0 and 0", name, ds.Written, ds.Logicalused)
		}
		if ds.Name != name {
			t.Errorf("GetDataset(%s).Name = %q", name, ds.Name)
		}
		return ds
	}
}

func names(ds []*zfs.Dataset) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Name)
	}
	return out
}

func sameNames(t *testing.T, what string, got []*zfs.Dataset, err error, want ...string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !reflect.DeepEqual(names(got), want) {
		t.Errorf("%s = %q, want %q", what, names(got), want)
	}
}

func zfsStderr(err error) string {
	var zerr *zfs.Error
	if errors.As(err, &zerr) {
		return zerr.Stderr
	}
	return ""
}

// unmountFirst unmounts pool's filesystems before ZFSPool's cleanup destroys
// the pool: zfs-fuse's `zpool destroy -f` fails with "pool is busy" when it
// has to unmount a filesystem itself shortly after it was mounted.
func unmountFirst(t *testing.T, pool string) {
	t.Cleanup(func() {
		ctx := context.Background()
		out, err := testfs.Run(ctx, realZFS(), "list", "-rH", "-t", "filesystem", "-o", "name,mounted,mountpoint", pool)
		if err != nil {
			t.Logf("listing %s: %v", pool, err)
			return
		}
		mounted := map[string]string{} // mountpoint → dataset
		var mountpoints []string
		for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			f := strings.SplitN(line, "\t", 3)
			if len(f) == 3 && f[1] == "yes" {
				mounted[f[2]] = f[0]
				mountpoints = append(mountpoints, f[2])
			}
		}
		// Nested mountpoints sort after the one they are in: undo them first.
		sort.Sort(sort.Reverse(sort.StringSlice(mountpoints)))
		for _, mp := range mountpoints {
			if _, err := testfs.Run(ctx, realZFS(), "unmount", mounted[mp]); err != nil {
				t.Logf("unmounting %s: %v", mounted[mp], err)
			}
		}
	})
}

func writeFile(t *testing.T, path string, content []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCompatGoZFS(t *testing.T) {
	pool := testfs.ZFSPool(t, 256<<20)
	unmountFirst(t, pool)
	if p, err := exec.LookPath("zfs"); err != nil || filepath.Base(filepath.Dir(p)) == "sbin" {
		t.Fatalf("zfs on PATH is %q (%v), want the adapter", p, err)
	}

	base := pool + "/base"
	fs, err := zfs.CreateFilesystem(base, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fs.Type != zfs.DatasetFilesystem || fs.Origin != "" || fs.Mountpoint == "" {
		t.Fatalf("CreateFilesystem: %+v", fs)
	}
	content := []byte(strings.Repeat("sindri compat\n", 10000))
	writeFile(t, filepath.Join(fs.Mountpoint, "hello.txt"), content)

	snap, err := fs.Snapshot("s1", false)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Name != base+"@s1" || snap.Type != zfs.DatasetSnapshot || snap.Avail != 0 || snap.Mountpoint != "" {
		t.Fatalf("Snapshot: %+v", snap)
	}
	clone, err := snap.Clone(pool+"/clones/c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if clone.Origin != snap.Name || clone.Type != zfs.DatasetFilesystem {
		t.Fatalf("Clone: origin %q type %q, want %q and %q", clone.Origin, clone.Type, snap.Name, zfs.DatasetFilesystem)
	}
	got, err := os.ReadFile(filepath.Join(clone.Mountpoint, "hello.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(content) {
		t.Fatalf("the clone's hello.txt has %d bytes, want the %d written", len(got), len(content))
	}

	// A mountpoint with a blank in it stays one field.
	spaced := filepath.Join(filepath.Dir(fs.Mountpoint), "with space")
	if _, err := zfs.CreateFilesystem(pool+"/spaced", map[string]string{"mountpoint": spaced}); err != nil {
		t.Fatal(err)
	}

	// Exact sizes, as zfs-fuse's own `zfs get -Hp` prints them.
	fsNow := settled(t, base)
	if fsNow.Used < uint64(len(content)) || fsNow.Referenced < uint64(len(content)) || fsNow.Avail == 0 {
		t.Errorf("%s: used %d, referenced %d, available %d after writing %d bytes", base, fsNow.Used, fsNow.Referenced, fsNow.Avail, len(content))
	}
	snapNow := settled(t, snap.Name)
	if snapNow.Type != zfs.DatasetSnapshot || snapNow.Referenced != fsNow.Referenced {
		t.Errorf("snapshot: type %q referenced %d, want snapshot and %d", snapNow.Type, snapNow.Referenced, fsNow.Referenced)
	}
	cloneNow := settled(t, clone.Name)
	if cloneNow.Origin != snap.Name {
		t.Errorf("clone origin %q, want %q", cloneNow.Origin, snap.Name)
	}
	if d := settled(t, pool+"/spaced"); d.Mountpoint != spaced {
		t.Errorf("mountpoint %q, want %q", d.Mountpoint, spaced)
	}
	settled(t, pool)

	if _, err := zfs.GetDataset(pool + "/missing"); err == nil {
		t.Error("GetDataset of a missing dataset succeeded")
	} else if !strings.Contains(zfsStderr(err), "does not exist") {
		t.Errorf("GetDataset of a missing dataset: %v", err)
	}

	// Listings, with the real command's order.
	ds, err := zfs.Datasets(pool)
	sameNames(t, "Datasets", ds, err, pool, base, snap.Name, pool+"/clones", clone.Name, pool+"/spaced")
	for _, d := range ds {
		if d.Name == clone.Name && d.Origin != snap.Name {
			t.Errorf("Datasets: clone origin %q", d.Origin)
		}
		if d.Written != 0 || d.Logicalused != 0 {
			t.Errorf("Datasets: %s written %d logicalused %d", d.Name, d.Written, d.Logicalused)
		}
	}
	ds, err = zfs.Filesystems(pool)
	sameNames(t, "Filesystems", ds, err, pool, base, pool+"/clones", clone.Name, pool+"/spaced")
	for _, d := range ds {
		if d.Type != zfs.DatasetFilesystem {
			t.Errorf("Filesystems: %s has type %q", d.Name, d.Type)
		}
	}
	ds, err = zfs.Filesystems(pool + "/clones")
	sameNames(t, "Filesystems(clones)", ds, err, pool+"/clones", clone.Name)
	ds, err = zfs.Snapshots(pool)
	sameNames(t, "Snapshots", ds, err, snap.Name)
	if len(ds) == 1 && (ds[0].Type != zfs.DatasetSnapshot || ds[0].Referenced != snapNow.Referenced) {
		t.Errorf("Snapshots: %+v", ds[0])
	}
	ds, err = zfs.Snapshots(pool + "/clones")
	sameNames(t, "Snapshots(clones)", ds, err)
	ds, err = fs.Snapshots()
	sameNames(t, "fs.Snapshots", ds, err, snap.Name)

	poolDS, err := zfs.GetDataset(pool)
	if err != nil {
		t.Fatal(err)
	}
	ds, err = poolDS.Children(1)
	sameNames(t, "Children(1)", ds, err, base, pool+"/clones", pool+"/spaced")
	ds, err = poolDS.Children(0)
	sameNames(t, "Children(0)", ds, err, base, snap.Name, pool+"/clones", clone.Name, pool+"/spaced")
	ds, err = fs.Children(0)
	sameNames(t, "fs.Children(0)", ds, err, snap.Name)

	// readonly=on: zfs-fuse enforces it, but its own `zfs get` says "off"
	// (source "temporary") for a mounted dataset; the adapter says "on".
	if v, err := clone.GetProperty("readonly"); err != nil || v != "off" {
		t.Fatalf("readonly before set: %q, %v", v, err)
	}
	if err := clone.SetProperty("readonly", "on"); err != nil {
		t.Fatal(err)
	}
	if v, err := clone.GetProperty("readonly"); err != nil || v != "on" {
		t.Errorf("readonly after set: %q, %v; want on", v, err)
	}
	err = os.WriteFile(filepath.Join(clone.Mountpoint, "new.txt"), []byte("x"), 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing to a readonly clone: %v, want EROFS", err)
	}
	if v, err := fs.GetProperty("readonly"); err != nil || v != "off" {
		t.Errorf("readonly of %s: %q, %v; want off", base, v, err)
	}
	if err := clone.SetProperty("readonly", "off"); err != nil {
		t.Fatal(err)
	}
	if v, err := clone.GetProperty("readonly"); err != nil || v != "off" {
		t.Errorf("readonly after set off: %q, %v; want off", v, err)
	}

	// Renaming a mounted filesystem: zfs-fuse's rename unmounts it and
	// then often finds it still busy ("dataset is busy"; reliably so for a
	// fresh leaf with no fsync since its mount), and mounts it back, so
	// trying again does not help. The adapter unmounts, renames (retrying
	// while busy) and mounts again.
	leaf, err := zfs.CreateFilesystem(pool+"/leaf", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(leaf.Mountpoint, "leaf.txt"), []byte("leaf"), 0o644); err != nil {
		t.Fatal(err)
	}
	leaf, err = leaf.Rename(pool+"/leaf2", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(leaf.Mountpoint, "leaf.txt")); err != nil || string(got) != "leaf" {
		t.Errorf("after Rename, leaf.txt in %s: %q, %v", leaf.Mountpoint, got, err)
	}
	if err := leaf.Destroy(zfs.DestroyDefault); err != nil {
		t.Fatal(err)
	}
	parent, err := zfs.CreateFilesystem(pool+"/ren", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zfs.CreateFilesystem(pool+"/ren/kid", nil); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(parent.Mountpoint, "top.txt"), []byte("top"))
	writeFile(t, filepath.Join(parent.Mountpoint, "kid", "kid.txt"), []byte("kid"))
	renamed, err := parent.Rename(pool+"/moved", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if renamed.Name != pool+"/moved" || renamed.Mountpoint != filepath.Join(filepath.Dir(parent.Mountpoint), "moved") {
		t.Errorf("Rename: %+v", renamed)
	}
	for file, want := range map[string]string{"top.txt": "top", "kid/kid.txt": "kid"} {
		if got, err := os.ReadFile(filepath.Join(renamed.Mountpoint, file)); err != nil || string(got) != want {
			t.Errorf("after Rename, %s: %q, %v; want %q", file, got, err, want)
		}
	}
	ds, err = renamed.Children(0)
	sameNames(t, "Children after Rename", ds, err, pool+"/moved/kid")
	if _, err := renamed.Rename(pool+"/spaced", false, false); err == nil || !strings.Contains(zfsStderr(err), "exists") {
		t.Errorf("Rename onto an existing dataset: %v", err)
	}
	if err := renamed.Destroy(zfs.DestroyRecursive); err != nil {
		t.Fatal(err)
	}

	// A snapshot with a dependent clone cannot be destroyed.
	err = snap.Destroy(zfs.DestroyDefault)
	if err == nil {
		t.Fatal("destroying a snapshot with a dependent clone succeeded")
	}
	if !strings.Contains(zfsStderr(err), "dependent clones") {
		t.Errorf("destroying a snapshot with a dependent clone: %v", err)
	}
	if _, err := zfs.GetDataset(snap.Name); err != nil {
		t.Errorf("the snapshot is gone after a failed destroy: %v", err)
	}
	if err := clone.Destroy(zfs.DestroyDefault); err != nil {
		t.Fatal(err)
	}
	if err := snap.Destroy(zfs.DestroyDefault); err != nil {
		t.Fatal(err)
	}
	if _, err := zfs.GetDataset(snap.Name); err == nil {
		t.Error("the destroyed snapshot is still there")
	}
	if _, err := fs.Snapshot("s2", false); err != nil {
		t.Fatal(err)
	}
	if err := fs.Destroy(zfs.DestroyRecursive); err != nil {
		t.Fatal(err)
	}
	ds, err = zfs.Datasets(pool)
	sameNames(t, "Datasets after destroy", ds, err, pool, pool+"/clones", pool+"/spaced")

	// The pool: zfs-fuse's zpool get has no -H or -p and prints sizes
	// only rounded, so the adapter gives "-" (0) for them.
	zp, err := zfs.GetZpool(pool)
	if err != nil {
		t.Fatal(err)
	}
	want := zfs.Zpool{Name: pool, Health: zfs.ZpoolOnline, DedupRatio: 1}
	if *zp != want {
		t.Errorf("GetZpool = %+v, want %+v", *zp, want)
	}
	if _, err := zfs.GetZpool(pool + "missing"); err == nil {
		t.Error("GetZpool of a missing pool succeeded")
	}
}

// TestCompatZpoolDestroy: go-zfs's CreateZpool, GetZpool and Zpool.Destroy
// on a second pool, then rounds of `zpool destroy -f` at once after a
// filesystem was mounted, which plain zfs-fuse now and then refuses with
// "pool is busy": a race, hence the rounds.
func TestCompatZpoolDestroy(t *testing.T) {
	ctx := context.Background()
	pool := testfs.ZFSPool(t, 256<<20)
	unmountFirst(t, pool)
	dir := t.TempDir()
	name := pool + "x"
	t.Cleanup(func() {
		// Only when the test failed before destroying it.
		if _, err := testfs.Run(ctx, "/usr/sbin/zpool", "list", name); err == nil {
			_, _ = testfs.Run(ctx, realZFS(), "unmount", name)
			if _, err := testfs.Run(ctx, "/usr/sbin/zpool", "destroy", "-f", name); err != nil {
				t.Logf("destroying %s: %v", name, err)
			}
		}
	})
	image := func(round int) string {
		img := filepath.Join(dir, fmt.Sprintf("extra%d.img", round))
		writeFile(t, img, nil)
		if err := os.Truncate(img, 128<<20); err != nil {
			t.Fatal(err)
		}
		return img
	}
	mnt := filepath.Join(dir, "mnt")

	zp, err := zfs.CreateZpool(name, nil, "-m", mnt, image(0))
	if err != nil {
		t.Fatal(err)
	}
	fs, err := zfs.CreateFilesystem(name+"/fs", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fs.Mountpoint, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := zfs.GetZpool(name)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != name || got.Health != zfs.ZpoolOnline {
		t.Errorf("GetZpool = %+v", *got)
	}
	if err := zp.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := zfs.GetZpool(name); err == nil {
		t.Fatalf("pool %s is still there after Destroy", name)
	}

	for round := 1; round <= 8; round++ {
		if _, err := zfs.CreateZpool(name, nil, "-m", mnt, image(round)); err != nil {
			t.Fatal(err)
		}
		// The adapter, first on PATH, for both.
		if _, err := testfs.Run(ctx, "zfs", "create", name+"/fs"); err != nil {
			t.Fatal(err)
		}
		if _, err := testfs.Run(ctx, "zpool", "destroy", "-f", name); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}
