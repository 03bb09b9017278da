package spec

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/secrets"
)

// asPostgres runs a command as the postgres OS account: whoever holds it
// reads the embedded metadata cluster's files and socket.
func asPostgres(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	owner := pgtest.Owner(t)
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: owner.UID, Gid: owner.GID}}
	return cmd
}

// dumpMeta is pg_dump of the embedded metadata database, run as the
// postgres OS account.
func (s *server) dumpMeta(t *testing.T) string {
	t.Helper()
	major, err := postgres.MajorVersion(filepath.Join(s.data, "meta", "data"))
	if err != nil {
		t.Fatal(err)
	}
	pgDump := filepath.Join("/usr/lib/postgresql", major, "bin", "pg_dump")
	out, err := asPostgres(t, pgDump, "-h", filepath.Join(s.data, "meta", "socket"), "-p", "5432", "-U", "postgres", "sindri").Output()
	if err != nil {
		t.Fatalf("pg_dump: %v", err)
	}
	return string(out)
}

// instancePassword is the password in an instance's database_url.
func instancePassword(t *testing.T, inst resource) string {
	t.Helper()
	m := regexp.MustCompile(`^postgres://[^:]+:([^@]+)@`).FindStringSubmatch(inst.Attributes["database_url"].(string))
	if m == nil {
		t.Fatalf("no password in database_url %q", inst.Attributes["database_url"])
	}
	return m[1]
}

