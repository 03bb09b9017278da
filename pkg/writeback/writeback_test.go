package writeback

import (
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Data written and not yet synced shows in Pending, and goes once synced.
func TestPendingFollowsTheDirtyPageCache(t *testing.T) {
	syscall.Sync()
	before := Pending()
	if before == math.MaxInt64 || before < 0 {
		t.Fatalf("Pending() = %d: /proc/meminfo not read", before)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "dirty"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 256<<20)); err != nil {
		t.Fatal(err)
	}
	dirty := Pending()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	after := Pending()
	t.Logf("pending: %d before, %d with 256 MiB written, %d after fsync", before, dirty, after)
	if dirty < 128<<20 {
		t.Errorf("Pending() = %d with 256 MiB just written, want most of it", dirty)
	}
	if after > dirty-128<<20 {
		t.Errorf("Pending() = %d after fsync, %d before: the file's data should have gone", after, dirty)
	}
}
