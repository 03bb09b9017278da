package uploadshell

import (
	"os"
	"path/filepath"
	"testing"
)

// newUploads makes an uploads directory with a pending image 3's
// directory, an empty image 4's, and a symbolic link planted in 3
// pointing at /etc, another at 4 and one at a file beside the uploads
// directory, outside it.
func newUploads(t *testing.T) (dir string, u *Uploads) {
	t.Helper()
	base := t.TempDir()
	dir = filepath.Join(base, "image_uploads")
	for _, d := range []string{dir, filepath.Join(dir, "3"), filepath.Join(dir, "4")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc", filepath.Join(dir, "3", "etc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../4", filepath.Join(dir, "3", "four")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "outside"), []byte("outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "outside"), filepath.Join(dir, "3", "hostname")); err != nil {
		t.Fatal(err)
	}
	u, err := OpenUploads(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return dir, u
}

// tree lists what is under dir (relative paths, "/" after directories,
// "@" after symbolic links).
func tree(t *testing.T, dir string) map[string]bool {
	t.Helper()
	got := map[string]bool{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case rel == ".":
			return nil
		case fi.Mode()&os.ModeSymlink != 0:
			rel += "@"
		case fi.IsDir():
			rel += "/"
		}
		got[rel] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// planted is what newUploads made in the uploads directory.
var planted = []string{"3/", "4/", "3/etc@", "3/four@", "3/hostname@"}

// onlyPlantedAnd fails unless the uploads directory holds what
// newUploads planted, plus extra, and the outside file is unchanged.
func onlyPlantedAnd(t *testing.T, dir string, extra ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, p := range append(append([]string{}, planted...), extra...) {
		want[p] = true
	}
	got := tree(t, dir)
	for p := range got {
		if !want[p] {
			t.Errorf("%s appeared in the uploads directory", p)
		}
	}
	for p := range want {
		if !got[p] {
			t.Errorf("%s is missing from the uploads directory", p)
		}
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "outside")); err != nil || string(b) != "outside\n" {
		t.Errorf("the file outside changed: %q %v", b, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(dir)); len(entries) != 2 {
		t.Errorf("beside the uploads directory: %v", entries)
	}
}
