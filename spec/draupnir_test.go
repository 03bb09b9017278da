package spec

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/auth/authtest"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// draupnirVersion is the version Draupnir's latest client and its
// integration suite send.
const draupnirVersion = "5.3.6"

// draupnirCall makes a request as Draupnir's integration suite does
// (spec/spec_helper.rb: Content-Type application/json, the shared secret,
// Draupnir-Version 5.3.6; headers override) and returns the response with
// its body read.
func (s *server) draupnirCall(t *testing.T, method, path string, body any, headers ...string) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://"+s.http+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.secret)
	req.Header.Set("Draupnir-Version", draupnirVersion)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, out
}

// wantJSON checks status and Content-Type: application/json (exactly, as
// the suite compares it) and decodes the body into a generic value.
func wantJSON(t *testing.T, what string, resp *http.Response, body []byte, status int) any {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d, want %d: %s", what, resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	if status == http.StatusNoContent {
		if len(body) != 0 {
			t.Errorf("%s: a 204 with a body: %q", what, body)
		}
		return nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%s: not JSON: %v: %s", what, err, body)
	}
	return v
}

// sameJSON compares a decoded value with want, a JSON text.
func sameJSON(t *testing.T, what string, got any, want string) {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	g, _ := json.Marshal(got)
	ws, _ := json.Marshal(w)
	if !bytes.Equal(g, ws) {
		t.Errorf("%s:\n got %s\nwant %s", what, g, ws)
	}
}

// jsonAt reads a value at keys (strings for members, ints for elements).
func jsonAt(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			a, _ := v.([]any)
			if k >= len(a) {
				return nil
			}
			v = a[k]
		}
	}
	return v
}

// TestDraupnir runs, against one sindrid, Draupnir's own integration suite
// (its spec/draupnir/*_spec.rb, request for request, with its
// expectations) and then the 5.3.x client of the nested module
// spec/draupnir5, which decodes with that client's own jsonapi version.
func TestDraupnir(t *testing.T) {
	p := authtest.NewProvider(t)
	s := startOAuthServer(t, p)
	const email = "dora@example.com"
	p.LoginEmail(email)

	t.Run("integration suite", func(t *testing.T) { draupnirIntegrationSuite(t, s) })
	t.Run("5.3 client", func(t *testing.T) { draupnir5Client(t, s, email) })
}

