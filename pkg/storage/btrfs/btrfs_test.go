//go:build linux

package btrfs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/storage/storagetest"
	"github.com/sindri-db/sindri/pkg/testfs"
)

func factory(t testing.TB, size int64) (storage.Driver, func() storage.Driver) {
	root := filepath.Join(testfs.Btrfs(t, size), "sindri")
	open := func() storage.Driver {
		d, err := btrfs.New(root)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return open(), open
}

func TestConformance(t *testing.T) { storagetest.Run(t, factory) }

func BenchmarkDriver(b *testing.B) { storagetest.Bench(b, factory) }

func BenchmarkGet(b *testing.B) { storagetest.BenchGet(b, factory, 10, 1000) }

func BenchmarkExclusiveBytes(b *testing.B) {
	storagetest.BenchExclusiveBytes(b, factory, 10, 100, 1000)
}

func TestNewRefusesOtherFilesystems(t *testing.T) {
	if _, err := btrfs.New(t.TempDir()); err == nil {
		t.Fatal("btrfs.New accepted a directory that is not on BTRFS")
	}
}

func BenchmarkReplication(b *testing.B) { storagetest.BenchReplication(b, factory) }

// TestReceiveLeftByACrashIsRemovedByNew leaves in receiving/ what a crash
// of sindrid leaves there: the subvolume of a btrfs receive killed half-way
// and the whole one of a receive that finished before its image was made.
// A new driver removes both, lists neither, and receives the same names.
func TestReceiveLeftByACrashIsRemovedByNew(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(testfs.Btrfs(t, 512<<20), "sindri")
	d, err := btrfs.New(root)
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

	leave := func(image string, s []byte, killed bool) {
		t.Helper()
		stage := filepath.Join(root, "receiving", image)
		if err := os.Mkdir(stage, 0o700); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("btrfs", "receive", "-C", stage)
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
			// What a crash of the receiving process leaves: the tool
			// gone in the middle, its stdin never closed.
			time.Sleep(300 * time.Millisecond)
			_ = cmd.Process.Kill()
		}
		stdin.Close()
		err = cmd.Wait()
		if killed == (err == nil) {
			t.Fatalf("btrfs receive into %s: %v", stage, err)
		}
		if left, err := os.ReadDir(stage); err != nil || len(left) != 1 {
			t.Fatalf("the receive into %s left %v (%v), want its subvolume", stage, left, err)
		}
	}
	leave("image-2", stream.Bytes()[:stream.Len()/2], true)
	leave("image-3", stream.Bytes(), false)

	d, err = btrfs.New(root)
	if err != nil {
		t.Fatalf("New over what crashed receives left: %v", err)
	}
	if left, err := os.ReadDir(filepath.Join(root, "receiving")); err != nil || len(left) != 0 {
		t.Errorf("New left %v (%v) in receiving/", left, err)
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

func BenchmarkCloneDestroy(b *testing.B) { storagetest.BenchCloneDestroy(b, factory, 10, 1000) }

// ExclusiveBytesOf reads the quota groups in batches of a tree search's
// size; with batches of 3 and 10 clones plus the image, its figures take
// four searches and still equal ExclusiveBytes's, each clone's its own;
// so whether it finds the subvolumes by looking up each name or by
// listing them all.
func TestExclusiveBytesOfAcrossSearches(t *testing.T) {
	defer btrfs.SetQgroupSearchBatch(3)()
	for _, c := range []struct {
		name        string
		listIDsFrom int
	}{{"lookups", 1000}, {"listing", 1}} {
		t.Run(c.name, func(t *testing.T) {
			defer btrfs.SetListIDsFrom(c.listIDsFrom)()
			exclusiveBytesOfAcrossSearches(t)
		})
	}
}

func exclusiveBytesOfAcrossSearches(t *testing.T) {
	ctx := context.Background()
	d, _ := factory(t, 512<<20)
	v, err := d.Create(ctx, "upload-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Path, "PG_VERSION"), []byte("15\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Freeze(ctx, "upload-1", "image-1"); err != nil {
		t.Fatal(err)
	}
	names := []string{"image-1", "no-such-entry"}
	for i := range 10 {
		name := fmt.Sprintf("instance-%d", i)
		c, err := d.Clone(ctx, "image-1", name)
		if err != nil {
			t.Fatal(err)
		}
		// Each clone its own size, so that a figure given to the wrong
		// name shows.
		data := make([]byte, (i+1)<<17)
		rand.Read(data)
		if err := os.WriteFile(filepath.Join(c.Path, "written"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	got, err := d.ExclusiveBytesOf(ctx, names)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(names)-1 {
		t.Errorf("ExclusiveBytesOf(%v) = %v, want a figure for each but no-such-entry", names, got)
	}
	for _, name := range append([]string{"image-1"}, names[2:]...) {
		want, err := d.ExclusiveBytes(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got[name] != want {
			t.Errorf("%s: ExclusiveBytesOf gave %d, ExclusiveBytes %d", name, got[name], want)
		}
	}
}

// The conformance cases of ExclusiveBytesOf, with the subvolumes found by
// listing them all (TestConformance finds them by name, for its few).
func TestExclusiveBytesOfByListing(t *testing.T) {
	defer btrfs.SetListIDsFrom(1)()
	storagetest.RunExclusiveBytesOf(t, factory)
}
