package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// instanceIDs lists the ids of the instances token sees.
func (s *server) instanceIDs(t *testing.T, token string) []string {
	t.Helper()
	status, body := s.call(t, "GET", "/instances", token, nil)
	if status != 200 {
		t.Fatalf("GET /instances: %d %s", status, body)
	}
	var list []resource
	if err := json.Unmarshal(decode(t, body).Data, &list); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 0, len(list))
	for _, r := range list {
		ids = append(ids, r.ID)
	}
	return ids
}

// statusLimits reads GET /status's limits as token sees them.
func (s *server) statusLimits(t *testing.T, token string) (map[string]map[string]float64, resource) {
	t.Helper()
	status, body := s.call(t, "GET", "/status", token, nil)
	if status != 200 {
		t.Fatalf("GET /status: %d %s", status, body)
	}
	st := decode(t, body).one(t)
	raw, _ := json.Marshal(st.Attributes["limits"])
	var limits map[string]map[string]float64
	if err := json.Unmarshal(raw, &limits); err != nil {
		t.Fatalf("status limits %s: %v", raw, err)
	}
	return limits, st
}

// postInstance is one POST /instances, safe to call from any goroutine.
func (s *server) postInstance(token, imageID string) (int, []byte, error) {
	return s.try("POST", "/instances", token, resourceBody("instances", map[string]any{"image_id": imageID}))
}