func draupnirIntegrationSuite(t *testing.T, s *server) {
	backedUpAt := "2016-01-02T03:04:05Z"
	imagePayload := map[string]any{"data": map[string]any{"type": "images", "attributes": map[string]any{
		"backed_up_at": backedUpAt, "anonymisation_script": "DELETE FROM people WHERE id = 2;"}}}
	createImage := func(t *testing.T) string {
		t.Helper()
		resp, body := s.draupnirCall(t, "POST", "/images", imagePayload)
		id, _ := jsonAt(wantJSON(t, "POST /images", resp, body, 201), "data", "id").(string)
		if id == "" {
			t.Fatalf("POST /images: no id: %s", body)
		}
		return id
	}
	// Draupnir's suite moves db.tar into the upload directory; sindri's
	// upload route stands in for that.
	readyImage := func(t *testing.T) string {
		t.Helper()
		id := createImage(t)
		if status, body := s.call(t, "PUT", "/images/"+id+"/upload", s.secret, pgTarball(t), "Content-Type", "application/octet-stream"); status != 200 {
			t.Fatalf("upload: %d %s", status, body)
		}
		resp, body := s.draupnirCall(t, "POST", "/images/"+id+"/done", map[string]any{})
		if ready := jsonAt(wantJSON(t, "POST /images/{id}/done", resp, body, 200), "data", "attributes", "ready"); ready != true {
			t.Fatalf("done: %s", body)
		}
		return id
	}
	instancePayload := func(imageID string) map[string]any {
		return map[string]any{"data": map[string]any{"type": "instances", "attributes": map[string]any{"image_id": imageID}}}
	}
	imageAttributes := func(t *testing.T, what string, attrs any) {
		t.Helper()
		if jsonAt(attrs, "backed_up_at") != backedUpAt || jsonAt(attrs, "ready") != false {
			t.Errorf("%s: attributes %v", what, attrs)
		}
		for _, k := range []string{"created_at", "updated_at"} {
			if _, ok := jsonAt(attrs, k).(string); !ok {
				t.Errorf("%s: %s is not a string: %v", what, k, attrs)
			}
		}
	}
	// instanceAttributes checks the suite's attributes: hostname, image_id
	// and port as numbers, the times as strings. Sindri adds attributes
	// (status, username, password, database_url, expires_at, protected),
	// where the suite matches the attributes exactly.
	instanceAttributes := func(t *testing.T, what string, attrs any, imageID string) {
		t.Helper()
		if jsonAt(attrs, "hostname") != "localhost" || jsonAt(attrs, "image_id") != mustNumber(t, imageID) {
			t.Errorf("%s: attributes %v", what, attrs)
		}
		if _, ok := jsonAt(attrs, "port").(float64); !ok {
			t.Errorf("%s: port is not a number: %v", what, attrs)
		}
		for _, k := range []string{"created_at", "updated_at"} {
			if _, ok := jsonAt(attrs, k).(string); !ok {
				t.Errorf("%s: %s is not a string: %v", what, k, attrs)
			}
		}
	}
	withCredentials := func(t *testing.T, what string, doc any) map[string]any {
		t.Helper()
		if jsonAt(doc, "data", "relationships", "credentials", "data", "type") != "credentials" {
			t.Errorf("%s: relationships %v", what, jsonAt(doc, "data", "relationships"))
		}
		if _, ok := jsonAt(doc, "data", "relationships", "credentials", "data", "id").(string); !ok {
			t.Errorf("%s: credentials id %v", what, jsonAt(doc, "data", "relationships"))
		}
		included, _ := jsonAt(doc, "included").([]any)
		if len(included) != 1 || jsonAt(included, 0, "type") != "credentials" {
			t.Fatalf("%s: included %v", what, included)
		}
		attrs, _ := jsonAt(included, 0, "attributes").(map[string]any)
		if len(attrs) != 3 {
			t.Errorf("%s: credentials attributes %v", what, attrs)
		}
		return attrs
	}

	// health_check_spec.rb
	t.Run("health check", func(t *testing.T) {
		resp, body := s.draupnirCall(t, "GET", "/health_check", nil)
		sameJSON(t, "GET /health_check", wantJSON(t, "GET /health_check", resp, body, 200), `{"status":"ok"}`)
		// The suite wants its own version back (5.3.6): sindri answers
		// with the API version it speaks, which the suite's other checks
		// (semver, not 0.0.0) accept.
		if v := resp.Header.Get("Draupnir-Version"); !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(v) || v == "0.0.0" || v != apiVersion {
			t.Errorf("Draupnir-Version %q", v)
		}
		resp, body = s.draupnirCall(t, "GET", "/images", nil, "Draupnir-Version", "0.0.0")
		wantJSON(t, "an old client", resp, body, 400)
	})

	// image_spec.rb
	t.Run("images", func(t *testing.T) {
		resp, body := s.draupnirCall(t, "POST", "/images", imagePayload, "Authorization", "Bearer incorrectsecret")
		sameJSON(t, "POST /images with an invalid secret", wantJSON(t, "POST /images with an invalid secret", resp, body, 401),
			`{"status":"401","id":"unauthorized","code":"unauthorized","title":"Unauthorized","detail":"You do not have permission to view this resource","source":{}}`)

		resp, body = s.draupnirCall(t, "POST", "/images", imagePayload)
		doc := wantJSON(t, "POST /images", resp, body, 201)
		id, _ := jsonAt(doc, "data", "id").(string)
		if jsonAt(doc, "data", "type") != "images" || id == "" {
			t.Fatalf("POST /images: %s", body)
		}
		imageAttributes(t, "POST /images", jsonAt(doc, "data", "attributes"))

		resp, body = s.draupnirCall(t, "GET", "/images", nil)
		doc = wantJSON(t, "GET /images", resp, body, 200)
		if jsonAt(doc, "data", 0, "id") != id || jsonAt(doc, "data", 0, "type") != "images" {
			t.Errorf("GET /images: %s", body)
		}
		imageAttributes(t, "GET /images", jsonAt(doc, "data", 0, "attributes"))

		resp, body = s.draupnirCall(t, "GET", "/images/"+id, nil)
		doc = wantJSON(t, "GET /images/{id}", resp, body, 200)
		if jsonAt(doc, "data", "id") != id {
			t.Errorf("GET /images/{id}: %s", body)
		}
		imageAttributes(t, "GET /images/{id}", jsonAt(doc, "data", "attributes"))

		resp, body = s.draupnirCall(t, "DELETE", "/images/"+id, nil)
		wantJSON(t, "DELETE /images/{id}", resp, body, 204)
	})

	// instance_spec.rb
	t.Run("instances", func(t *testing.T) {
		unready := createImage(t)
		resp, body := s.draupnirCall(t, "POST", "/instances", instancePayload(unready))
		sameJSON(t, "POST /instances of an unready image", wantJSON(t, "POST /instances of an unready image", resp, body, 422),
			`{"id":"unprocessable_entity","status":"422","code":"unprocessable_entity","title":"Image Not Ready","detail":"The specified image is not ready to be used","source":{"parameter":"image_id"}}`)

		imageID := readyImage(t)
		resp, body = s.draupnirCall(t, "POST", "/instances", instancePayload(imageID))
		doc := wantJSON(t, "POST /instances", resp, body, 201)
		instanceID, _ := jsonAt(doc, "data", "id").(string)
		if instanceID == "" || jsonAt(doc, "data", "type") != "instances" {
			t.Fatalf("POST /instances: %s", body)
		}
		instanceAttributes(t, "POST /instances", jsonAt(doc, "data", "attributes"), imageID)
		withCredentials(t, "POST /instances", doc)

		resp, body = s.draupnirCall(t, "GET", "/instances", nil)
		doc = wantJSON(t, "GET /instances", resp, body, 200)
		if list, _ := jsonAt(doc, "data").([]any); len(list) != 1 || jsonAt(list, 0, "id") != instanceID || jsonAt(list, 0, "relationships") != nil {
			t.Errorf("GET /instances: %s", body)
		}
		instanceAttributes(t, "GET /instances", jsonAt(doc, "data", 0, "attributes"), imageID)

		resp, body = s.draupnirCall(t, "GET", "/instances/"+instanceID, nil)
		doc = wantJSON(t, "GET /instances/{id}", resp, body, 200)
		instanceAttributes(t, "GET /instances/{id}", jsonAt(doc, "data", "attributes"), imageID)
		creds := withCredentials(t, "GET /instances/{id}", doc)
		// The client certificate is issued by the CA served, and the key
		// is its private key.
		ca := parseCert(t, creds["ca_certificate"])
		cert := parseCert(t, creds["client_certificate"])
		if err := cert.CheckSignatureFrom(ca); err != nil || !bytes.Equal(cert.RawIssuer, ca.RawSubject) {
			t.Errorf("the client certificate is not issued by the CA: %v", err)
		}
		certPEM, _ := creds["client_certificate"].(string)
		keyPEM, _ := creds["client_key"].(string)
		if _, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM)); err != nil {
			t.Errorf("the client key does not match the certificate: %v", err)
		}

		resp, body = s.draupnirCall(t, "DELETE", "/instances/"+instanceID, nil)
		wantJSON(t, "DELETE /instances/{id}", resp, body, 204)
		resp, body = s.draupnirCall(t, "GET", "/instances", nil)
		sameJSON(t, "GET /instances after the delete", jsonAt(wantJSON(t, "GET /instances", resp, body, 200), "data"), `[]`)

		// The suite's after hook: every image goes.
		for _, id := range []string{unready, imageID} {
			resp, body = s.draupnirCall(t, "DELETE", "/images/"+id, nil)
			wantJSON(t, "DELETE /images/"+id, resp, body, 204)
		}
	})
}

