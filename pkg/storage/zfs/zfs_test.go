package zfs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/storagetest"
	"github.com/sindri-db/sindri/pkg/storage/zfs"
	"github.com/sindri-db/sindri/pkg/testfs"
)

func factory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
	parent := testfs.ZFSPool(t, size) + "/sindri"
	open := func() storage.Driver {
		d, err := zfs.New(parent)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return open(), open
}

func TestConformance(t *testing.T) { storagetest.Run(t, factory) }

func BenchmarkDriver(b *testing.B) { storagetest.Bench(b, factory) }

// BenchmarkGet gets one clone with 10 volumes present, then with
// SINDRI_ZFS_BENCH_VOLUMES (200 unless set): zfs-fuse takes about a fifth
// of a second to make and mount each dataset, so 1,000 is left to whoever
// sets it.
func BenchmarkGet(b *testing.B) {
	many := 200
	if v := os.Getenv("SINDRI_ZFS_BENCH_VOLUMES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 10 {
			b.Fatalf("SINDRI_ZFS_BENCH_VOLUMES=%q: want a whole number above 10", v)
		}
		many = n
	}
	storagetest.BenchGet(b, factory, 10, many)
}

// BenchmarkExclusiveBytes sums 10, then 100 clones' exclusive bytes: with
// a zfs command per clone, 1,000 would take a minute an iteration on
// zfs-fuse.
func BenchmarkExclusiveBytes(b *testing.B) { storagetest.BenchExclusiveBytes(b, factory, 10, 100) }

func BenchmarkReplication(b *testing.B) { storagetest.BenchReplication(b, factory) }

// TestReceiveLeftByACrashIsRemovedByNew leaves under receiving/ what a
// crash of sindrid leaves there: a zfs receive killed half-way, and the
// whole filesystem of one that finished, made read-only and unmounted
// before its rename into images/ (the middle of the promotion). A new
// driver destroys them, lists neither, and receives the same names.
func TestReceiveLeftByACrashIsRemovedByNew(t *testing.T) {
	ctx := context.Background()
	parent := testfs.ZFSPool(t, 512<<20) + "/sindri"
	d, err := zfs.New(parent)
	if err != nil {
		t.Fatal(err)
	}
	v, err := d.Create(ctx, "upload")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Path, "big"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Freeze(ctx, "upload", "image-1"); err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := d.Send(ctx, "image-1", &stream); err != nil {
		t.Fatal(err)
	}

	receiving := parent + "/receiving"
	receive := func(image string, s []byte, killed bool) {
		t.Helper()
		cmd := exec.Command("zfs", "receive", receiving+"/"+image+"@frozen")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := stdin.Write(s); err != nil {
			t.Fatal(err)
		}
		if killed {
			// A crash: the receiving process gone in the middle, its
			// stdin never closed.
			time.Sleep(time.Second)
			_ = cmd.Process.Kill()
		}
		stdin.Close()
		if err := cmd.Wait(); killed == (err == nil) {
			t.Fatalf("zfs receive of %s: %v", image, err)
		}
	}
	receive("image-2", stream.Bytes()[:stream.Len()/2], true)
	receive("image-3", stream.Bytes(), false)
	for _, args := range [][]string{
		{"set", "readonly=on", receiving + "/image-3"},
		{"unmount", receiving + "/image-3"},
	} {
		if _, err := testfs.Run(ctx, "zfs", args...); err != nil {
			t.Fatal(err)
		}
	}
	out, err := testfs.Run(ctx, "zfs", "list", "-H", "-r", "-t", "all", "-o", "name", receiving)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("left by the crashed receives:\n%s", out)
	if !strings.Contains(out, receiving+"/image-3@frozen") {
		t.Fatalf("the finished receive left no filesystem:\n%s", out)
	}

	d, err = zfs.New(parent)
	if err != nil {
		t.Fatalf("New over what crashed receives left: %v", err)
	}
	if out, err := testfs.Run(ctx, "zfs", "list", "-H", "-r", "-t", "all", "-o", "name", receiving); err != nil || strings.TrimSpace(out) != receiving {
		t.Errorf("New left under %s:\n%s (%v)", receiving, out, err)
	}
	entries, err := d.List(ctx)
	if err != nil || len(entries) != 1 || entries[0].Name != "image-1" {
		t.Errorf("List after New = %+v, %v; want image-1 alone", entries, err)
	}
	for _, name := range []string{"image-2", "image-3"} {
		e, err := d.Receive(ctx, name, bytes.NewReader(stream.Bytes()))
		if err != nil {
			t.Fatalf("Receive(%s) after the crash: %v", name, err)
		}
		if got, err := os.ReadFile(filepath.Join(e.Path, "big")); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s received after the crash: its file differs (%v)", name, err)
		}
	}
}

// TestReceiveRefusesCompoundAndIncrementalStreams gives Receive the zfs
// streams that Send never writes: a replication stream (zfs send -R) and
// one with properties (-p), which would set where the filesystem is
// mounted, and an incremental one (-i). Each is refused with
// ErrStreamFormat before zfs receive runs, and nothing is made.
func TestReceiveRefusesCompoundAndIncrementalStreams(t *testing.T) {
	ctx := context.Background()
	parent := testfs.ZFSPool(t, 512<<20) + "/sindri"
	d, err := zfs.New(parent)
	if err != nil {
		t.Fatal(err)
	}
	v, err := d.Create(ctx, "upload")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Path, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Freeze(ctx, "upload", "image-1"); err != nil {
		t.Fatal(err)
	}
	image := parent + "/images/image-1"
	// Where a stream that carries properties would mount what it makes.
	elsewhere := filepath.Join(t.TempDir(), "elsewhere")
	if _, err := testfs.Run(ctx, "zfs", "set", "mountpoint="+elsewhere, image); err != nil {
		t.Fatal(err)
	}
	if _, err := testfs.Run(ctx, "zfs", "snapshot", image+"@later"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		args []string
		says string
	}{
		{"a replication stream", []string{"send", "-R", image + "@frozen"}, "compound"},
		{"a stream with properties", []string{"send", "-p", image + "@frozen"}, "compound"},
		{"an incremental stream", []string{"send", "-i", image + "@frozen", image + "@later"}, "incremental"},
	} {
		stream, err := exec.Command("zfs", c.args...).Output()
		if err != nil {
			t.Fatalf("zfs %v: %v", c.args, err)
		}
		_, err = d.Receive(ctx, "image-2", bytes.NewReader(stream))
		if !errors.Is(err, storage.ErrStreamFormat) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("Receive of %s: %v, want ErrStreamFormat saying %q", c.what, err, c.says)
		} else {
			t.Logf("%s: %v", c.what, err)
		}
	}
	if out, err := testfs.Run(ctx, "zfs", "list", "-H", "-r", "-t", "all", "-o", "name", parent+"/receiving"); err != nil || strings.TrimSpace(out) != parent+"/receiving" {
		t.Errorf("refused streams left under receiving/:\n%s (%v)", out, err)
	}
	if _, err := d.Get(ctx, "image-2"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get(image-2) after refused streams: %v, want ErrNotFound", err)
	}
}
