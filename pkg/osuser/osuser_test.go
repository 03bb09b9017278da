package osuser

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sindri-db/sindri/pkg/testenv"
)

func TestLookup(t *testing.T) {
	if _, err := Lookup("root"); !errors.Is(err, ErrRoot) {
		t.Fatalf("Lookup(root): %v, want ErrRoot", err)
	}
	if _, err := Lookup("no-such-account-here"); err == nil {
		t.Fatal("Lookup found an account that does not exist")
	}
	u, err := Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "nobody" || u.UID == 0 || u.Home == "" {
		t.Fatalf("nobody: %+v", u)
	}
}

// A directory on the way without search permission for the user is named,
// with the chmod that fixes it.
func TestCheckReach(t *testing.T) {
	u, err := Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	testenv.RequireRoot(t, "give a directory to another user")
	base, err := os.MkdirTemp("", "osuser-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	private := filepath.Join(base, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(private, "data")
	err = u.CheckReach(target)
	if err == nil || !strings.Contains(err.Error(), "chmod o+x "+private) {
		t.Fatalf("CheckReach through a 0700 directory: %v", err)
	}
	if err := u.Chown(private, false); err != nil {
		t.Fatal(err)
	}
	if err := u.CheckReach(target); err != nil {
		t.Fatalf("the directory is now the user's: %v", err)
	}
}