func mustNumber(t *testing.T, id string) float64 {
	t.Helper()
	var n float64
	if err := json.Unmarshal([]byte(id), &n); err != nil {
		t.Fatalf("id %q is not a number", id)
	}
	return n
}

func parseCert(t *testing.T, v any) *x509.Certificate {
	t.Helper()
	s, _ := v.(string)
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		t.Fatalf("not PEM: %q", s)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// draupnir5Client runs the nested module's tests (go test in
// spec/draupnir5) against s and fails with their output if they fail, or
// if they did not run.
func draupnir5Client(t *testing.T, s *server, email string) {
	tarball := filepath.Join(t.TempDir(), "db.tar.gz")
	if err := os.WriteFile(tarball, pgTarball(t), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-v", "./...")
	cmd.Dir = "draupnir5"
	cmd.Env = append(os.Environ(),
		"DRAUPNIR5_URL=http://"+s.http,
		"DRAUPNIR5_SHARED_SECRET="+s.secret,
		"DRAUPNIR5_TARBALL="+tarball,
		"DRAUPNIR5_HOSTNAME=localhost",
		"DRAUPNIR5_OAUTH_EMAIL="+email,
		"DRAUPNIR5_PSQL="+filepath.Join(pgtest.BinDir(t), "psql"),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("go test in spec/draupnir5:\n%s", out)
	if err != nil {
		t.Fatalf("the Draupnir 5.3 client's tests failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestDraupnirClient")) {
		t.Fatal("the Draupnir 5.3 client's tests did not run")
	}
}
