package uploadshell

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
)

// sftpClient connects a pkg/sftp client to ServeSFTP over pipes.
func sftpClient(t *testing.T, u *Uploads) *sftp.Client {
	t.Helper()
	inR, inW := io.Pipe()   // client → server
	outR, outW := io.Pipe() // server → client
	served := make(chan error, 1)
	go func() {
		served <- ServeSFTP(u, inR, outW)
		inR.Close()
	}()
	c, err := sftp.NewClientPipe(outR, inW)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("ServeSFTP: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("ServeSFTP did not end")
		}
	})
	return c
}

// isPermission tells whether the server answered "permission denied"
// (which the client turns into fs.ErrPermission).
func isPermission(err error) bool { return errors.Is(err, fs.ErrPermission) }

func upload(c *sftp.Client, p, data string) error {
	f, err := c.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(data)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func TestSFTPUploads(t *testing.T) {
	dir, u := newUploads(t)
	c := sftpClient(t, u)

	// What scp's SFTP mode does: realpath ".", stat the target, open,
	// write, close.
	if wd, err := c.Getwd(); err != nil || wd != "/" {
		t.Fatalf("realpath .: %q %v", wd, err)
	}
	if fi, err := c.Stat("/3"); err != nil || !fi.IsDir() {
		t.Fatalf("stat /3: %v %v", fi, err)
	}
	big := strings.Repeat("sindri ", 200000)
	if err := upload(c, "/3/data.tgz", big); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "3", "data.tgz")); got != big {
		t.Fatalf("uploaded %d bytes, want %d", len(got), len(big))
	}
	// Again, shorter: truncated. Relative paths are from /.
	if err := upload(c, "3/data.tgz", "short"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "3", "data.tgz")); got != "short" {
		t.Fatalf("after a second upload: %q", got)
	}
	// Resume (sftp reput): open without truncating, write at the end.
	f, err := c.OpenFile("/3/data.tgz", os.O_WRONLY)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(" and more"), 5); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := readFile(t, filepath.Join(dir, "3", "data.tgz")); got != "short and more" {
		t.Fatalf("after resuming: %q", got)
	}

	// Times (scp -p) are set; permissions accepted and ignored; sizes
	// truncate.
	mtime := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := c.Chtimes("/3/data.tgz", mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := c.Chmod("/3/data.tgz", 0o777); err != nil {
		t.Fatal(err)
	}
	if err := c.Truncate("/3/data.tgz", 5); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "3", "data.tgz"))
	if err != nil || fi.Mode().Perm()&0o007 != 0 || fi.Size() != 5 {
		t.Fatalf("after setstat: %v %v", fi, err)
	}
	if err := c.Chtimes("/3/data.tgz", mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "3", "data.tgz")); !fi.ModTime().Equal(mtime) {
		t.Errorf("mtime %v, want %v", fi.ModTime(), mtime)
	}

	// Directories (scp -r), listing, rename and remove (sftp put of a
	// retry), all inside an image's directory.
	if err := c.Mkdir("/3/sub"); err != nil {
		t.Fatal(err)
	}
	if err := upload(c, "/3/sub/part", "p"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("/3/sub/part", "/3/part"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("/3/part", "/3/data.tgz"); err == nil {
		t.Error("plain rename onto an existing file succeeded")
	}
	if err := c.PosixRename("/3/part", "/3/data.tgz"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveDirectory("/3/sub"); err != nil {
		t.Fatal(err)
	}
	if err := upload(c, "/3/gone", "x"); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove("/3/gone"); err != nil {
		t.Fatal(err)
	}
	entries, err := c.ReadDir("/3")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if strings.Join(names, " ") != "data.tgz etc four hostname" {
		t.Errorf("ls /3: %v", names)
	}
	if top, err := c.ReadDir("/"); err != nil || len(top) != 2 {
		t.Errorf("ls /: %v %v", top, err)
	}
	if fi, err := c.Lstat("/3/etc"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("lstat /3/etc: %v %v", fi, err)
	}
	onlyPlantedAnd(t, dir, "3/data.tgz")
	if got := readFile(t, filepath.Join(dir, "3", "data.tgz")); got != "p" {
		t.Errorf("after posix-rename: %q", got)
	}
}

func TestSFTPRefusals(t *testing.T) {
	dir, u := newUploads(t)
	c := sftpClient(t, u)
	if err := upload(c, "/3/data.tgz", "data"); err != nil {
		t.Fatal(err)
	}
	planted := "3/data.tgz"

	// Every refusal is "permission denied", as the kernel's are; scp and
	// sftp print that.
	for name, op := range map[string]func() error{
		"create in /":                  func() error { return upload(c, "/x", "x") },
		"create in / (relative)":       func() error { return upload(c, "x", "x") },
		"create ../x":                  func() error { return upload(c, "../x", "x") },
		"create /../x":                 func() error { return upload(c, "/../x", "x") },
		"create /3/../../outside":      func() error { return upload(c, "/3/../../outside", "x") },
		"create /etc/x":                func() error { return upload(c, "/etc/x", "x") },
		"create through a link to etc": func() error { return upload(c, "/3/etc/x", "x") },
		"create through a link to 4":   func() error { return upload(c, "/3/four/x", "x") },
		"write a link to outside":      func() error { return upload(c, "/3/hostname", "x") },
		"write a link to etc":          func() error { return upload(c, "/3/etc", "x") },
		"mkdir /evil":                  func() error { return c.Mkdir("/evil") },
		"mkdir /5":                     func() error { return c.Mkdir("/5") },
		"mkdir through a link":         func() error { return c.Mkdir("/3/etc/evil") },
		"remove an image's directory":  func() error { return c.RemoveDirectory("/4") },
		"remove through a link":        func() error { return c.Remove("/3/etc/hostname") },
		"rename into /":                func() error { return c.PosixRename("/3/data.tgz", "/data.tgz") },
		"rename out through ..":        func() error { return c.PosixRename("/3/data.tgz", "/3/../../x") },
		"rename through a link":        func() error { return c.PosixRename("/3/data.tgz", "/3/etc/x") },
		"rename an image's directory":  func() error { return c.Rename("/4", "/3/4") },
		"symlink":                      func() error { return c.Symlink("/etc/shadow", "/3/shadow") },
		"hard link":                    func() error { return c.Link("/3/data.tgz", "/3/hard") },
		"readlink":                     func() error { _, err := c.ReadLink("/3/etc"); return err },
		"chown":                        func() error { return c.Chown("/3/data.tgz", 0, 0) },
		"chtimes through a link":       func() error { return c.Chtimes("/3/hostname", time.Now(), time.Now()) },
		"truncate through a link":      func() error { return c.Truncate("/3/hostname", 0) },
		"download":                     func() error { _, err := c.Open("/3/data.tgz"); return err },
		"read and write":               func() error { _, err := c.OpenFile("/3/data.tgz", os.O_RDWR); return err },
		"download through a link": func() error {
			_, err := c.Open("/3/etc/passwd")
			return err
		},
	} {
		if err := op(); !isPermission(err) {
			t.Errorf("%s: %v, want permission denied", name, err)
		}
	}
	// Reading through os.Root never escapes: stat and list of a link
	// to /etc fail.
	if _, err := c.Stat("/3/etc/passwd"); err == nil {
		t.Error("stat /3/etc/passwd succeeded")
	}
	if _, err := c.ReadDir("/3/etc"); err == nil {
		t.Error("ls /3/etc succeeded")
	}
	if _, err := c.Stat("/3/hostname"); err == nil {
		t.Error("stat of a link to a file outside succeeded")
	}
	onlyPlantedAnd(t, dir, planted)
}