// runFails runs sindrid, which must exit with an error, and returns what
// it printed.
func runFails(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sindrid, args...).CombinedOutput()
	if err == nil {
		t.Fatalf("sindrid %s succeeded:\n%s", strings.Join(args, " "), out)
	}
	if ctx.Err() != nil {
		t.Fatalf("sindrid %s did not exit:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

func TestSecretsSealedAtRest(t *testing.T) {
	s := startServer(t, "")
	imageID := s.readyImage(t, "")
	inst1, creds1 := s.createInstance(t, s.secret, imageID, nil)
	inst2, creds2 := s.createInstance(t, s.secret, imageID, nil)
	const sourcePassword = "Pr0d-Source-S3cret"
	status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{
		"backed_up_at": "2026-11-01T12:00:00Z", "source_url": "postgres://replicator:" + sourcePassword + "@127.0.0.1:1/postgres"}))
	if status != 201 {
		t.Fatalf("POST /images with source_url: %d %s", status, body)
	}
	// Left pending: the pull has not run, the source_url is kept.

	keyPath := filepath.Join(s.data, "secrets.key")
	checkKeyFile := func() {
		t.Helper()
		st, err := os.Stat(keyPath)
		if err != nil {
			t.Fatalf("key file: %v", err)
		}
		if st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Fatalf("key file mode %04o uid %d, want 0600 and root", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid)
		}
		if out, err := asPostgres(t, "cat", keyPath).CombinedOutput(); err == nil || !strings.Contains(string(out), "Permission denied") {
			t.Fatalf("the postgres account reads the key file: %v %s", err, out)
		}
	}
	checkKeyFile()

	secretValues := map[string]string{
		"instance 1's password": instancePassword(t, inst1), "instance 2's password": instancePassword(t, inst2),
		"instance 1's client key": creds1.Attributes["client_key"].(string), "instance 2's client key": creds2.Attributes["client_key"].(string),
		"a PEM private key": "PRIVATE KEY", "the source's password": sourcePassword,
	}
	checkDump := func(dump string) {
		t.Helper()
		// pg_dump writes a newline as \n: a PEM is looked for line by line.
		for what, v := range secretValues {
			for _, line := range strings.Split(strings.TrimSpace(v), "\n") {
				if strings.Contains(dump, line) {
					t.Errorf("pg_dump of the metadata database holds %s (%q)", what, line)
				}
			}
		}
		// The dump does hold the instances' rows, their public parts in
		// clear and their secrets sealed.
		if !strings.Contains(dump, strings.TrimSpace(creds1.Attributes["ca_certificate"].(string))[30:90]) || !strings.Contains(dump, "sindri:v1:") {
			t.Fatalf("the dump lacks the instances' rows, or sealed values:\n%s", dump)
		}
	}
	dump := s.dumpMeta(t)
	checkDump(dump)

	// A rotation while sindrid runs is refused: sindrid holds the old key.
	if out := runFails(t, "secrets", "rotate-key", "-config", s.config); !strings.Contains(out, "stop it first") {
		t.Fatalf("rotate-key while sindrid runs:\n%s", out)
	}
	oldKeyFile, _ := os.ReadFile(keyPath)
	oldID := regexp.MustCompile(`(?m)^key ([0-9a-f]{16}) (\S+)$`).FindStringSubmatch(string(oldKeyFile))
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sindrid, "secrets", "rotate-key", "-config", s.config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "replaces "+oldID[1]) {
		t.Fatalf("rotate-key: %v\n%s", err, out)
	}
	newKeyFile, _ := os.ReadFile(keyPath)
	if strings.Contains(string(newKeyFile), oldID[2]) || strings.Count(string(newKeyFile), "\nkey ") != 1 {
		t.Fatalf("the key file still holds the old key, or not one key:\n%s", newKeyFile)
	}
	checkKeyFile()

	s.stop = start(t, s.config, s.http)
	dump = s.dumpMeta(t)
	checkDump(dump)
	if strings.Contains(dump, "sindri:v1:"+oldID[1]) {
		t.Fatal("a value is still sealed with the old key after rotation")
	}
	// The same credentials log in: adopted, restarted by the supervisor,
	// reset (configured again from the store), and a new instance.
	for _, inst := range []resource{inst1, inst2} {
		if got, err := query(inst.Attributes["database_url"].(string), "select 'up'"); err != nil || got != "up" {
			t.Fatalf("instance %s after rotation: %q %v", inst.ID, got, err)
		}
	}
	if got, err := query(certConnString(t, inst1, creds1), "select 'up'"); err != nil || got != "up" {
		t.Fatalf("instance 1 by certificate after rotation: %q %v", got, err)
	}
	volume2 := filepath.Join(s.data, "volumes", "instance-"+inst2.ID)
	before, err := postgres.Status(volume2)
	if err != nil || !before.Alive {
		t.Fatalf("instance 2's postmaster: %+v %v", before, err)
	}
	syscall.Kill(before.PID, syscall.SIGKILL)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if got, err := query(inst2.Attributes["database_url"].(string), "select 'up'"); err == nil && got == "up" {
			if after, _ := postgres.Status(volume2); after.PID != before.PID {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("instance 2 not restarted with its credentials after a kill")
		}
	}
	if status, body := s.call(t, "POST", "/instances/"+inst1.ID+"/reset", s.secret, nil); status != 200 {
		t.Fatalf("reset after rotation: %d %s", status, body)
	}
	if got, err := query(certConnString(t, inst1, creds1), "select 'up'"); err != nil || got != "up" {
		t.Fatalf("instance 1 after reset: %q %v", got, err)
	}
	inst3, _ := s.createInstance(t, s.secret, imageID, nil)
	if got, err := query(inst3.Attributes["database_url"].(string), "select 'up'"); err != nil || got != "up" {
		t.Fatalf("an instance made after rotation: %q %v", got, err)
	}

	// Without its key file, or with a broken one, sindrid does not start,
	// says which file, and makes no new key that would orphan the secrets.
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(keyPath)
	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if out := runFails(t, "-config", s.config); !strings.Contains(out, keyPath+" does not exist") || !strings.Contains(out, "restore the key file") {
		t.Fatalf("start without the key file:\n%s", out)
	}
	if _, err := os.Stat(keyPath); err == nil {
		t.Fatal("sindrid made a new key file over a store of sealed secrets")
	}
	os.WriteFile(keyPath, []byte("key not-a-key\n"), 0o600)
	if out := runFails(t, "-config", s.config); !strings.Contains(out, keyPath) || !strings.Contains(out, "line 1") {
		t.Fatalf("start with a corrupt key file:\n%s", out)
	}
	os.WriteFile(keyPath, good, 0o600)
	os.Chmod(keyPath, 0o644)
	if out := runFails(t, "-config", s.config); !strings.Contains(out, keyPath) || !strings.Contains(out, "chmod 600") {
		t.Fatalf("start with a key file others can read:\n%s", out)
	}
	os.Chmod(keyPath, 0o600)

	// A rotation cut short after it wrote the new key, before it sealed
	// anything again: the next start finishes it.
	kr, err := secrets.Load(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	cutShort := kr.Current()
	newID, err := kr.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	s.stop = start(t, s.config, s.http)
	if kr, err := secrets.Load(keyPath); err != nil || !slices.Equal(kr.IDs(), []string{newID}) {
		t.Fatalf("key file after a start that finished a rotation: %v, %v; want only %s", kr, err, newID)
	}
	if dump := s.dumpMeta(t); strings.Contains(dump, "sindri:v1:"+cutShort) || !strings.Contains(dump, "sindri:v1:"+newID) {
		t.Fatal("the start did not seal every value with the new key")
	}
	for _, inst := range []resource{inst1, inst2, inst3} {
		if got, err := query(inst.Attributes["database_url"].(string), "select 'up'"); err != nil || got != "up" {
			t.Fatalf("instance %s after the rotation was finished: %q %v", inst.ID, got, err)
		}
	}
}
