package setup

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/testenv"
	"github.com/sindri-db/sindri/pkg/testfs"
)

var ctx = context.Background()

func unmountAtCleanup(t *testing.T, dir string) {
	t.Cleanup(func() {
		if fs, err := detect(dir); err == nil && fs.mountPoint == dir {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Logf("umount %s: %v %s", dir, err, out)
			}
		}
	})
}

func listNames(t *testing.T, d storage.Driver) []string {
	t.Helper()
	entries, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name)
	}
	return out
}

func TestLoopbackIsMadeAndMountedAgainAfterRestart(t *testing.T) {
	testenv.RequireRoot(t, "mount")
	base := t.TempDir()
	data := filepath.Join(base, "data")
	opts := Options{Driver: "auto", DataPath: data, LoopbackSize: 512 << 20}
	unmountAtCleanup(t, data)

	d, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "btrfs" {
		t.Fatalf("driver = %s, want btrfs", d.Name())
	}
	file := data + ".btrfs.img"
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil {
		t.Fatalf("loopback file: %v", err)
	}
	if st.Size != 512<<20 {
		t.Errorf("loopback file is %d bytes, want %d", st.Size, 512<<20)
	}
	if st.Blocks*512 >= st.Size/2 {
		t.Errorf("loopback file uses %d bytes on disk; it should be sparse", st.Blocks*512)
	}
	if _, err := d.Create(ctx, "upload-1"); err != nil {
		t.Fatal(err)
	}
	if opts := mountOptions(t, data); !slices.Contains(opts, "noatime") {
		t.Errorf("the loopback BTRFS is mounted with %v; want noatime, so that a read in a clone writes nothing", opts)
	}

	// A reboot: the mount is gone, the file stays.
	if out, err := exec.Command("umount", data).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(data, "volumes")); !os.IsNotExist(err) {
		t.Fatalf("the data path still shows the filesystem after umount: %v", err)
	}
	d, err = Open(ctx, opts)
	if err != nil {
		t.Fatalf("Open after restart: %v", err)
	}
	if got := listNames(t, d); !slices.Equal(got, []string{"upload-1"}) {
		t.Fatalf("after remount List = %v, want [upload-1]", got)
	}
	// And a start while it is mounted uses the mount as it is.
	d, err = Open(ctx, opts)
	if err != nil {
		t.Fatalf("Open while mounted: %v", err)
	}
	if got := listNames(t, d); !slices.Equal(got, []string{"upload-1"}) {
		t.Fatalf("List = %v, want [upload-1]", got)
	}
}

func TestBtrfsDataPathIsUsedAsItIs(t *testing.T) {
	mnt := testfs.Btrfs(t, 512<<20)
	data := filepath.Join(mnt, "sindri")
	d, err := Open(ctx, Options{Driver: "auto", DataPath: data, LoopbackSize: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "btrfs" {
		t.Fatalf("driver = %s, want btrfs", d.Name())
	}
	if _, err := os.Stat(data + ".btrfs.img"); !os.IsNotExist(err) {
		t.Fatalf("a loopback file was made although data_path is on BTRFS: %v", err)
	}
}

func TestZFSDataPathIsDetected(t *testing.T) {
	pool := testfs.ZFSPool(t, 512<<20)
	out, err := testfs.Run(ctx, "zfs", "get", "-H", "-o", "value", "mountpoint", pool)
	if err != nil {
		t.Fatal(err)
	}
	mnt := strings.TrimSpace(out)
	d, err := Open(ctx, Options{Driver: "auto", DataPath: mnt})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "zfs" {
		t.Fatalf("driver = %s, want zfs", d.Name())
	}
	v, err := d.Create(ctx, "upload-1")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(mnt, "volumes", "upload-1"); v.Path != want {
		t.Errorf("volume path = %s, want %s (under the data path)", v.Path, want)
	}
}

// A data_path that is a plain directory inside a ZFS dataset would not
// hold the volumes (datasets mount under their parent's mount point): it
// is refused with what to do, unless storage.zfs_dataset names one.
func TestZFSDataPathInsideADatasetIsRefused(t *testing.T) {
	pool := testfs.ZFSPool(t, 512<<20)
	out, err := testfs.Run(ctx, "zfs", "get", "-H", "-o", "value", "mountpoint", pool)
	if err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(strings.TrimSpace(out), "sindri")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, Options{Driver: "auto", DataPath: sub})
	if err == nil || !strings.Contains(err.Error(), "storage.zfs_dataset") || !strings.Contains(err.Error(), pool) {
		t.Fatalf("data_path inside dataset %s: %v, want a refusal that says what to do", pool, err)
	}
	d, err := Open(ctx, Options{Driver: "zfs", DataPath: sub, ZFSDataset: pool})
	if err != nil || d.Name() != "zfs" {
		t.Fatalf("with storage.zfs_dataset set: %v", err)
	}
}

func TestNeitherFilesystemNeedsLoopback(t *testing.T) {
	_, err := Open(ctx, Options{Driver: "auto", DataPath: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "storage.loopback_size") {
		t.Fatalf("got %v, want an error that names storage.loopback_size", err)
	}
}

func TestNonEmptyDataPathIsNotHidden(t *testing.T) {
	testenv.RequireRoot(t, "mount")
	data := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "precious"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	unmountAtCleanup(t, data)
	_, err := Open(ctx, Options{Driver: "auto", DataPath: data, LoopbackSize: 512 << 20})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("got %v, want a refusal to mount over a non-empty data path", err)
	}
	if _, err := os.Stat(filepath.Join(data, "precious")); err != nil {
		t.Fatalf("the existing file is hidden or gone: %v", err)
	}
}

func TestLoopbackFileInsideDataPathRefused(t *testing.T) {
	data := t.TempDir()
	_, err := Open(ctx, Options{Driver: "btrfs", DataPath: data, LoopbackSize: 512 << 20, LoopbackFile: filepath.Join(data, "fs.img")})
	if err == nil || !strings.Contains(err.Error(), "outside data_path") {
		t.Fatalf("got %v, want a refusal of a loopback file inside the data path", err)
	}
}

func TestMountFromInfo(t *testing.T) {
	info := `26 1 254:0 / / rw,relatime - ext4 /dev/vda rw
42 26 0:39 / /tmp/z/mnt rw,relatime - fuse.zfs pool rw,user_id=0
46 42 0:43 / /tmp/z/mnt/sp\040ace rw,relatime - fuse.zfs pool/sp\040ace rw,user_id=0
47 26 0:44 / /tmp/z/mntx rw,relatime shared:1 - btrfs /dev/loop0 rw
`
	cases := map[string]filesystem{
		"/etc":                {kind: "ext4", source: "/dev/vda", mountPoint: "/"},
		"/tmp/z/mnt/a":        {kind: "fuse.zfs", source: "pool", mountPoint: "/tmp/z/mnt"},
		"/tmp/z/mnt/sp ace/x": {kind: "fuse.zfs", source: "pool/sp ace", mountPoint: "/tmp/z/mnt/sp ace"},
		"/tmp/z/mntx":         {kind: "btrfs", source: "/dev/loop0", mountPoint: "/tmp/z/mntx"},
	}
	for path, want := range cases {
		got, err := mountFromInfo(strings.NewReader(info), path)
		if err != nil || got != want {
			t.Errorf("mountFromInfo(%s) = %+v, %v; want %+v", path, got, err, want)
		}
	}
}

// mountOptions are the options of the mount at dir, from mountinfo.
func mountOptions(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == dir {
			return strings.Split(f[5], ",")
		}
	}
	t.Fatalf("nothing is mounted on %s", dir)
	return nil
}