// TestLimits drives the [limits] through a real sindrid: each refusal's
// status, code and detail, nothing made by a refused request, the limits
// and their use in /status and /metrics, concurrent creations at a limit,
// and a disk filled below the reserve.
func TestLimits(t *testing.T) {
	// The metadata database lives elsewhere, so that it never meets the
	// full disk.
	meta := pgtest.StartInstance(t)
	s := startServerSized(t, "1GiB", `
[limits]
instances_per_user = 2
protected_instances_per_user = 1
backups_total_bytes = 1
disk_reserve = "30%"
`, fmt.Sprintf("database_url = %q", meta.SocketURL()))
	imageID := s.readyImage(t, "")
	alice, bob := s.token(t, "alice"), s.token(t, "bob")

	first, _ := s.createInstance(t, alice, imageID, map[string]any{"protected": true})
	status, body := s.call(t, "POST", "/instances", alice, resourceBody("instances", map[string]any{"image_id": imageID, "protected": true}))
	expectErrorDetail(t, "alice's second protected instance", status, body, 429, "quota_exceeded",
		"you have 1 protected instance, the limit (limits.protected_instances_per_user) is 1")
	second, _ := s.createInstance(t, alice, imageID, nil)
	status, body = s.call(t, "POST", "/instances", alice, resourceBody("instances", map[string]any{"image_id": imageID}))
	expectErrorDetail(t, "alice's third instance", status, body, 429, "quota_exceeded",
		"you have 2 instances, the limit (limits.instances_per_user) is 2")
	if ids := s.instanceIDs(t, alice); strings.Join(ids, ",") != first.ID+","+second.ID {
		t.Errorf("alice's instances after the refusals: %v, want %s and %s", ids, first.ID, second.ID)
	}
	patch := map[string]any{"data": map[string]any{"type": "instances", "id": second.ID, "attributes": map[string]any{"protected": true}}}
	status, body = s.call(t, "PATCH", "/instances/"+second.ID, alice, patch)
	expectErrorDetail(t, "protecting alice's second instance", status, body, 429, "quota_exceeded", "limits.protected_instances_per_user")
	if status, body := s.call(t, "GET", "/instances/"+second.ID, alice, nil); status != 200 || decode(t, body).one(t).Attributes["protected"] != false {
		t.Errorf("after the refused PATCH: %d %s", status, body)
	}

	t.Run("concurrent creations at the limit", func(t *testing.T) {
		const tries = 20
		statuses := make([]int, tries)
		bodies := make([][]byte, tries)
		var wg sync.WaitGroup
		for i := range tries {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if statuses[i], bodies[i], err = s.postInstance(bob, imageID); err != nil {
					statuses[i], bodies[i] = 0, []byte(err.Error())
				}
			}()
		}
		wg.Wait()
		created := 0
		for i, st := range statuses {
			switch st {
			case 201:
				created++
			case 429:
				expectErrorDetail(t, "a creation past the limit", st, bodies[i], 429, "quota_exceeded", "limits.instances_per_user")
			default:
				t.Errorf("POST /instances: %d %s", st, bodies[i])
			}
		}
		if ids := s.instanceIDs(t, bob); created != 2 || len(ids) != 2 {
			t.Fatalf("%d of %d concurrent creations passed, bob has %v; want exactly 2", created, tries, ids)
		}
	})

	t.Run("the upload user is not held", func(t *testing.T) {
		for range 3 {
			s.createInstance(t, s.secret, imageID, map[string]any{"protected": true})
		}
	})

	t.Run("status and metrics", func(t *testing.T) {
		limits, _ := s.statusLimits(t, alice)
		if l := limits["instances_per_user"]; l["limit"] != 2 || l["used"] != 2 || l["yours"] != 2 {
			t.Errorf("instances_per_user for alice: %v", l)
		}
		if l := limits["protected_instances_per_user"]; l["limit"] != 1 || l["used"] != 1 || l["yours"] != 1 {
			t.Errorf("protected_instances_per_user for alice: %v", l)
		}
		if l := limits["upload_user_instances"]; l["limit"] != 0 || l["used"] != 3 {
			t.Errorf("upload_user_instances: %v", l)
		}
		if l := limits["disk_reserve"]; l["limit"] < 0.29*(1<<30) || l["limit"] > 0.31*(1<<30) || l["free"] <= 0 {
			t.Errorf("disk_reserve: %v, want 30%% of 1 GiB and the free bytes", l)
		}
		resp, err := http.Get("http://" + s.http + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`sindri_limit{name="instances_per_user"} 2`, `sindri_limit_used{name="instances_per_user"} 2`,
			`sindri_limit{name="protected_instances_per_user"} 1`, `sindri_limit_used{name="upload_user_instances"} 3`,
			`sindri_limit{name="disk_reserve"} `} {
			if !strings.Contains(string(metrics), want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})

	t.Run("backups' total bytes", func(t *testing.T) {
		status, body := s.call(t, "POST", "/backups", alice, resourceBody("backups", map[string]any{"instance_id": first.ID}))
		if status != 202 {
			t.Fatalf("POST /backups: %d %s", status, body)
		}
		if b := s.waitBackup(t, decode(t, body).one(t).ID, alice); b.Attributes["status"] != "done" {
			t.Fatalf("backup: %+v", b.Attributes)
		}
		status, body = s.call(t, "POST", "/backups", alice, resourceBody("backups", map[string]any{"instance_id": first.ID}))
		expectErrorDetail(t, "a backup once the archives take more than 1 byte", status, body, 429, "quota_exceeded",
			"the limit (limits.backups_total_bytes) is 1 B")
	})

	t.Run("a disk filled below the reserve", func(t *testing.T) {
		// A pending image with its upload, and a backup, made while there
		// is space.
		status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z"}))
		if status != 201 {
			t.Fatalf("POST /images: %d %s", status, body)
		}
		pending := decode(t, body).one(t).ID
		if status, body := s.call(t, "PUT", "/images/"+pending+"/upload", s.secret, pgTarball(t), "Content-Type", "application/octet-stream"); status != 200 {
			t.Fatalf("upload: %d %s", status, body)
		}
		var backupID string
		status, body = s.call(t, "GET", "/backups", s.secret, nil)
		var backups []resource
		if json.Unmarshal(decode(t, body).Data, &backups); status != 200 || len(backups) == 0 {
			t.Fatalf("GET /backups: %d %s", status, body)
		}
		backupID = backups[0].ID
		url := first.Attributes["database_url"].(string)

		var st syscall.Statfs_t
		if err := syscall.Statfs(s.data, &st); err != nil {
			t.Fatal(err)
		}
		total := int64(st.Blocks) * st.Bsize
		filler := fillTo(t, s.data, total*3/10/2) // half the reserve left
		for _, c := range []struct {
			what, method, path, token string
			body                      any
			says                      string
		}{
			{"a new instance", "POST", "/instances", s.secret, resourceBody("instances", map[string]any{"image_id": imageID}), "a new instance refused"},
			{"an upload", "PUT", "/images/" + pending + "/upload", s.secret, strings.NewReader("small"), "an upload of 5 bytes refused"},
			{"a finalise", "POST", "/images/" + pending + "/done", s.secret, nil, "finalising an image refused"},
			{"a backup", "POST", "/backups", alice, resourceBody("backups", map[string]any{"instance_id": second.ID}), "a new backup refused"},
			{"a restore", "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-01T12:00:00Z", "backup_id": backupID}), "a restore refused"},
		} {
			status, body := s.call(t, c.method, c.path, c.token, c.body)
			expectErrorDetail(t, c.what+" below the reserve", status, body, 503, "no_disk_space",
				c.says, "bytes) of", "is free", "under the disk reserve (limits.disk_reserve = 30%")
		}
		if ids := s.instanceIDs(t, s.secret); len(ids) != 7 {
			t.Errorf("instances after the refusals: %v, want the 7 made before", ids)
		}
		if status, body := s.call(t, "GET", "/images/"+pending, s.secret, nil); status != 200 || decode(t, body).one(t).Attributes["status"] != "pending" {
			t.Errorf("the image after the refused finalise: %d %s", status, body)
		}
		// Running instances are never refused: they answer, and write.
		if got, err := query(url, "select count(*)::text from people"); err != nil || got != "2" {
			t.Errorf("alice's instance below the reserve: %q, %v", got, err)
		}
		if _, err := query(url, "insert into people values (3, 'c@z') returning 'ok'"); err != nil {
			t.Errorf("alice's instance writing below the reserve: %v", err)
		}
		_, statusRes := s.statusLimits(t, s.secret)
		if statusRes.Attributes["status"] != "degraded" || !strings.Contains(fmt.Sprint(statusRes.Attributes["problems"]), "under the disk reserve") {
			t.Errorf("/status below the reserve: %v %v", statusRes.Attributes["status"], statusRes.Attributes["problems"])
		}

		// Space freed: an upload whose declared length cannot fit is
		// refused at once, and the rest works again.
		unfillTo(t, filler, s.data, total*3/10+64<<20)
		if err := syscall.Statfs(s.data, &st); err != nil {
			t.Fatal(err)
		}
		free := int64(st.Bavail) * st.Bsize
		status, body = uploadDeclared(t, s, pending, free)
		expectErrorDetail(t, "an upload declaring as many bytes as are free", status, body, 503, "no_disk_space",
			fmt.Sprintf("an upload of %d bytes refused:", free), "and it would leave", "under the disk reserve (limits.disk_reserve = 30%")
		if status, body := s.call(t, "POST", "/images/"+pending+"/done", s.secret, nil); status != 200 {
			t.Errorf("finalise once space is freed: %d %s", status, body)
		}
		s.createInstance(t, s.secret, imageID, nil)
	})
}

// uploadDeclared PUTs an upload whose Content-Length is n and returns the
// answer, which comes before the body is read.
func uploadDeclared(t *testing.T, s *server, imageID string, n int64) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("PUT", "http://"+s.http+"/images/"+imageID+"/upload", io.LimitReader(zeroReader{}, n))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = n
	req.Header.Set("Draupnir-Version", apiVersion)
	req.Header.Set("Authorization", "Bearer "+s.secret)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// fillTo writes a file of zeros under dir until its filesystem has less
// than leave bytes free.
func fillTo(t *testing.T, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		free := int64(st.Bavail) * st.Bsize
		if free < leave {
			return path
		}
		n := min(int64(len(buf)), max(free-leave+1, 4096))
		if _, err := f.Write(buf[:n]); err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Fatal(err)
		}
		f.Sync()
	}
}

// unfillTo removes the filler and waits until dir's filesystem has want
// bytes free (BTRFS frees space at its next commit).
func unfillTo(t *testing.T, path, dir string, want int64) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	exec.Command("sync").Run()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err == nil && int64(st.Bavail)*st.Bsize >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the space did not come back after removing the filler")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
