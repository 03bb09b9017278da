// Package testfs makes real filesystems for tests: a loopback BTRFS, a
// ZFS pool in a file under zfs-fuse, and a sized tmpfs. Each is made in
// the test's temporary directory and torn down by the test's cleanup.
package testfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/testenv"
)

// Run runs a command with a deadline and returns its combined output; a
// failure carries the output.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func need(t testing.TB, commands ...string) {
	t.Helper()
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s is not installed; `make deps` installs it", c)
		}
	}
}

// Btrfs makes a sparse file of size bytes, formats it BTRFS, mounts it on a
// fresh directory and returns that directory. Cleanup unmounts it.
func Btrfs(t testing.TB, size int64) string {
	t.Helper()
	testenv.RequireRoot(t, "mount filesystems")
	need(t, "mkfs.btrfs", "mount", "umount")
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "btrfs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(createEmpty(t, img), size); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, "mkfs.btrfs", "-q", "-f", img); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, "mount", "-o", "loop", img, mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := Run(ctx, "umount", mnt); err != nil {
			// A lazy unmount still frees the loop device once nothing uses it.
			t.Logf("umount %s: %v", mnt, err)
			_, _ = Run(ctx, "umount", "-l", mnt)
			_ = out
		}
	})
	return mnt
}

// Tmpfs mounts a tmpfs of size bytes on a fresh directory and returns that
// directory: a filesystem of its own, whose free space only the test
// spends, with none of BTRFS's or ZFS's features. Cleanup unmounts it.
func Tmpfs(t testing.TB, size int64) string {
	t.Helper()
	testenv.RequireRoot(t, "mount filesystems")
	need(t, "mount", "umount")
	ctx := context.Background()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, "mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0755", size), "tmpfs", mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := Run(ctx, "umount", mnt); err != nil {
			t.Logf("umount %s: %v", mnt, err)
			_, _ = Run(ctx, "umount", "-l", mnt)
		}
	})
	return mnt
}

func createEmpty(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// CompatDir returns a directory holding a `zfs` and a `zpool` that run
// zfs-fuse-compat (beside this file), for putting first on PATH.
func CompatDir(t testing.TB) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "zfs-fuse-compat")
	script, err := filepath.Abs(script)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("zfs adapter missing: %v", err)
	}
	dir := t.TempDir()
	for _, name := range []string{"zfs", "zpool"} {
		if err := os.Symlink(script, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// ZFSPool makes a ZFS pool in a sparse file under zfs-fuse (starting the
// daemon when it is not running), puts zfs-fuse-compat first on PATH as
// `zfs` and `zpool`, and returns the pool's name. Cleanup destroys the
// pool.
func ZFSPool(t testing.TB, size int64) string {
	t.Helper()
	testenv.RequireRoot(t, "mount filesystems")
	need(t, "zpool", "zfs", "zfs-fuse")
	ctx := context.Background()
	if err := EnsureZFSDaemon(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "zpool.img")
	if err := os.Truncate(createEmpty(t, img), size); err != nil {
		t.Fatal(err)
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	pool := "sindritest" + hex.EncodeToString(suffix[:])
	mnt := filepath.Join(dir, "mnt")
	if _, err := Run(ctx, "zpool", "create", "-m", mnt, pool, img); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// zfs-fuse answers "pool is busy" for a moment after a mount.
		var err error
		for range 50 {
			if _, err = Run(ctx, "zpool", "destroy", "-f", pool); err == nil || !strings.Contains(err.Error(), "busy") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("destroying pool %s: %v", pool, err)
		}
	})
	t.Setenv("PATH", CompatDir(t)+string(os.PathListSeparator)+os.Getenv("PATH"))
	return pool
}

// EnsureZFSDaemon starts zfs-fuse when no daemon answers `zpool list`.
func EnsureZFSDaemon(ctx context.Context) error {
	if _, err := Run(ctx, "zpool", "list"); err == nil {
		return nil
	}
	if _, err := Run(ctx, "zfs-fuse", "-p", "/run/zfs-fuse.pid"); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := Run(ctx, "zpool", "list")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("zfs-fuse did not answer within 10s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
