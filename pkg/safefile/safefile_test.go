package safefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// What another user may plant instead of a file is refused, without
// reading or writing what a link points to and without hanging on a FIFO.
func TestPlantedFilesAreNotFollowed(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRegular(link); !errors.Is(err, ErrSymlink) {
		t.Errorf("OpenRegular of a link: %v, want ErrSymlink", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := OpenRegular(fifo)
		done <- err
	}()
	select {
	case err := <-done:
		var nr *NotRegularError
		if !errors.As(err, &nr) || nr.Type&fs.ModeNamedPipe == 0 {
			t.Errorf("OpenRegular of a FIFO: %v, want a *NotRegularError naming a pipe", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OpenRegular blocked on a FIFO")
	}
	var nr *NotRegularError
	if _, err := OpenRegular(dir); !errors.As(err, &nr) {
		t.Errorf("OpenRegular of a directory: %v", err)
	}
	if _, err := CreateNew(link, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateNew over a link: %v, want fs.ErrExist", err)
	}
	f, err := OpenAppend(link, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("appended\n")
	f.Close()
	if data, _ := os.ReadFile(secret); string(data) != "root only\n" {
		t.Errorf("the link's target was written: %q", data)
	}
	if fi, err := os.Lstat(link); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("the link was not replaced by a file: %v %v", fi, err)
	}
	f, err = OpenRegular(secret)
	if err != nil {
		t.Fatalf("OpenRegular of a regular file: %v", err)
	}
	f.Close()
}
