package spec

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/servercert"
	"github.com/sindri-db/sindri/pkg/testenv"
)

const apiVersion = "5.4.0"

// server is a real sindrid on a loopback BTRFS with its embedded
// metadata Postgres.
type server struct {
	config, data string
	http, https  string
	secret       string
	stop         func() error
	pid          int // sindrid's, as first started
}

func startServer(t testing.TB, extra string) *server {
	t.Helper()
	return startServerSized(t, "2GiB", extra)
}

// startServerSized is startServer with a loopback filesystem of size;
// top holds top-level keys (before the first section), extra the
// [instances] section's.
func startServerSized(t testing.TB, size, extra string, top ...string) *server {
	t.Helper()
	testenv.RequireRoot(t, "sindrid mounts a loopback BTRFS and runs Postgres")
	return startServerIn(t, pgtest.Dir(t), size, extra, top...)
}

// startServerIn is startServerSized with data_path and the config under
// base, a directory the caller chose.
func startServerIn(t testing.TB, base, size, extra string, top ...string) *server {
	t.Helper()
	return startServerWith(t, serverOptions{base: base, size: size, extra: extra, top: top})
}

// serverOptions are what startServerWith varies.
type serverOptions struct {
	base, size string
	// extra is the [instances] section's keys (and any sections after
	// it), top the top-level ones, storage more [storage] keys. In extra,
	// httpAddressPlaceholder stands for the server's own plain-http
	// address, chosen here (a fleet host's peer_url).
	extra   string
	top     []string
	storage string
	// ports is the width of the port range (60 unless set), from minPort
	// (a free port unless set).
	minPort, ports int
	sharedBuffers  string    // "16MB" unless set
	expiryInterval string    // "1s" unless set
	binary         string    // the sindrid TestMain built unless set
	log            io.Writer // gets sindrid's output too, if set
}

// httpAddressPlaceholder in serverOptions.extra is replaced by the
// server's own insecure_listen_address.
const httpAddressPlaceholder = "{http_address}"

// startServerWith runs sindrid as o says; s.pid is its process.
func startServerWith(t testing.TB, o serverOptions) *server {
	t.Helper()
	sock, err := os.MkdirTemp("", "ss")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	if o.minPort == 0 {
		o.minPort = pgtest.FreePort(t)
	}
	if o.ports == 0 {
		o.ports = 60
	}
	if o.sharedBuffers == "" {
		o.sharedBuffers = "16MB"
	}
	if o.expiryInterval == "" {
		o.expiryInterval = "1s"
	}
	if o.binary == "" {
		o.binary = sindrid
	}
	s := &server{data: filepath.Join(o.base, "data"), http: freePort(t), https: freePort(t), secret: "spec-shared-secret-0123456789abcdef"}
	s.config = filepath.Join(o.base, "config.toml")
	body := fmt.Sprintf(`environment = "test"
data_path = %q
shared_secret = %q
public_hostname = "localhost"
trusted_user_email_domain = "@example.com"
%s
[http]
listen_address = %q
insecure_listen_address = %q
[storage]
loopback_size = %q
%s
[postgres]
socket_dir = %q
min_port = %d
max_port = %d
shared_buffers = %q
[instances]
expiry_interval = %q
%s`, s.data, s.secret, strings.Join(o.top, "\n"), s.https, s.http, o.size, o.storage, sock, o.minPort, o.minPort+o.ports, o.sharedBuffers, o.expiryInterval,
		strings.ReplaceAll(o.extra, httpAddressPlaceholder, s.http))
	if err := os.WriteFile(s.config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s.pid, s.stop = startLogged(t, []string{o.binary, "-config", s.config}, s.http, o.log)
	t.Cleanup(func() {
		s.stop()
		// Instances outlive sindrid by design; the test stops them, a
		// few at a time (a density benchmark leaves a thousand).
		vols, _ := os.ReadDir(filepath.Join(s.data, "volumes"))
		work := make(chan string)
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for name := range work {
					postgres.StopAll(context.Background(), filepath.Join(s.data, "volumes", name), 10*time.Second)
				}
			}()
		}
		for _, v := range vols {
			work <- v.Name()
		}
		close(work)
		wg.Wait()
		exec.Command("umount", s.data).Run()
	})
	return s
}

// call makes a request with the version header (unless headers override
// it) and returns the status and the body.
func (s *server) call(t testing.TB, method, path, token string, body any, headers ...string) (int, []byte) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	case io.Reader:
		r = b
	default:
		data, _ := json.Marshal(b)
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://"+s.http+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Draupnir-Version", apiVersion)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.Header.Get("Draupnir-Version") != apiVersion {
		t.Errorf("%s %s: response Draupnir-Version %q", method, path, resp.Header.Get("Draupnir-Version"))
	}
	return resp.StatusCode, out
}

