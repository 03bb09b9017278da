package spec

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// expectErrorDetail is expectError that also wants the detail to hold
// each of parts.
func expectErrorDetail(t *testing.T, what string, status int, body []byte, wantStatus int, wantCode string, parts ...string) {
	t.Helper()
	expectError(t, what, status, body, wantStatus, wantCode)
	if status != wantStatus {
		return
	}
	d := decode(t, body)
	if len(d.Errors) != 1 {
		return
	}
	for _, p := range parts {
		if !strings.Contains(d.Errors[0].Detail, p) {
			t.Errorf("%s: detail %q does not mention %s", what, d.Errors[0].Detail, p)
		}
	}
}

// listImageIDs is the ids GET /images lists.
func (s *server) listImageIDs(t *testing.T) []string {
	t.Helper()
	status, body := s.call(t, "GET", "/images", s.secret, nil)
	if status != 200 {
		t.Fatalf("GET /images: %d %s", status, body)
	}
	var list []resource
	if err := json.Unmarshal(decode(t, body).Data, &list); err != nil {
		t.Fatalf("GET /images data: %v", err)
	}
	ids := make([]string, 0, len(list))
	for _, r := range list {
		ids = append(ids, r.ID)
	}
	return ids
}

// expiresAt reads an instance's expires_at.
func expiresAt(t *testing.T, inst resource) time.Time {
	t.Helper()
	s, _ := inst.Attributes["expires_at"].(string)
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("instance %s: expires_at %v: %v", inst.ID, inst.Attributes["expires_at"], err)
	}
	return at
}

