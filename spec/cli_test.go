package spec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sindri-db/sindri/pkg/version"
)

var sindriBin struct {
	sync.Once
	path string
	err  error
}

// sindriCLI builds the pure-Go sindri client once per test binary.
func sindriCLI(t testing.TB) string {
	t.Helper()
	sindriBin.Do(func() {
		// Next to sindrid, in the directory TestMain removes.
		sindriBin.path = filepath.Join(filepath.Dir(sindrid), "sindri")
		cmd := exec.Command("go", "build", "-o", sindriBin.path, "../cmd/sindri")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			sindriBin.err = fmt.Errorf("building sindri: %v\n%s", err, out)
		}
	})
	if sindriBin.err != nil {
		t.Fatal(sindriBin.err)
	}
	return sindriBin.path
}

// cliUser runs the sindri binary with its own HOME (so its config file
// and certificates go there) and the given environment.
type cliUser struct {
	t    *testing.T
	bin  string
	home string
	env  []string
}

func newCLIUser(t *testing.T, url, token string) *cliUser {
	t.Helper()
	u := &cliUser{t: t, bin: sindriCLI(t), home: t.TempDir()}
	u.env = []string{"HOME=" + u.home, "PATH=" + filepath.Dir(u.bin) + ":/usr/bin:/bin", "LANG=C"}
	if url != "" {
		u.env = append(u.env, "SINDRI_URL="+url)
	}
	if token != "" {
		u.env = append(u.env, "SINDRI_TOKEN="+token)
	}
	return u
}

func (u *cliUser) configDir() string { return filepath.Join(u.home, ".config", "sindri") }

// run runs sindri with args; it returns stdout, stderr and the exit code.
func (u *cliUser) run(args ...string) (string, string, int) {
	u.t.Helper()
	return u.exec(exec.Command(u.bin, args...))
}

// shell runs a bash script as the user would in their shell.
func (u *cliUser) shell(script string) (string, string, int) {
	u.t.Helper()
	return u.exec(exec.Command("bash", "-c", script))
}

func (u *cliUser) exec(cmd *exec.Cmd) (string, string, int) {
	u.t.Helper()
	cmd.Env = u.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		u.t.Fatalf("%v: %v", cmd.Args, err)
	}
	return stdout.String(), stderr.String(), code
}