// document is a JSON:API document, read loosely.
type document struct {
	Data     json.RawMessage `json:"data"`
	Included []resource      `json:"included"`
	Errors   []struct {
		Status, Code, Title, Detail string
	} `json:"errors"`
}

type resource struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Attributes map[string]any `json:"attributes"`
}

func decode(t testing.TB, body []byte) document {
	t.Helper()
	var d document
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, body)
	}
	return d
}

func (d document) one(t testing.TB) resource {
	t.Helper()
	var r resource
	if err := json.Unmarshal(d.Data, &r); err != nil {
		t.Fatalf("data is not one resource: %s", d.Data)
	}
	return r
}

func expectError(t *testing.T, what string, status int, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("%s: status %d, want %d: %s", what, status, wantStatus, body)
		return
	}
	d := decode(t, body)
	if len(d.Errors) != 1 || d.Errors[0].Code != wantCode || d.Errors[0].Status != strconv.Itoa(wantStatus) {
		t.Errorf("%s: errors %+v, want one with code %s", what, d.Errors, wantCode)
	}
}

// expectDraupnirError checks Draupnir's bare error object (what a request
// with a Draupnir client's version gets) with status and code.
func expectDraupnirError(t *testing.T, what string, status int, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("%s: status %d, want %d: %s", what, status, wantStatus, body)
		return
	}
	var e struct{ ID, Status, Code, Title, Detail string }
	if err := json.Unmarshal(body, &e); err != nil || e.Code != wantCode || e.ID != wantCode ||
		e.Status != strconv.Itoa(wantStatus) || e.Title == "" || e.Detail == "" {
		t.Errorf("%s: %v %s, want Draupnir's error with code %s", what, err, body, wantCode)
	}
}

func resourceBody(typ string, attrs map[string]any) map[string]any {
	return map[string]any{"data": map[string]any{"type": typ, "attributes": attrs}}
}

var tarballOnce struct {
	sync.Once
	data []byte
}

// pgTarball is a tar.gz of a stopped data directory with table people.
func pgTarball(t testing.TB) []byte {
	t.Helper()
	tarballOnce.Do(func() {
		src := pgtest.StartInstance(t)
		conn, err := pgx.Connect(context.Background(), src.SocketURL())
		if err != nil {
			t.Fatal(err)
		}
		conn.Exec(context.Background(), "create table people (id int primary key, email text); insert into people values (1, 'a@x'), (2, 'b@y')")
		conn.Close(context.Background())
		postgres.Stop(context.Background(), src.DataDir, 10*time.Second)
		tarballOnce.data, err = exec.Command("tar", "-C", src.DataDir, "-czf", "-", ".").Output()
		if err != nil {
			t.Fatal(err)
		}
	})
	return tarballOnce.data
}

// readyImage creates, uploads and finalises an image; it returns its id.
func (s *server) readyImage(t testing.TB, script string) string {
	t.Helper()
	status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{
		"backed_up_at": "2026-11-01T12:00:00Z", "anonymisation_script": script}))
	if status != 201 {
		t.Fatalf("POST /images: %d %s", status, body)
	}
	img := decode(t, body).one(t)
	if img.Attributes["ready"] != false || img.Attributes["status"] != "pending" {
		t.Fatalf("new image: %+v", img.Attributes)
	}
	if status, body := s.call(t, "PUT", "/images/"+img.ID+"/upload", s.secret, pgTarball(t), "Content-Type", "application/octet-stream"); status != 200 {
		t.Fatalf("upload: %d %s", status, body)
	}
	status, body = s.call(t, "POST", "/images/"+img.ID+"/done", s.secret, nil)
	if status != 200 {
		t.Fatalf("done: %d %s", status, body)
	}
	if got := decode(t, body).one(t); got.Attributes["ready"] != true || got.Attributes["pg_version"] != "15" {
		t.Fatalf("finalised image: %+v", got.Attributes)
	}
	return img.ID
}

func (s *server) createInstance(t testing.TB, token, imageID string, extra map[string]any) (resource, resource) {
	t.Helper()
	attrs := map[string]any{"image_id": imageID}
	for k, v := range extra {
		attrs[k] = v
	}
	status, body := s.call(t, "POST", "/instances", token, resourceBody("instances", attrs))
	if status != 201 {
		t.Fatalf("POST /instances: %d %s", status, body)
	}
	d := decode(t, body)
	inst := d.one(t)
	for _, inc := range d.Included {
		if inc.Type == "credentials" && inc.ID == inst.ID {
			return inst, inc
		}
	}
	t.Fatalf("no credentials included: %s", body)
	return inst, resource{}
}

