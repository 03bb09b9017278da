package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIBackupDownloadFiles checks the download's file handling against
// a fake server: a download that fails its SHA-256 check, or is cut
// short, leaves no file; an existing file stays unless --force.
func TestCLIBackupDownloadFiles(t *testing.T) {
	archive := bytes.Repeat([]byte("zstd? no, but bytes "), 50000)
	sum := sha256.Sum256(archive)
	digest := "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":"
	var mode string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/backups/4" {
			fmt.Fprintf(w, `{"data":{"type":"backups","id":"4","attributes":{"instance_id":2,"status":"done","size_bytes":%d,"sha256":%q}}}`,
				len(archive), hex.EncodeToString(sum[:]))
			return
		}
		if r.URL.Path != "/backups/4/download" {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[{"status":"404","code":"resource_not_found","title":"Resource not found","detail":"there is no backup 5"}]}`)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(archive)))
		switch mode {
		case "wrong":
			w.Header().Set("Repr-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(make([]byte, 32))+":")
		case "short":
			w.Header().Set("Repr-Digest", digest)
			w.Write(archive[:1000])
			panic(http.ErrAbortHandler)
		default:
			w.Header().Set("Repr-Digest", digest)
		}
		w.Write(archive)
	}))
	defer srv.Close()
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("SINDRI_URL", srv.URL)
	t.Setenv("SINDRI_TOKEN", "tok")
	dir := t.TempDir()
	run := func(args ...string) (string, string, int) {
		var stdout, stderr bytes.Buffer
		root := newRoot(&stdout, &stderr)
		root.SetArgs(args)
		code := report(&stderr, root.ExecuteContext(context.Background()))
		return stdout.String(), stderr.String(), code
	}
	files := func() []string {
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	path := filepath.Join(dir, "sindri-backup-4.tar.zst")

	for _, m := range []struct{ mode, msg string }{{"wrong", "do not match"}, {"short", "cannot reach"}} {
		mode = m.mode
		_, stderr, code := run("backups", "download", "4", "-o", dir)
		if code == 0 || !strings.Contains(stderr, m.msg) || len(files()) != 0 {
			t.Errorf("%s: exit %d, %q, files %v; want an error and no file", m.mode, code, stderr, files())
		}
	}
	if _, stderr, code := run("backups", "download", "5", "-o", dir); code != 1 || !strings.Contains(stderr, "there is no backup 5") || len(files()) != 0 {
		t.Errorf("an unknown backup: exit %d %q, files %v", code, stderr, files())
	}

	mode = ""
	stdout, stderr, code := run("backups", "download", "4", "-o", dir)
	if code != 0 || !strings.Contains(stdout, path) || !strings.Contains(stdout, hex.EncodeToString(sum[:])) {
		t.Fatalf("download: exit %d\n%s%s", code, stdout, stderr)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, archive) {
		t.Errorf("the file holds %d bytes, not the archive", len(got))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the file's mode: %v %v, want 0600", fi.Mode(), err)
	}

	os.WriteFile(path, []byte("mine"), 0o644)
	if _, stderr, code := run("backups", "download", "4", "-o", path); code != 2 || !strings.Contains(stderr, "--force") {
		t.Errorf("over an existing file: exit %d %q", code, stderr)
	}
	if got, _ := os.ReadFile(path); string(got) != "mine" || len(files()) != 1 {
		t.Errorf("the existing file was touched: %q, files %v", got, files())
	}
	mode = "wrong"
	if _, _, code := run("backups", "download", "4", "-o", path, "--force"); code != 1 {
		t.Errorf("--force with a wrong digest: exit %d, want 1", code)
	}
	if got, _ := os.ReadFile(path); string(got) != "mine" || len(files()) != 1 {
		t.Errorf("a failed --force download replaced the file: %d bytes, files %v", len(got), files())
	}
	mode = ""
	if _, stderr, code := run("backups", "download", "4", "-o", path, "--force"); code != 0 {
		t.Errorf("--force: exit %d %q", code, stderr)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, archive) || len(files()) != 1 {
		t.Errorf("after --force: %d bytes, files %v", len(got), files())
	}

	stdout, stderr, code = run("backups", "download", "4", "-o", "-")
	if code != 0 || stdout != string(archive) || stderr != "" {
		t.Errorf("-o -: exit %d, %d bytes, %q", code, len(stdout), stderr)
	}
}