// ok runs sindri and fails the test unless it exits 0.
func (u *cliUser) ok(args ...string) string {
	u.t.Helper()
	out, errOut, code := u.run(args...)
	if code != 0 {
		u.t.Fatalf("sindri %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// okJSON runs sindri --json and decodes its output into v.
func (u *cliUser) okJSON(v any, args ...string) {
	u.t.Helper()
	out := u.ok(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		u.t.Fatalf("sindri %s --json: not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs sindri expecting exit code want and one line on stderr that
// contains every one of msgs.
func (u *cliUser) fails(want int, msgs []string, args ...string) {
	u.t.Helper()
	out, errOut, code := u.run(args...)
	if code != want {
		u.t.Errorf("sindri %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errOut)
		return
	}
	line := strings.TrimSuffix(errOut, "\n")
	if line == "" || strings.Contains(line, "\n") || !strings.HasPrefix(line, "sindri: ") {
		u.t.Errorf("sindri %s: stderr %q, want one line starting with \"sindri: \"", strings.Join(args, " "), errOut)
	}
	for _, m := range msgs {
		if !strings.Contains(line, m) {
			u.t.Errorf("sindri %s: stderr %q, want it to contain %q", strings.Join(args, " "), line, m)
		}
	}
}

type cliImage struct {
	ID         int64  `json:"id"`
	Name       string `json:"name"`
	Ready      bool   `json:"ready"`
	Status     string `json:"status"`
	PGVersion  string `json:"pg_version"`
	BackupID   int64  `json:"backup_id"`
	Anonymised bool   `json:"anonymised"`
	BackedUpAt string `json:"backed_up_at"`
}

type cliBackup struct {
	ID         int64  `json:"id"`
	InstanceID int64  `json:"instance_id"`
	ImageID    int64  `json:"image_id"`
	Status     string `json:"status"`
	Error      string `json:"error"`
	SizeBytes  int64  `json:"size_bytes"`
	SHA256     string `json:"sha256"`
	CreatedAt  string `json:"created_at"`
}

type cliInstance struct {
	ID          int64   `json:"id"`
	ImageID     int64   `json:"image_id"`
	Port        int     `json:"port"`
	Status      string  `json:"status"`
	DatabaseURL string  `json:"database_url"`
	Protected   bool    `json:"protected"`
	ExpiresAt   *string `json:"expires_at"`
	Credentials *struct {
		CACertificate string `json:"ca_certificate"`
		ClientKey     string `json:"client_key"`
	} `json:"credentials"`
}

func TestCLIEndToEnd(t *testing.T) {
	s := startServer(t, "")
	url := "http://" + s.http
	admin := newCLIUser(t, url, s.secret)

	t.Run("version and status", func(t *testing.T) {
		out := admin.ok("version")
		for _, want := range []string{"client  " + version.Version, "server  " + version.Version, "api     " + version.API} {
			if !strings.Contains(out, want) {
				t.Errorf("version: %q, want a line %q", out, want)
			}
		}
		var v map[string]string
		admin.okJSON(&v, "version")
		if v["client"] != version.Version || v["server"] != version.Version || v["api"] != version.API {
			t.Errorf("version --json: %v", v)
		}
		if out := admin.ok("status"); !strings.Contains(out, "status") || !strings.Contains(out, "storage") {
			t.Errorf("status: %q", out)
		}
		var st struct {
			Status, Version string
		}
		admin.okJSON(&st, "status")
		if st.Status != "ok" || st.Version != version.Version {
			t.Errorf("status --json: %+v", st)
		}
	})

	// An image made entirely with the CLI, with an anonymisation script.
	var cliImg cliImage
	t.Run("images create, upload, finalise", func(t *testing.T) {
		dir := t.TempDir()
		script := filepath.Join(dir, "anon.sql")
		os.WriteFile(script, []byte("delete from people where email like '%@y';"), 0o600)
		tarball := filepath.Join(dir, "base.tar.gz")
		os.WriteFile(tarball, pgTarball(t), 0o600)

		admin.okJSON(&cliImg, "images", "create", "--name", "from-cli", "--backed-up-at", "2026-11-02T08:00:00Z", "--anonymisation-script", script)
		if cliImg.ID == 0 || cliImg.Name != "from-cli" || cliImg.Status != "pending" || cliImg.Ready {
			t.Fatalf("images create --json: %+v", cliImg)
		}
		id := strconv.FormatInt(cliImg.ID, 10)
		// Not a terminal: no progress bar, only the image.
		out, errOut, code := admin.run("images", "upload", id, tarball)
		if code != 0 || errOut != "" || !strings.Contains(out, "pending") {
			t.Fatalf("images upload: exit %d\nstdout: %s\nstderr: %q", code, out, errOut)
		}
		out = admin.ok("images", "finalise", id)
		if !strings.Contains(out, "ready") || !strings.Contains(out, "yes") {
			t.Fatalf("images finalise: %s", out)
		}
		admin.okJSON(&cliImg, "images", "get", id)
		if !cliImg.Ready || cliImg.Status != "ready" || cliImg.PGVersion != "15" || !cliImg.Anonymised {
			t.Fatalf("images get --json: %+v", cliImg)
		}
		if out := admin.ok("images", "get", id); !hasLine(out, "anonymised yes") {
			t.Errorf("images get of the anonymised image: %q, want a line: anonymised yes", out)
		}
		out = admin.ok("images", "list")
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") ||
			!strings.Contains(lines[1], "from-cli") || strings.Fields(lines[0])[3] != "ANONYMISED" || strings.Fields(lines[1])[3] != "yes" {
			t.Errorf("images list: %q, want the image's ANONYMISED column yes", out)
		}
		admin.fails(2, []string{"usage: sindri images upload ID FILE"}, "images", "upload", id)
		admin.fails(2, []string{"no such file"}, "images", "upload", id, filepath.Join(dir, "nope.tar"))
	})
	if cliImg.ID == 0 || !cliImg.Ready {
		t.Fatal("no image made with the CLI")
	}

	// A newer image, made through the API without a script: the data as
	// uploaded, and it says so.
	newest, _ := strconv.ParseInt(s.readyImage(t, ""), 10, 64)
	if out := admin.ok("images", "get", strconv.FormatInt(newest, 10)); !hasLine(out, "anonymised no") {
		t.Errorf("images get of an image without a script: %q, want a line: anonymised no", out)
	}
	if out := admin.ok("images", "list"); !strings.HasPrefix(strings.Fields(strings.Split(out, "\n")[1])[3], "no") {
		t.Errorf("images list: %q, want the newest image's ANONYMISED column no", out)
	}
	var inst cliInstance
	t.Run("instances create without an id uses the newest ready image", func(t *testing.T) {
		admin.okJSON(&inst, "instances", "create", "--ttl", "30m")
		if inst.ImageID != newest || inst.Status != "running" || inst.ExpiresAt == nil || inst.Credentials == nil {
			t.Fatalf("instances create --json: %+v, want image %d", inst, newest)
		}
	})
	if inst.ID == 0 {
		t.Fatal("no instance")
	}
	id := strconv.FormatInt(inst.ID, 10)

	t.Run("env, then psql", func(t *testing.T) {
		out, errOut, code := admin.shell("eval $(sindri env " + id + ") && psql -Atc 'select count(*) from people'")
		if code != 0 || strings.TrimSpace(out) != "2" {
			t.Fatalf("eval $(sindri env); psql: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		out = admin.ok("env", id)
		if !strings.HasPrefix(out, "export PGHOST=localhost PGPORT="+strconv.Itoa(inst.Port)+" PGUSER=draupnir PGDATABASE=postgres PGSSLMODE=verify-ca PGSSLROOTCERT=") ||
			strings.Count(out, "\n") != 1 {
			t.Errorf("env: %q", out)
		}
		dir := filepath.Join(admin.configDir(), "instances", id)
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("credentials directory %s: %v %v, want mode 0700", dir, fi.Mode(), err)
		}
		for _, name := range []string{"ca.crt", "client.crt", "client.key"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v %v, want mode 0600", name, fi, err)
			}
			if !strings.Contains(out, filepath.Join(dir, name)) {
				t.Errorf("env does not name %s: %s", name, out)
			}
		}
		var env struct{ Env map[string]string }
		admin.okJSON(&env, "env", id)
		if env.Env["PGPORT"] != strconv.Itoa(inst.Port) || env.Env["PGSSLKEY"] != filepath.Join(dir, "client.key") {
			t.Errorf("env --json: %+v", env)
		}
		dbURL := strings.TrimSpace(admin.ok("env", id, "--url"))
		if dbURL != inst.DatabaseURL || !strings.HasPrefix(dbURL, "postgres://") {
			t.Errorf("env --url: %q, want %q", dbURL, inst.DatabaseURL)
		}
		out, errOut, code = admin.shell("psql \"$(sindri env " + id + " --url)\" -Atc 'select 1'")
		if code != 0 || strings.TrimSpace(out) != "1" {
			t.Errorf("psql $(sindri env --url): exit %d %s %s", code, out, errOut)
		}
	})

	t.Run("instances list, get, protect, reset", func(t *testing.T) {
		out := admin.ok("instances", "list")
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") ||
			!strings.HasPrefix(lines[1], id+" ") || !strings.Contains(lines[1], "running") {
			t.Errorf("instances list: %q", out)
		}
		var list []cliInstance
		admin.okJSON(&list, "instances", "list")
		if len(list) != 1 || list[0].ID != inst.ID {
			t.Errorf("instances list --json: %+v", list)
		}
		var got cliInstance
		admin.okJSON(&got, "instances", "get", id)
		if got.ID != inst.ID || got.Credentials == nil || !strings.Contains(got.Credentials.CACertificate, "BEGIN CERTIFICATE") {
			t.Errorf("instances get --json: %+v", got)
		}
		if out := admin.ok("instances", "get", id); !strings.Contains(out, "database_url") || !strings.Contains(out, inst.DatabaseURL) {
			t.Errorf("instances get: %s", out)
		}
		admin.okJSON(&got, "instances", "protect", id)
		if !got.Protected {
			t.Errorf("instances protect: %+v", got)
		}
		admin.okJSON(&got, "instances", "protect", id, "--off")
		if got.Protected {
			t.Errorf("instances protect --off: %+v", got)
		}

		env := "eval $(sindri env " + id + ") && "
		if out, errOut, code := admin.shell(env + "psql -Atc 'create table scratch (x int)'"); code != 0 {
			t.Fatalf("create table: %s %s", out, errOut)
		}
		admin.okJSON(&got, "instances", "reset", id)
		if got.Port != inst.Port || got.Status != "running" {
			t.Errorf("instances reset: %+v", got)
		}
		out, errOut, code := admin.shell(env + "psql -Atc \"select coalesce(to_regclass('scratch')::text, 'gone')\"")
		if code != 0 || strings.TrimSpace(out) != "gone" {
			t.Errorf("after reset: exit %d %q %s", code, out, errOut)
		}
	})

	t.Run("an instance of an image with its anonymisation script", func(t *testing.T) {
		var anon cliInstance
		admin.okJSON(&anon, "instances", "create", strconv.FormatInt(cliImg.ID, 10), "--protected")
		if anon.ImageID != cliImg.ID || !anon.Protected {
			t.Fatalf("instances create ID --protected: %+v", anon)
		}
		aid := strconv.FormatInt(anon.ID, 10)
		out, errOut, code := admin.shell("eval $(sindri env " + aid + ") && psql -Atc 'select count(*) from people'")
		if code != 0 || strings.TrimSpace(out) != "1" {
			t.Errorf("anonymised instance: exit %d %q %s", code, out, errOut)
		}
		if out := admin.ok("instances", "destroy", aid); strings.TrimSpace(out) != "instance "+aid+" destroyed" {
			t.Errorf("instances destroy: %q", out)
		}
		admin.fails(1, []string{"sindri: Resource not found: there is no instance " + aid}, "instances", "get", aid)
		admin.fails(1, []string{"Resource not found"}, "env", aid)
	})

	t.Run("new", func(t *testing.T) {
		out, errOut, code := admin.shell("eval $(sindri new --ttl 10m) && psql -Atc 'select current_user'")
		if code != 0 || strings.TrimSpace(out) != "draupnir" {
			t.Fatalf("eval $(sindri new); psql: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		var list []cliInstance
		admin.okJSON(&list, "instances", "list")
		if len(list) != 2 {
			t.Errorf("after new: %d instances, want 2: %+v", len(list), list)
		}
		for _, in := range list {
			if in.ImageID != newest {
				t.Errorf("new made an instance of image %d, want the newest %d", in.ImageID, newest)
			}
		}
	})

	t.Run("users see their own instances", func(t *testing.T) {
		alice := newCLIUser(t, url, s.token(t, "alice"))
		var mine cliInstance
		alice.okJSON(&mine, "instances", "create")
		if mine.ImageID != newest {
			t.Errorf("alice's instance: %+v", mine)
		}
		var list []cliInstance
		alice.okJSON(&list, "instances", "list")
		if len(list) != 1 || list[0].ID != mine.ID {
			t.Errorf("alice's list: %+v", list)
		}
		alice.fails(1, []string{"Resource not found: there is no instance " + id}, "instances", "get", id)
		alice.fails(1, []string{"Forbidden"}, "images", "destroy", strconv.FormatInt(newest, 10))
		alice.ok("instances", "destroy", strconv.FormatInt(mine.ID, 10))
	})

	t.Run("errors", func(t *testing.T) {
		nowhere := newCLIUser(t, "http://127.0.0.1:1", s.secret)
		nowhere.fails(2, []string{"sindri: cannot reach http://127.0.0.1:1: connection refused"}, "instances", "list")
		nowhere.fails(2, []string{"cannot reach"}, "new")
		wrong := newCLIUser(t, url, "wrong-token")
		wrong.fails(1, []string{"sindri: Unauthorized: "}, "images", "list")
		wrong.fails(1, []string{"Unauthorized"}, "instances", "create")
		admin.fails(1, []string{"Resource not found: there is no instance 999"}, "instances", "get", "999")
		admin.fails(1, []string{"Resource not found"}, "instances", "create", "999")
		admin.fails(1, []string{"Resource not found: there is no image 999"}, "images", "get", "999")
		admin.fails(2, []string{"not a positive number"}, "instances", "get", "seven")
		admin.fails(2, []string{"unknown command"}, "instances", "frobnicate")
		admin.fails(2, []string{"unknown flag"}, "images", "list", "--nope")
		admin.fails(2, []string{"--ttl"}, "instances", "create", "--ttl", "soon")
		unset := newCLIUser(t, "", "")
		unset.fails(2, []string{"no server URL"}, "status")
	})

	t.Run("images destroy", func(t *testing.T) {
		img := strconv.FormatInt(newest, 10)
		admin.fails(1, []string{"Image has instances"}, "images", "destroy", img)
		if out := admin.ok("images", "destroy", img, "--force"); strings.TrimSpace(out) != "image "+img+" destroyed" {
			t.Errorf("images destroy --force: %q", out)
		}
		admin.fails(1, []string{"Resource not found"}, "images", "get", img)
		var list []cliInstance
		admin.okJSON(&list, "instances", "list")
		if len(list) != 0 {
			t.Errorf("instances after images destroy --force: %+v", list)
		}
	})

	t.Run("config set", func(t *testing.T) {
		u := newCLIUser(t, "", "")
		u.ok("config", "set", "url", url)
		u.ok("config", "set", "token", s.secret)
		path := filepath.Join(u.configDir(), "config.json")
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("config file %s: %v %v, want mode 0600", path, fi, err)
		}
		var images []cliImage
		u.okJSON(&images, "images", "list")
		if len(images) != 1 || images[0].ID != cliImg.ID {
			t.Errorf("images list with the config file: %+v", images)
		}
		out := u.ok("config", "show")
		if !strings.Contains(out, url) || strings.Contains(out, s.secret) {
			t.Errorf("config show (the token masked): %q", out)
		}
		// The environment overrides the file.
		u.env = append(u.env, "SINDRI_URL=http://127.0.0.1:1")
		u.fails(2, []string{"cannot reach http://127.0.0.1:1"}, "images", "list")
		u.fails(2, []string{"unknown key"}, "config", "set", "colour", "blue")
		u.fails(2, []string{"url"}, "config", "set", "url", "not a url")
	})
}

// TestCLIBackups backs up an instance with the CLI, downloads the backup
// and restores it as an image, on a server of its own. A download over
// an existing file is bad usage (exit 2, the file untouched) unless
// --force.
func TestCLIBackups(t *testing.T) {
	s := startServer(t, "")
	imageID := s.readyImage(t, "")
	admin := newCLIUser(t, "http://"+s.http, s.secret)

	var inst cliInstance
	admin.okJSON(&inst, "instances", "create", imageID)
	iid := strconv.FormatInt(inst.ID, 10)
	if _, err := query(inst.DatabaseURL, "insert into people values (10, 'before@x') returning 'ok'"); err != nil {
		t.Fatal(err)
	}

	var b cliBackup
	admin.okJSON(&b, "backups", "create", "--instance", iid, "--wait")
	if b.ID == 0 || b.InstanceID != inst.ID || b.ImageID != 0 || b.Status != "done" || b.SizeBytes <= 0 || len(b.SHA256) != 64 {
		t.Fatalf("backups create --instance --wait --json: %+v", b)
	}
	bid := strconv.FormatInt(b.ID, 10)
	// Written after the backup: not in it.
	if _, err := query(inst.DatabaseURL, "insert into people values (11, 'after@x') returning 'ok'"); err != nil {
		t.Fatal(err)
	}
	out := admin.ok("backups", "create", "--image", imageID)
	if !strings.Contains(out, "image_id") || !strings.Contains(out, "backups get") {
		t.Errorf("backups create --image: %s", out)
	}

	t.Run("list and get", func(t *testing.T) {
		out := admin.ok("backups", "list")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "ID SOURCE STATUS SIZE CREATED AT" ||
			!strings.HasPrefix(lines[2], bid+" ") || !strings.Contains(lines[2], "instance "+iid) || !strings.Contains(lines[2], "done") ||
			!strings.Contains(lines[1], "image "+imageID) {
			t.Errorf("backups list: %q", out)
		}
		var list []cliBackup
		admin.okJSON(&list, "backups", "list")
		if len(list) != 2 || list[1] != b || list[0].ImageID != int64(idNumber(t, imageID)) {
			t.Errorf("backups list --json: %+v, want [image backup, %+v]", list, b)
		}
		var got cliBackup
		admin.okJSON(&got, "backups", "get", bid)
		if got != b {
			t.Errorf("backups get --json: %+v, want %+v", got, b)
		}
		out = admin.ok("backups", "get", bid)
		for _, want := range []string{"id " + bid, "instance_id " + iid, "status done", "sha256 " + b.SHA256} {
			if !hasLine(out, want) {
				t.Errorf("backups get: %q lacks a line %q", out, want)
			}
		}
	})

	t.Run("download", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "sindri-backup-"+bid+".tar.zst")
		out, errOut, code := admin.shell(fmt.Sprintf("cd %q && sindri backups download %s", dir, bid))
		if code != 0 || !strings.Contains(out, path) || !strings.Contains(out, b.SHA256) {
			t.Fatalf("backups download: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		archive, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(archive); hex.EncodeToString(sum[:]) != b.SHA256 || int64(len(archive)) != b.SizeBytes {
			t.Errorf("the file: %d bytes, sha256 %x; the backup: %d bytes, %s", len(archive), sum, b.SizeBytes, b.SHA256)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("files in the directory: %v, want only the archive", entries)
		}
		admin.fails(2, []string{"already exists", "--force"}, "backups", "download", bid, "-o", path)
		var dl struct {
			File   string `json:"file"`
			SHA256 string `json:"sha256"`
			Size   int64  `json:"size_bytes"`
		}
		admin.okJSON(&dl, "backups", "download", bid, "-o", path, "--force")
		if dl.File != path || dl.SHA256 != b.SHA256 || dl.Size != b.SizeBytes {
			t.Errorf("backups download --force --json: %+v", dl)
		}
		out, errOut, code = admin.run("backups", "download", bid, "-o", "-")
		if code != 0 || out != string(archive) || errOut != "" {
			t.Errorf("backups download -o -: exit %d, %d bytes (want %d), stderr %q", code, len(out), len(archive), errOut)
		}
	})

	t.Run("restore as an image", func(t *testing.T) {
		var img cliImage
		admin.okJSON(&img, "images", "create", "--backup", bid, "--name", "restored", "--wait")
		if !img.Ready || img.Status != "ready" || img.BackupID != b.ID || img.Name != "restored" || img.BackedUpAt != b.CreatedAt {
			t.Fatalf("images create --backup --wait --json: %+v", img)
		}
		if out := admin.ok("images", "get", strconv.FormatInt(img.ID, 10)); !hasLine(out, "backup_id "+bid) {
			t.Errorf("images get of a restored image: %s", out)
		}
		var clone cliInstance
		admin.okJSON(&clone, "instances", "create", strconv.FormatInt(img.ID, 10))
		if got, err := query(clone.DatabaseURL, "select string_agg(id::text, ',' order by id) from people"); err != nil || got != "1,2,10" {
			t.Errorf("people in a clone of the restored image: %q, %v; want 1,2,10", got, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		admin.fails(1, []string{"sindri: Resource not found: there is no backup 999"}, "backups", "get", "999")
		admin.fails(1, []string{"Resource not found: there is no backup 999"}, "backups", "download", "999", "-o", t.TempDir())
		admin.fails(1, []string{"Resource not found: there is no backup 999"}, "backups", "delete", "999")
		admin.fails(1, []string{"Resource not found: there is no backup 999"}, "images", "create", "--backup", "999")
		admin.fails(1, []string{"Resource not found: there is no instance 999"}, "backups", "create", "--instance", "999")
		admin.fails(2, []string{"exactly one of --instance ID and --image ID"}, "backups", "create", "--instance", iid, "--image", imageID)
		admin.fails(2, []string{"exactly one of --instance ID and --image ID"}, "backups", "create", "--wait")
		admin.fails(2, []string{"not a positive number"}, "backups", "get", "seven")
		admin.fails(2, []string{"--wait goes with --backup"}, "images", "create", "--wait")
		admin.fails(2, []string{"usage: sindri backups download ID"}, "backups", "download")
		var mine []cliBackup
		newCLIUser(t, "http://"+s.http, s.token(t, "bob")).okJSON(&mine, "backups", "list")
		if len(mine) != 0 {
			t.Errorf("bob sees backups: %+v", mine)
		}
	})

	t.Run("delete", func(t *testing.T) {
		var list []cliBackup
		admin.okJSON(&list, "backups", "list")
		for _, l := range list {
			id := strconv.FormatInt(l.ID, 10)
			if out := admin.ok("backups", "delete", id); strings.TrimSpace(out) != "backup "+id+" deleted" {
				t.Errorf("backups delete: %q", out)
			}
		}
		admin.fails(1, []string{"Resource not found: there is no backup " + bid}, "backups", "get", bid)
		admin.okJSON(&list, "backups", "list")
		if len(list) != 0 {
			t.Errorf("backups list after deleting them all: %+v", list)
		}
		if got, err := query(inst.DatabaseURL, "select count(*)::text from people"); err != nil || got != "4" {
			t.Errorf("the instance after deleting its backup: %q, %v", got, err)
		}
	})
}

// hasLine tells whether out has a line that is want, spaces aside.
func hasLine(out, want string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(line), " ") == want {
			return true
		}
	}
	return false
}