// TestAPIErrors drives the error paths of the API against a real sindrid:
// every bad input gets a JSON:API 4xx that says what is wrong, never a 500.
func TestAPIErrors(t *testing.T) {
	const defaultTTL, maxTTL = time.Hour, 2 * time.Hour
	// A small filesystem, so that an upload can fill it (the last
	// subtest); the metadata database lives elsewhere, so that it never
	// meets the full disk.
	meta := pgtest.StartInstance(t)
	s := startServerSized(t, "1GiB", fmt.Sprintf("default_ttl = %q\nmax_ttl = %q\n", defaultTTL, maxTTL),
		fmt.Sprintf("database_url = %q", meta.SocketURL()))
	imageID := s.readyImage(t, "")
	alice, bob := s.token(t, "alice"), s.token(t, "bob")

	before := time.Now()
	inst, creds := s.createInstance(t, alice, imageID, nil)
	after := time.Now()

	t.Run("NUL and out-of-range image attributes", func(t *testing.T) {
		images := s.listImageIDs(t)
		for _, attr := range []string{"name", "anonymisation_script", "source_url"} {
			attrs := map[string]any{"backed_up_at": "2026-11-01T12:00:00Z", attr: "a\x00b"}
			status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", attrs))
			expectErrorDetail(t, "NUL in "+attr, status, body, 400, "bad_request", `"`+attr+`"`, "NUL")
		}
		// Elsewhere too: the decoding is shared.
		status, body := s.call(t, "POST", "/instances", alice, resourceBody("instances", map[string]any{"image_id": imageID, "ttl": "30m\x00"}))
		expectErrorDetail(t, "NUL in ttl", status, body, 400, "bad_request", `"ttl"`, "NUL")
		// A time RFC 3339 parses but that is in year 10000 in UTC: the API
		// could not write it back, and clients could not list the images.
		status, body = s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "9999-12-31T23:59:59-23:59"}))
		expectErrorDetail(t, "backed_up_at in year 10000", status, body, 400, "bad_request", `"backed_up_at"`)
		if got := s.listImageIDs(t); !slices.Equal(got, images) {
			t.Errorf("images after the refused creations: %v, before %v", got, images)
		}
	})

	t.Run("upload", func(t *testing.T) {
		tarball := []byte("not read")
		octet := []string{"Content-Type", "application/octet-stream"}
		status, body := s.call(t, "PUT", "/images/424242/upload", s.secret, tarball, octet...)
		expectError(t, "upload to an unknown image", status, body, 404, "resource_not_found")
		status, body = s.call(t, "PUT", "/images/"+imageID+"/upload", alice, tarball, octet...)
		expectError(t, "upload by an API token user", status, body, 403, "forbidden")
		status, body = s.call(t, "PUT", "/images/"+imageID+"/upload", s.secret, tarball, octet...)
		expectError(t, "upload to a ready image", status, body, 409, "image_not_pending")
		// The ready image is unchanged.
		status, body = s.call(t, "GET", "/images/"+imageID, s.secret, nil)
		if status != 200 || decode(t, body).one(t).Attributes["status"] != "ready" {
			t.Errorf("the image after the refused upload: %d %s", status, body)
		}
	})

	t.Run("POST /images by a non-upload user", func(t *testing.T) {
		images := s.listImageIDs(t)
		status, body := s.call(t, "POST", "/images", alice, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z"}))
		expectError(t, "POST /images by an API token user", status, body, 403, "forbidden")
		if got := s.listImageIDs(t); !slices.Equal(got, images) {
			t.Errorf("images after the refused creation: %v, before %v", got, images)
		}
	})

	t.Run("default TTL", func(t *testing.T) {
		at := expiresAt(t, inst)
		lo, hi := before.Add(defaultTTL).Add(-2*time.Second), after.Add(defaultTTL).Add(2*time.Second)
		if at.Before(lo) || at.After(hi) {
			t.Errorf("expires_at %s without a ttl, want now + %s (between %s and %s)", at, defaultTTL, lo, hi)
		}
	})

	t.Run("POST /instances ttl", func(t *testing.T) {
		for _, ttl := range []string{"3h", "banana", "-5m", "0s"} {
			status, body := s.call(t, "POST", "/instances", alice, resourceBody("instances", map[string]any{"image_id": imageID, "ttl": ttl}))
			expectError(t, "ttl "+ttl, status, body, 400, "bad_request")
		}
	})

	t.Run("PATCH /instances", func(t *testing.T) {
		path := "/instances/" + inst.ID
		patch := func(id string, attrs map[string]any) map[string]any {
			data := map[string]any{"type": "instances", "attributes": attrs}
			if id != "" {
				data["id"] = id
			}
			return map[string]any{"data": data}
		}
		at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }

		status, body := s.call(t, "PATCH", path, alice, patch(inst.ID, map[string]any{"expires_at": at(-time.Hour)}))
		expectErrorDetail(t, "expires_at in the past", status, body, 400, "bad_request", "past")
		status, body = s.call(t, "PATCH", path, alice, patch(inst.ID, map[string]any{"expires_at": at(maxTTL + time.Hour)}))
		expectError(t, "expires_at beyond max_ttl", status, body, 400, "bad_request")
		status, body = s.call(t, "PATCH", path, alice, patch("999999", map[string]any{"expires_at": at(time.Hour)}))
		expectError(t, "id mismatch", status, body, 409, "conflict")
		status, body = s.call(t, "PATCH", path, alice, []byte{})
		expectError(t, "empty body", status, body, 400, "bad_request")
		status, body = s.call(t, "PATCH", path, alice, patch(inst.ID, nil))
		expectError(t, "no attributes", status, body, 400, "bad_request")
		status, body = s.call(t, "PATCH", path, alice, patch(inst.ID, map[string]any{"expires_at": "tomorrow"}))
		expectErrorDetail(t, "expires_at not a time", status, body, 400, "bad_request", `"expires_at"`)
		status, body = s.call(t, "PATCH", path, bob, patch(inst.ID, map[string]any{"expires_at": at(time.Hour)}))
		expectError(t, "another user's instance", status, body, 404, "resource_not_found")

		// None of these changed it.
		status, body = s.call(t, "GET", path, alice, nil)
		if status != 200 || !expiresAt(t, decode(t, body).one(t)).Equal(expiresAt(t, inst)) {
			t.Errorf("after refused PATCHes: %d %s", status, body)
		}

		want := time.Now().Add(90 * time.Minute).UTC().Truncate(time.Second)
		status, body = s.call(t, "PATCH", path, alice, patch(inst.ID, map[string]any{"expires_at": want.Format(time.RFC3339)}))
		if status != 200 {
			t.Fatalf("PATCH expires_at: %d %s", status, body)
		}
		if got := expiresAt(t, decode(t, body).one(t)); !got.Equal(want) {
			t.Errorf("PATCH answers expires_at %s, want %s", got, want)
		}
		status, body = s.call(t, "GET", path, alice, nil)
		if status != 200 {
			t.Fatalf("GET after PATCH: %d %s", status, body)
		}
		if got := expiresAt(t, decode(t, body).one(t)); !got.Equal(want) {
			t.Errorf("GET after PATCH shows expires_at %s, want %s", got, want)
		}
	})

	t.Run("reset", func(t *testing.T) {
		status, body := s.call(t, "POST", "/instances/424242/reset", alice, nil)
		expectError(t, "reset of an unknown instance", status, body, 404, "resource_not_found")
		status, body = s.call(t, "POST", "/instances/"+inst.ID+"/reset", bob, nil)
		expectError(t, "reset of another user's instance", status, body, 404, "resource_not_found")
	})

	t.Run("bad ids", func(t *testing.T) {
		patchBody := map[string]any{"data": map[string]any{"type": "instances", "attributes": map[string]any{"protected": true}}}
		for _, id := range []string{"-1", "1e3", "99999999999999999999", "0", "01", "..%2F1"} {
			for _, c := range []struct {
				method, path, token string
				body                any
			}{
				{"GET", "/images/" + id, s.secret, nil},
				{"DELETE", "/images/" + id, s.secret, nil},
				{"DELETE", "/instances/" + id, alice, nil},
				{"PATCH", "/instances/" + id, alice, patchBody},
				{"POST", "/instances/" + id + "/reset", alice, nil},
			} {
				status, body := s.call(t, c.method, c.path, c.token, c.body)
				expectError(t, c.method+" "+c.path, status, body, 404, "resource_not_found")
			}
		}
	})

	t.Run("version header", func(t *testing.T) {
		for _, c := range []struct {
			header, code string
			draupnir     bool // a Draupnir client's value: Draupnir's error object
		}{
			{"", "missing_api_version_header", false},
			{"4.9.0", "invalid_api_version", true},
			{"5.9.0", "invalid_api_version", false},
			{"garbage", "invalid_api_version", true},
		} {
			expect := expectError
			if c.draupnir {
				expect = expectDraupnirError
			}
			status, body := s.call(t, "POST", "/instances", alice, resourceBody("instances", map[string]any{"image_id": "424242"}), "Draupnir-Version", c.header)
			expect(t, "POST /instances with version "+c.header, status, body, 400, c.code)
			status, body = s.call(t, "GET", "/instances/"+inst.ID, alice, nil, "Draupnir-Version", c.header)
			expect(t, "GET /instances/{id} with version "+c.header, status, body, 400, c.code)
		}
	})

	t.Run("draupnir is not a superuser", func(t *testing.T) {
		got, err := query(certConnString(t, inst, creds), "select current_user || ' ' || rolsuper::text from pg_roles where rolname = current_user")
		if err != nil || got != "draupnir false" {
			t.Fatalf("client certificate login: %q %v; want draupnir, not a superuser", got, err)
		}
	})

	// Last: it fills the filesystem for a moment.
	t.Run("archive that expands past the free space", func(t *testing.T) {
		status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z"}))
		if status != 201 {
			t.Fatalf("POST /images: %d %s", status, body)
		}
		pending := decode(t, body).one(t).ID
		// GNU tar's archive of a sparse file of 1 TiB: about 10 kB.
		dir := t.TempDir()
		f, err := os.Create(filepath.Join(dir, "huge"))
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(1 << 40)
		f.WriteAt([]byte("x"), 1<<39)
		f.Close()
		cmd := exec.Command("tar", "--sparse", "-cf", "-", "huge")
		cmd.Dir = dir
		sparse, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		octet := []string{"Content-Type", "application/octet-stream"}
		if status, body := s.call(t, "PUT", "/images/"+pending+"/upload", s.secret, sparse, octet...); status != 200 {
			t.Fatalf("upload of %d bytes: %d %s", len(sparse), status, body)
		}
		status, body = s.call(t, "POST", "/images/"+pending+"/done", s.secret, nil)
		expectErrorDetail(t, fmt.Sprintf("done on a %d-byte archive of a 1 TiB sparse file", len(sparse)), status, body, 422, "image_finalise_failed",
			"the archive expands past the free space", `"huge" would need 1.0 TiB`)
		// The next upload into the same image finalises.
		if status, body := s.call(t, "PUT", "/images/"+pending+"/upload", s.secret, pgTarball(t), octet...); status != 200 {
			t.Fatalf("upload again: %d %s", status, body)
		}
		if status, body = s.call(t, "POST", "/images/"+pending+"/done", s.secret, nil); status != 200 {
			t.Fatalf("done after the refusal: %d %s", status, body)
		}
	})

	t.Run("upload without disk space", func(t *testing.T) {
		status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z"}))
		if status != 201 {
			t.Fatalf("POST /images: %d %s", status, body)
		}
		pending := decode(t, body).one(t).ID
		status, body = s.call(t, "GET", "/status", s.secret, nil)
		if status != 200 {
			t.Fatalf("GET /status: %d %s", status, body)
		}
		free := int64(decode(t, body).one(t).Attributes["free_bytes"].(float64))
		octet := []string{"Content-Type", "application/octet-stream"}
		status, body = s.call(t, "PUT", "/images/"+pending+"/upload", s.secret, io.LimitReader(zeroReader{}, free+128<<20), octet...)
		expectError(t, fmt.Sprintf("an upload of %d bytes with %d free", free+128<<20, free), status, body, 503, "no_disk_space")

		// The partial upload is gone: a small one fits again (BTRFS
		// frees the space at its next commit).
		deadline := time.Now().Add(30 * time.Second)
		for {
			status, body = s.call(t, "PUT", "/images/"+pending+"/upload", s.secret, []byte("small"), octet...)
			if status == 200 || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if status != 200 || decode(t, body).one(t).Attributes["status"] != "pending" {
			t.Fatalf("a small upload after the failed one: %d %s", status, body)
		}
	})
}

// zeroReader reads zeros without end.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