func certConnString(t *testing.T, inst, creds resource) string {
	t.Helper()
	dir := t.TempDir()
	for name, key := range map[string]string{"ca.crt": "ca_certificate", "client.crt": "client_certificate", "client.key": "client_key"} {
		os.WriteFile(filepath.Join(dir, name), []byte(creds.Attributes[key].(string)), 0o600)
	}
	return fmt.Sprintf("host=%s port=%d user=draupnir dbname=postgres sslmode=verify-ca sslrootcert=%s sslcert=%s sslkey=%s",
		inst.Attributes["hostname"], int(inst.Attributes["port"].(float64)),
		filepath.Join(dir, "ca.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
}

func query(connString, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var out string
	err = conn.QueryRow(ctx, sql).Scan(&out)
	return out, err
}

func (s *server) token(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command(sindrid, "token", "create", "--name", name, "-config", s.config).Output()
	if err != nil {
		t.Fatalf("sindrid token create: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestAPIEndToEnd(t *testing.T) {
	s := startServer(t, "")
	imageID := s.readyImage(t, "delete from people where email like '%@y';")

	t.Run("versions", func(t *testing.T) {
		for _, c := range []struct {
			header, code string
		}{{"", "missing_api_version_header"}, {"5.9.0", "invalid_api_version"}} {
			status, body := s.call(t, "GET", "/images", s.secret, nil, "Draupnir-Version", c.header)
			expectError(t, "version "+c.header, status, body, 400, c.code)
		}
		// Other values come from Draupnir's clients: Draupnir's error.
		for _, v := range []string{"4.9.0", "banana"} {
			status, body := s.call(t, "GET", "/images", s.secret, nil, "Draupnir-Version", v)
			expectDraupnirError(t, "version "+v, status, body, 400, "invalid_api_version")
		}
		if status, body := s.call(t, "GET", "/images", s.secret, nil, "Draupnir-Version", "5.3.0"); status != 200 {
			t.Errorf("a Draupnir 5.3 client: %d %s", status, body)
		}
	})
	t.Run("authentication", func(t *testing.T) {
		status, body := s.call(t, "GET", "/instances", "", nil)
		expectError(t, "no token", status, body, 401, "unauthorized")
		status, body = s.call(t, "GET", "/instances", "wrong-token", nil)
		expectError(t, "wrong token", status, body, 401, "unauthorized")

		carol := s.token(t, "carol")
		if status, body := s.call(t, "GET", "/instances", carol, nil); status != 200 {
			t.Fatalf("a fresh API token: %d %s", status, body)
		}
		list, err := exec.Command(sindrid, "token", "list", "-config", s.config).Output()
		if err != nil || !strings.Contains(string(list), "carol") || strings.Contains(string(list), carol) {
			t.Fatalf("token list: %v\n%s", err, list)
		}
		if out, err := exec.Command(sindrid, "token", "revoke", "--name", "carol", "-config", s.config).CombinedOutput(); err != nil {
			t.Fatalf("token revoke: %v %s", err, out)
		}
		status, body = s.call(t, "GET", "/instances", carol, nil)
		expectError(t, "revoked token", status, body, 401, "unauthorized")
		err = exec.Command(sindrid, "token", "create", "-config", s.config).Run()
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 2 {
			t.Fatalf("token create without --name: %v, want exit status 2", err)
		}
	})
	t.Run("routes and ids", func(t *testing.T) {
		status, body := s.call(t, "GET", "/nope", s.secret, nil)
		expectError(t, "unknown route", status, body, 404, "resource_not_found")
		status, body = s.call(t, "PUT", "/instances", s.secret, nil)
		expectError(t, "wrong method", status, body, 405, "method_not_allowed")
		for _, id := range []string{"-1", "1e3", "..%2F1", "99999999999999999999", "0"} {
			status, body := s.call(t, "GET", "/instances/"+id, s.secret, nil)
			expectError(t, "instance id "+id, status, body, 404, "resource_not_found")
		}
		status, body = s.call(t, "GET", "/images/424242", s.secret, nil)
		expectError(t, "missing image", status, body, 404, "resource_not_found")
	})
	t.Run("bad bodies", func(t *testing.T) {
		status, body := s.call(t, "POST", "/instances", s.secret, []byte(`{"data": {`))
		expectError(t, "malformed JSON", status, body, 400, "bad_request")
		status, body = s.call(t, "POST", "/instances", s.secret, resourceBody("images", map[string]any{"image_id": imageID}))
		expectError(t, "wrong type", status, body, 409, "conflict")
		status, body = s.call(t, "POST", "/instances", s.secret, bytes.Repeat([]byte("x"), 10<<20))
		expectError(t, "10 MB body", status, body, 413, "request_too_large")
		for _, bad := range []any{"-1", "1e3", "../1", "99999999999999999999", true} {
			status, body := s.call(t, "POST", "/instances", s.secret, resourceBody("instances", map[string]any{"image_id": bad}))
			expectError(t, fmt.Sprintf("image_id %v", bad), status, body, 400, "bad_request")
		}
		status, body = s.call(t, "POST", "/instances", s.secret, resourceBody("instances", map[string]any{"image_id": "424242"}))
		expectError(t, "unknown image", status, body, 404, "resource_not_found")
		status, body = s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{}))
		expectError(t, "image without backed_up_at", status, body, 400, "bad_request")
	})
	t.Run("unready image", func(t *testing.T) {
		status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z"}))
		if status != 201 {
			t.Fatalf("%d %s", status, body)
		}
		pending := decode(t, body).one(t).ID
		status, body = s.call(t, "POST", "/instances", s.secret, resourceBody("instances", map[string]any{"image_id": pending}))
		expectError(t, "pending image", status, body, 422, "image_not_ready")
		status, body = s.call(t, "POST", "/images/"+pending+"/done", s.secret, nil)
		expectError(t, "done without an upload", status, body, 422, "image_finalise_failed")
	})

	t.Run("instances", func(t *testing.T) {
		alice, bob := s.token(t, "alice"), s.token(t, "bob")
		a, aCreds := s.createInstance(t, alice, imageID, nil)
		b, bCreds := s.createInstance(t, alice, imageID, map[string]any{"ttl": "30m", "protected": true})
		if a.Attributes["status"] != "running" || a.Attributes["image_id"].(float64) == 0 || a.Attributes["port"] == b.Attributes["port"] {
			t.Fatalf("instances: %+v %+v", a.Attributes, b.Attributes)
		}
		// The anonymisation script ran: the clone lacks the row it deleted.
		if got, err := query(certConnString(t, a, aCreds), "select string_agg(email, ',') from people"); err != nil || got != "a@x" {
			t.Fatalf("people in the clone: %q %v", got, err)
		}
		url := a.Attributes["database_url"].(string)
		if got, err := query(url, "select rolsuper::text from pg_roles where rolname = current_user"); err != nil || got != "false" {
			t.Fatalf("database_url login: %q %v", got, err)
		}
		if _, err := query(url, "insert into people values (3, 'new@x') returning email"); err != nil {
			t.Fatal(err)
		}
		if got, _ := query(certConnString(t, b, bCreds), "select count(*)::text from people where id = 3"); got != "0" {
			t.Fatal("a write in one instance shows in another")
		}

		// Another user sees neither.
		status, body := s.call(t, "GET", "/instances/"+a.ID, bob, nil)
		expectError(t, "another user's instance", status, body, 404, "resource_not_found")
		status, body = s.call(t, "DELETE", "/instances/"+a.ID, bob, nil)
		expectError(t, "deleting another user's instance", status, body, 404, "resource_not_found")
		_, body = s.call(t, "GET", "/instances", bob, nil)
		if d := decode(t, body); string(d.Data) != "[]" {
			t.Fatalf("bob lists %s", d.Data)
		}
		_, body = s.call(t, "GET", "/instances", alice, nil)
		var list []resource
		json.Unmarshal(decode(t, body).Data, &list)
		if len(list) != 2 {
			t.Fatalf("alice lists %d instances", len(list))
		}

		// Delete: the port refuses, the volume is gone.
		volume := filepath.Join(s.data, "volumes", "instance-"+a.ID)
		if _, err := os.Stat(filepath.Join(volume, "PG_VERSION")); err != nil {
			t.Fatalf("the instance's volume before DELETE: %v", err)
		}
		status, _ = s.call(t, "DELETE", "/instances/"+a.ID, alice, nil)
		if status != 204 {
			t.Fatalf("DELETE: %d", status)
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("localhost:%d", int(a.Attributes["port"].(float64))), time.Second); err == nil {
			c.Close()
			t.Fatal("the port still accepts connections after DELETE")
		}
		if _, err := os.Stat(volume); !os.IsNotExist(err) {
			t.Fatalf("the volume is still there: %v", err)
		}
		status, body = s.call(t, "GET", "/instances/"+a.ID, alice, nil)
		expectError(t, "deleted instance", status, body, 404, "resource_not_found")

		// The image cannot go while b exists, unless forced.
		status, body = s.call(t, "DELETE", "/images/"+imageID, s.secret, nil)
		expectError(t, "image with an instance", status, body, 422, "image_has_instances")
	})

	t.Run("expiry", func(t *testing.T) {
		inst, _ := s.createInstance(t, s.secret, imageID, map[string]any{"ttl": "2s"})
		deadline := time.Now().Add(30 * time.Second)
		for {
			status, _ := s.call(t, "GET", "/instances/"+inst.ID, s.secret, nil)
			if status == 404 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("an expired instance is still there 30 s later")
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("status and health", func(t *testing.T) {
		status, body := s.call(t, "GET", "/status", s.secret, nil)
		if status != 200 {
			t.Fatalf("%d %s", status, body)
		}
		st := decode(t, body).one(t)
		attr := st.Attributes
		if st.Type != "statuses" || attr["status"] != "ok" || attr["storage_driver"] != "btrfs" || attr["api_version"] != "5.4.0" ||
			attr["version"] == "" || attr["free_bytes"].(float64) <= 0 || attr["total_bytes"].(float64) < attr["free_bytes"].(float64) ||
			attr["expected_cloning_time_ms"].(float64) <= 0 {
			t.Fatalf("status: %+v", attr)
		}
		// The counts agree with the lists (the upload user sees every
		// instance).
		for _, kind := range []string{"images", "instances"} {
			_, listBody := s.call(t, "GET", "/"+kind, s.secret, nil)
			var list []json.RawMessage
			json.Unmarshal(decode(t, listBody).Data, &list)
			total := 0.0
			for _, n := range attr[kind].(map[string]any) {
				total += n.(float64)
			}
			if int(total) != len(list) {
				t.Errorf("status counts %v %s, GET /%s lists %d", attr[kind], kind, kind, len(list))
			}
		}
		resp, err := http.Get("http://" + s.http + "/health_check")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("health_check: %v", err)
		}
		resp.Body.Close()
		resp, err = http.Get("http://" + s.http + "/metrics")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("metrics: %v", err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"sindri_instance_ready_seconds_count", `sindri_instance_create_step_seconds_count{step="cloned"}`, `sindri_instances{status="running"}`, "sindri_disk_free_bytes", `sindri_http_requests_total{code="201",method="POST"}`} {
			if !strings.Contains(string(metrics), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
		// HTTPS with the self-signed certificate sindrid made under
		// data_path/tls: a client that trusts that file verifies it.
		pemCert, err := os.ReadFile(filepath.Join(s.data, "tls", servercert.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemCert) {
			t.Fatalf("no certificate in %s", servercert.CertFile)
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
		resp, err = client.Get("https://" + s.https + "/health_check")
		if err != nil || resp.StatusCode != 200 || resp.TLS == nil {
			t.Fatalf("HTTPS health_check: %v", err)
		}
		resp.Body.Close()
	})
}

func TestRestartOfSindridKeepsAndAdoptsInstances(t *testing.T) {
	s := startServer(t, "")
	imageID := s.readyImage(t, "")
	inst, creds := s.createInstance(t, s.secret, imageID, nil)
	volume := filepath.Join(s.data, "volumes", "instance-"+inst.ID)
	before, err := postgres.Status(volume)
	if err != nil || !before.Alive {
		t.Fatalf("instance postmaster: %+v %v", before, err)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("sindrid exit after SIGTERM: %v", err)
	}
	// sindrid is gone; the instance answers.
	if got, err := query(certConnString(t, inst, creds), "select 'up'"); err != nil || got != "up" {
		t.Fatalf("instance with sindrid stopped: %q %v", got, err)
	}
	s.stop = start(t, s.config, s.http)
	after, err := postgres.Status(volume)
	if err != nil || !after.Alive || after.PID != before.PID {
		t.Fatalf("after restart: %+v %v; want the same postmaster (pid %d) adopted", after, err, before.PID)
	}
	status, body := s.call(t, "GET", "/instances/"+inst.ID, s.secret, nil)
	if status != 200 || decode(t, body).one(t).Attributes["status"] != "running" {
		t.Fatalf("GET after restart: %d %s", status, body)
	}
	if got, err := query(inst.Attributes["database_url"].(string), "select 'up'"); err != nil || got != "up" {
		t.Fatalf("instance after restart: %q %v", got, err)
	}
}
