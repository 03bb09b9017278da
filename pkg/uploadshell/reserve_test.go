package uploadshell

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pkg/sftp"

	"github.com/sindri-db/sindri/pkg/testfs"
)

// reserveUploads is an uploads directory with image 3's directory on a
// loopback BTRFS of 512 MiB, whose DiskReserveFile keeps all but room
// bytes of the free space.
func reserveUploads(t *testing.T, room int64) (dir string, u *Uploads) {
	t.Helper()
	dir = filepath.Join(testfs.Btrfs(t, 512<<20), "image_uploads")
	if err := os.MkdirAll(filepath.Join(dir, "3"), 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	reserve := int64(st.Bavail)*st.Bsize - room
	if err := os.WriteFile(filepath.Join(dir, DiskReserveFile), []byte(strconv.FormatInt(reserve, 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := OpenUploads(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if u.reserve != reserve {
		t.Fatalf("reserve read %d, want %d", u.reserve, reserve)
	}
	return dir, u
}

// Uploads over SFTP and scp -O stop once the free space is under sindri's
// disk reserve, and none starts below it.
func TestUploadsStopAtTheDiskReserve(t *testing.T) {
	big := strings.Repeat("\x00", 200<<20)
	t.Run("sftp", func(t *testing.T) {
		_, u := reserveUploads(t, 100<<20)
		c := sftpClient(t, u)
		err := upload(c, "/3/data.tgz", big)
		var status *sftp.StatusError
		if !errors.As(err, &status) || status.FxCode() != sftp.ErrSSHFxFailure {
			t.Fatalf("200 MiB with 100 MiB above the reserve: %v, want SSH_FX_FAILURE", err)
		}
		if fi, err := os.Stat(filepath.Join(u.dir, "3", "data.tgz")); err == nil && fi.Size() >= 200<<20 {
			t.Fatalf("the upload went through: %d bytes", fi.Size())
		}
		// Now below the reserve: the next upload does not start.
		if err := upload(c, "/3/again.tgz", "x"); !errors.As(err, &status) || status.FxCode() != sftp.ErrSSHFxFailure {
			t.Fatalf("an upload below the reserve: %v, want SSH_FX_FAILURE", err)
		}
	})
	t.Run("scp", func(t *testing.T) {
		_, u := reserveUploads(t, 100<<20)
		cl := startSink(t, u, "/3/", SCPOptions{})
		if msg := cl.resp(); msg != "" {
			t.Fatalf("sink's first answer: %q", msg)
		}
		msg := cl.file("data.tgz", big)
		if !strings.Contains(msg, "/3/data.tgz: upload stopped") || !strings.Contains(msg, "under sindri's disk reserve (limits.disk_reserve)") {
			t.Fatalf("200 MiB with 100 MiB above the reserve: %q, want it stopped at the reserve", msg)
		}
		msg = cl.file("again.tgz", "x")
		if !strings.Contains(msg, "/3/again.tgz: upload refused: only") {
			t.Fatalf("an upload below the reserve: %q", msg)
		}
	})
	t.Run("no reserve file", func(t *testing.T) {
		dir, u := reserveUploads(t, 100<<20)
		os.Remove(filepath.Join(dir, DiskReserveFile))
		u, err := OpenUploads(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if err := upload(sftpClient(t, u), "/3/data.tgz", big); err != nil {
			t.Fatalf("200 MiB without a reserve: %v", err)
		}
	})
}
