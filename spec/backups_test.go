package spec

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// download GETs a backup's archive with the version header and the token.
func (s *server) download(t *testing.T, id, token string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+s.http+"/backups/"+id+"/download", nil)
	req.Header.Set("Draupnir-Version", apiVersion)
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// waitBackup polls GET /backups/{id} until the backup is not running.
func (s *server) waitBackup(t *testing.T, id, token string) resource {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		status, body := s.call(t, "GET", "/backups/"+id, token, nil)
		if status != 200 {
			t.Fatalf("GET /backups/%s: %d %s", id, status, body)
		}
		b := decode(t, body).one(t)
		if b.Attributes["status"] != "running" {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %s still running after 2 minutes", id)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestBackupsEndToEnd(t *testing.T) {
	s := startServer(t, "")
	imageID := s.readyImage(t, "")
	ada, bob := s.token(t, "ada"), s.token(t, "bob")
	inst, _ := s.createInstance(t, ada, imageID, nil)
	url := inst.Attributes["database_url"].(string)
	if _, err := query(url, "insert into people values (10, 'changed@x') returning 'ok'"); err != nil {
		t.Fatal(err)
	}

	status, body := s.call(t, "POST", "/backups", ada, resourceBody("backups", map[string]any{"instance_id": inst.ID}))
	if status != 202 {
		t.Fatalf("POST /backups: %d %s", status, body)
	}
	created := decode(t, body).one(t)
	if created.Type != "backups" || created.Attributes["status"] != "running" || created.Attributes["instance_id"] != float64(idNumber(t, inst.ID)) {
		t.Fatalf("new backup: %+v", created)
	}
	// Written after the 202: not in the backup.
	if _, err := query(url, "insert into people values (11, 'later@x') returning 'ok'"); err != nil {
		t.Fatal(err)
	}

	t.Run("errors", func(t *testing.T) {
		for _, c := range []struct {
			what   string
			token  string
			attrs  map[string]any
			status int
			code   string
		}{
			{"neither id", ada, map[string]any{}, 400, "bad_request"},
			{"both ids", ada, map[string]any{"instance_id": inst.ID, "image_id": imageID}, 400, "bad_request"},
			{"unknown instance", ada, map[string]any{"instance_id": "999"}, 404, "resource_not_found"},
			{"unknown image", s.secret, map[string]any{"image_id": "999"}, 404, "resource_not_found"},
			{"an image, by a user", ada, map[string]any{"image_id": imageID}, 403, "forbidden"},
			{"another user's instance", bob, map[string]any{"instance_id": inst.ID}, 404, "resource_not_found"},
			{"garbage id", ada, map[string]any{"instance_id": "x"}, 400, "bad_request"},
		} {
			status, body := s.call(t, "POST", "/backups", c.token, resourceBody("backups", c.attrs))
			expectError(t, c.what, status, body, c.status, c.code)
		}
		status, body := s.call(t, "POST", "/backups", ada, resourceBody("instances", map[string]any{"instance_id": inst.ID}))
		if status < 400 || status >= 500 {
			t.Errorf("wrong type: %d %s", status, body)
		}
		status, body = s.call(t, "GET", "/backups/"+created.ID, bob, nil)
		expectError(t, "another user's backup", status, body, 404, "resource_not_found")
		resp, body := s.download(t, created.ID, bob)
		expectError(t, "another user's download", resp.StatusCode, body, 404, "resource_not_found")
		status, body = s.call(t, "DELETE", "/backups/"+created.ID, bob, nil)
		expectError(t, "deleting another user's backup", status, body, 404, "resource_not_found")
		status, body = s.call(t, "GET", "/backups/abc", ada, nil)
		expectError(t, "an id that is not a number", status, body, 404, "resource_not_found")
		status, body = s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{
			"backed_up_at": "2026-11-01T12:00:00Z", "backup_id": "999"}))
		expectError(t, "image from an unknown backup", status, body, 404, "resource_not_found")
		status, body = s.call(t, "GET", "/backups", bob, nil)
		if status != 200 || string(decode(t, body).Data) != "[]" {
			t.Errorf("bob's backups: %d %s", status, body)
		}
	})

	done := s.waitBackup(t, created.ID, ada)
	if done.Attributes["status"] != "done" {
		t.Fatalf("backup ended %+v", done.Attributes)
	}
	status, body = s.call(t, "GET", "/backups", ada, nil)
	if status != 200 || !containsID(t, body, created.ID) {
		t.Errorf("ada's list lacks her backup: %d %s", status, body)
	}
	// /status counts the archives' disk use: they share the filesystem
	// with the instances.
	status, body = s.call(t, "GET", "/status", s.secret, nil)
	if status != 200 {
		t.Fatalf("GET /status: %d %s", status, body)
	}
	st := decode(t, body).one(t).Attributes
	if used, size := st["used_by_backups_bytes"].(float64), done.Attributes["size_bytes"].(float64); used < size || size <= 0 {
		t.Errorf("/status used_by_backups_bytes %v, want at least the done backup's %v", used, size)
	}
	if counts, _ := st["backups"].(map[string]any); counts == nil || counts["done"].(float64) < 1 {
		t.Errorf("/status backups %v, want a done one counted", st["backups"])
	}

	t.Run("download", func(t *testing.T) {
		resp, archive := s.download(t, created.ID, ada)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/zstd" {
			t.Fatalf("download: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		sum := sha256.Sum256(archive)
		if hex.EncodeToString(sum[:]) != done.Attributes["sha256"] || float64(len(archive)) != done.Attributes["size_bytes"] {
			t.Errorf("archive of %d bytes, sha256 %x; the backup says %v bytes, %v", len(archive), sum, done.Attributes["size_bytes"], done.Attributes["sha256"])
		}
		if want := "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":"; resp.Header.Get("Repr-Digest") != want {
			t.Errorf("Repr-Digest %q, want %q", resp.Header.Get("Repr-Digest"), want)
		}
		if string(archive[:4]) != "\x28\xb5\x2f\xfd" {
			t.Errorf("the archive does not start with zstd's magic: % x", archive[:4])
		}
		resp, part := s.download(t, created.ID, ada, "Range", "bytes=100-199")
		if resp.StatusCode != 206 || string(part) != string(archive[100:200]) {
			t.Errorf("a range of the archive: %d, %d bytes", resp.StatusCode, len(part))
		}
		resp, body := s.download(t, created.ID, ada, "Range", "bytes="+strconv.Itoa(len(archive))+"-")
		expectError(t, "a range past the end", resp.StatusCode, body, 416, "range_not_satisfiable")
		if cr := resp.Header.Get("Content-Range"); cr != "bytes */"+strconv.Itoa(len(archive)) {
			t.Errorf("416 Content-Range %q", cr)
		}
	})

	// Restore: an image from the backup, whose clones show the change.
	status, body = s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{
		"backed_up_at": "2026-11-02T12:00:00Z", "backup_id": created.ID, "name": "from backup"}))
	if status != 201 {
		t.Fatalf("POST /images with backup_id: %d %s", status, body)
	}
	restored := decode(t, body).one(t)
	if restored.Attributes["backup_id"] != float64(idNumber(t, created.ID)) {
		t.Errorf("restored image: %+v", restored.Attributes)
	}
	status, body = s.call(t, "POST", "/images/"+restored.ID+"/done", s.secret, nil)
	if status != 200 || decode(t, body).one(t).Attributes["ready"] != true {
		t.Fatalf("done on the restored image: %d %s", status, body)
	}
	if restored = decode(t, body).one(t); restored.Attributes["anonymised"] != false {
		t.Errorf("an image restored without a script says anonymised %v", restored.Attributes["anonymised"])
	}
	// An instance's backup takes no anonymisation script: its users could
	// have planted code for the script to run as superuser.
	status, body = s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{
		"backed_up_at": "2026-11-02T12:00:00Z", "backup_id": created.ID, "anonymisation_script": "update people set email = 'x';"}))
	expectErrorDetail(t, "restore of an instance's backup with a script", status, body, 400, "bad_request",
		"instance "+inst.ID, "without anonymisation_script")
	clone, _ := s.createInstance(t, ada, restored.ID, nil)
	cloneURL := clone.Attributes["database_url"].(string)
	if got, err := query(cloneURL, "select string_agg(id::text, ',' order by id) from people"); err != nil || got != "1,2,10" {
		t.Errorf("people in a clone of the restored image: %q, %v; want 1,2,10", got, err)
	}

	// Deleting the backup leaves the instance and the restored image.
	if status, body := s.call(t, "DELETE", "/backups/"+created.ID, ada, nil); status != 204 {
		t.Fatalf("DELETE /backups: %d %s", status, body)
	}
	status, body = s.call(t, "GET", "/backups/"+created.ID, ada, nil)
	expectError(t, "a deleted backup", status, body, 404, "resource_not_found")
	if got, err := query(url, "select count(*)::text from people"); err != nil || got != "4" {
		t.Errorf("the instance after deleting its backup: %q, %v", got, err)
	}
	if got, err := query(cloneURL, "select count(*)::text from people"); err != nil || got != "3" {
		t.Errorf("the restored clone after deleting the backup: %q, %v", got, err)
	}

	// Only the upload user may back up an image: a user gets a 403 (the
	// image is theirs to see, not to copy whole).
	status, body = s.call(t, "POST", "/backups", bob, resourceBody("backups", map[string]any{"image_id": imageID}))
	expectErrorDetail(t, "a user's backup of an image", status, body, 403, "forbidden", "upload user")
	status, body = s.call(t, "GET", "/backups", bob, nil)
	if status != 200 || string(decode(t, body).Data) != "[]" {
		t.Errorf("bob's backups after his refused backup of an image: %d %s", status, body)
	}
	status, body = s.call(t, "POST", "/backups", s.secret, resourceBody("backups", map[string]any{"image_id": imageID}))
	if status != 202 {
		t.Fatalf("the upload user's backup of an image: %d %s", status, body)
	}
	ib := decode(t, body).one(t)
	if got := s.waitBackup(t, ib.ID, s.secret); got.Attributes["status"] != "done" || got.Attributes["image_id"] != float64(idNumber(t, imageID)) {
		t.Errorf("backup of image %s: %+v", imageID, got.Attributes)
	}
	status, body = s.call(t, "GET", "/backups/"+ib.ID, bob, nil)
	expectError(t, "the upload user's backup of an image, asked for by a user", status, body, 404, "resource_not_found")
	// A backup of an uploaded image may be restored with a script.
	status, body = s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{
		"backed_up_at": "2026-11-02T12:00:00Z", "backup_id": ib.ID, "anonymisation_script": "delete from people;"}))
	if status != 201 {
		t.Fatalf("restore of an image's backup with a script: %d %s", status, body)
	}
	fromImage := decode(t, body).one(t)
	status, body = s.call(t, "POST", "/images/"+fromImage.ID+"/done", s.secret, nil)
	if got := decode(t, body).one(t); status != 200 || got.Attributes["anonymised"] != true {
		t.Errorf("done on the restore of an image's backup with a script: %d %s", status, body)
	}
}

func idNumber(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("id %q: %v", s, err)
	}
	return n
}

func containsID(t *testing.T, body []byte, id string) bool {
	t.Helper()
	var list struct {
		Data []resource `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("not a list: %s", body)
	}
	for _, r := range list.Data {
		if r.ID == id {
			return true
		}
	}
	return false
}
