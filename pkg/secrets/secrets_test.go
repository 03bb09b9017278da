package secrets

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func newRing(t *testing.T) *Keyring {
	t.Helper()
	kr, err := Create(filepath.Join(t.TempDir(), "secrets.key"))
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestSealOpensOnlyWhereItWasSealed(t *testing.T) {
	kr := newRing(t)
	const pw = "correct horse battery staple"
	sealed := kr.Seal(pw, "instances.password#7")
	if strings.Contains(sealed, pw) || !strings.HasPrefix(sealed, Prefix+kr.Current()+":") {
		t.Fatalf("sealed %q", sealed)
	}
	if again := kr.Seal(pw, "instances.password#7"); again == sealed {
		t.Fatal("two seals of one value are equal: the nonce is not random")
	}
	got, err := kr.Open(sealed, "instances.password#7")
	if err != nil || got != pw {
		t.Fatalf("open: %q, %v", got, err)
	}
	// Moved to another row, another column or another table: refused.
	for _, elsewhere := range []string{"instances.password#8", "instances.client_key#7", "images.source_url#7", ""} {
		if _, err := kr.Open(sealed, elsewhere); !errors.Is(err, ErrTampered) {
			t.Errorf("opened as %q: %v, want ErrTampered", elsewhere, err)
		}
	}
	// One bit changed in the nonce, the ciphertext or the tag: refused.
	head := Prefix + kr.Current() + ":"
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(sealed, head))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 12, len(raw) - 1} {
		b := bytes.Clone(raw)
		b[i] ^= 1
		if _, err := kr.Open(head+base64.RawStdEncoding.EncodeToString(b), "instances.password#7"); !errors.Is(err, ErrTampered) {
			t.Errorf("altered at byte %d: %v, want ErrTampered", i, err)
		}
	}
	if _, err := kr.Open(pw, "instances.password#7"); !errors.Is(err, ErrNotSealed) {
		t.Errorf("a clear value: %v, want ErrNotSealed", err)
	}
	other := newRing(t)
	if _, err := other.Open(sealed, "instances.password#7"); !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), kr.Current()) {
		t.Errorf("another key file: %v, want ErrUnknownKey naming %s", err, kr.Current())
	}
}

func TestCreateMakesARootOnlyFileAndNeverReplacesOne(t *testing.T) {
	kr := newRing(t)
	st, err := os.Stat(kr.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", st.Mode().Perm())
	}
	if _, err := Create(kr.Path()); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create over an existing key file: %v, want ErrExist", err)
	}
	loaded, err := Load(kr.Path())
	if err != nil || loaded.Current() != kr.Current() {
		t.Fatalf("Load after the refused Create: %v, %v", loaded, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(kr.Path()))
	if len(entries) != 1 {
		t.Errorf("files beside the key file: %v", entries)
	}
}

func TestLoadRefusesAnUnsafeOrBrokenFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("run as root: the test gives the key file to another user")
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	pgUID, _ := strconv.Atoi(pg.Uid)
	good := newRing(t)
	content, err := os.ReadFile(good.Path())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		setup func(path string)
		want  string
	}{
		{"readable by others", func(p string) { os.WriteFile(p, content, 0o600); os.Chmod(p, 0o644) }, "chmod 600"},
		{"writable by the group", func(p string) { os.WriteFile(p, content, 0o600); os.Chmod(p, 0o620) }, "chmod 600"},
		{"owned by postgres", func(p string) { os.WriteFile(p, content, 0o600); os.Chown(p, pgUID, -1) }, "belongs to uid " + pg.Uid},
		{"a symbolic link", func(p string) { os.Symlink(good.Path(), p) }, "symbolic link"},
		{"garbage", func(p string) { os.WriteFile(p, []byte("hello\n"), 0o600) }, "line 1"},
		{"short key", func(p string) {
			os.WriteFile(p, []byte("key 0011223344556677 AAAA\n"), 0o600)
		}, "base64 of 32 bytes"},
		{"bad id", func(p string) {
			os.WriteFile(p, []byte(strings.Replace(string(content), "\nkey ", "\nkey zz", 1)), 0o600)
		}, "hex digits"},
		{"empty", func(p string) { os.WriteFile(p, nil, 0o600) }, "holds no key"},
		{"a directory", func(p string) { os.Mkdir(p, 0o700) }, "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "secrets.key")
			c.setup(path)
			_, err := Load(path)
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q: want the path and %q", err, c.want)
			}
		})
	}
	_, err = Load(filepath.Join(t.TempDir(), "missing.key"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing.key") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestRotateKeepsOldValuesOpenUntilRetained(t *testing.T) {
	kr := newRing(t)
	oldID := kr.Current()
	oldValue := kr.Seal("s3cret", "b")
	newID, err := kr.Rotate()
	if err != nil || newID == oldID || kr.Current() != newID {
		t.Fatalf("rotate: %s, %v (current %s, old %s)", newID, err, kr.Current(), oldID)
	}
	// As after a crash here: the file holds both, the new one first.
	reread, err := Load(kr.Path())
	if err != nil {
		t.Fatal(err)
	}
	if ids := reread.IDs(); len(ids) != 2 || ids[0] != newID || ids[1] != oldID {
		t.Fatalf("key file after rotate: %v", ids)
	}
	if got, err := reread.Open(oldValue, "b"); err != nil || got != "s3cret" {
		t.Fatalf("old value after rotate: %q, %v", got, err)
	}
	newValue := reread.Seal("s3cret", "b")
	if id, _ := KeyID(newValue); id != newID {
		t.Fatalf("sealed with %s, want the new key %s", id, newID)
	}
	if err := reread.Retain(nil); err != nil {
		t.Fatal(err)
	}
	reread, err = Load(kr.Path())
	if err != nil {
		t.Fatal(err)
	}
	if ids := reread.IDs(); len(ids) != 1 || ids[0] != newID {
		t.Fatalf("key file after retain: %v", ids)
	}
	if _, err := reread.Open(oldValue, "b"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old value after the old key went: %v", err)
	}
	if st, _ := os.Stat(kr.Path()); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode after rotation %04o", st.Mode().Perm())
	}
}

// BenchmarkOpen opens a value the size of an instance's PEM private key,
// as reading an instance does three times.
func BenchmarkOpen(b *testing.B) {
	kr, err := Create(filepath.Join(b.TempDir(), "secrets.key"))
	if err != nil {
		b.Fatal(err)
	}
	sealed := kr.Seal(strings.Repeat("k", 241), "instances.client_key#1")
	for b.Loop() {
		if _, err := kr.Open(sealed, "instances.client_key#1"); err != nil {
			b.Fatal(err)
		}
	}
}
