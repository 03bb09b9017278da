package spec

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

type cliSource struct {
	ID            int64   `json:"id"`
	Name          string  `json:"name"`
	URL           string  `json:"url"`
	Mode          string  `json:"mode"`
	Schedule      string  `json:"schedule"`
	Keep          int     `json:"keep"`
	Status        string  `json:"status"`
	Error         string  `json:"error"`
	LastImageID   int64   `json:"last_image_id"`
	LagBytes      *int64  `json:"lag_bytes"`
	LastRefreshAt *string `json:"last_refresh_at"`
	NextRefreshAt *string `json:"next_refresh_at"`
}

// Sources through the real sindrid and the sindri CLI: a source made from
// a URL read on stdin, refreshed into a ready image, its images listed by
// name, cloned with --source; its password shown nowhere and sealed in
// the metadata database; bad input refused with a 4xx that says why;
// other users kept out.
func TestSourcesEndToEnd(t *testing.T) {
	s := startServer(t, "")
	src := pgtest.StartSource(t)
	conn, err := pgx.Connect(context.Background(), src.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), "create table people (id int, email text); insert into people values (1, 'a@x'), (2, 'b@x')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	const password = "Spec-Source-S3cret"
	url := fmt.Sprintf("postgres://postgres:%s@/postgres?host=%s&port=%d", password, src.SocketDir, src.Port)
	admin := newCLIUser(t, "http://"+s.http, s.secret)

	out, errOut, code := admin.shell(fmt.Sprintf("echo %q | sindri sources create --name prod --url - --keep 2 --json", url))
	if code != 0 {
		t.Fatalf("sources create: exit %d\n%s\n%s", code, out, errOut)
	}
	if strings.Contains(out, password) {
		t.Fatalf("sources create shows the password: %s", out)
	}
	var created cliSource
	admin.okJSON(&created, "sources", "get", "prod")
	if created.Name != "prod" || created.Mode != "basebackup" || created.Keep != 2 || created.Status != "idle" ||
		created.NextRefreshAt != nil || strings.Contains(created.URL, password) || !strings.Contains(created.URL, src.SocketDir) {
		t.Fatalf("the source: %+v", created)
	}

	var refreshed cliSource
	admin.okJSON(&refreshed, "sources", "refresh", "prod", "--wait")
	if refreshed.Status != "idle" || refreshed.LastImageID == 0 || refreshed.LastRefreshAt == nil {
		t.Fatalf("after sources refresh --wait: %+v", refreshed)
	}
	var images []struct {
		cliImage
		SourceID int64 `json:"source_id"`
	}
	admin.okJSON(&images, "images", "list", "--source", "prod")
	if len(images) != 1 || images[0].ID != refreshed.LastImageID || !images[0].Ready || images[0].SourceID != created.ID {
		t.Fatalf("images list --source prod: %+v", images)
	}

	// A developer clones the source's newest image by its name.
	dev := newCLIUser(t, "http://"+s.http, s.token(t, "dev"))
	var inst cliInstance
	dev.okJSON(&inst, "instances", "create", "--source", "prod", "--ttl", "10m")
	if inst.ImageID != refreshed.LastImageID {
		t.Fatalf("instances create --source prod cloned image %d, want %d", inst.ImageID, refreshed.LastImageID)
	}
	if n, err := query(inst.DatabaseURL, "select count(*)::text from people"); err != nil || n != "2" {
		t.Fatalf("people in the clone: %q, %v", n, err)
	}
	dev.fails(1, []string{`no source named "nope"`}, "instances", "create", "--source", "nope")
	dev.fails(1, []string{"upload user"}, "sources", "list")
	dev.fails(2, []string{"image id or --source"}, "instances", "create", "1", "--source", "prod")

	// The password is nowhere in the metadata database in clear.
	if dump := s.dumpMeta(t); strings.Contains(dump, password) {
		t.Fatal("the metadata database holds the source's password in clear")
	}

	// Bad input gets a 4xx that says what to fix.
	devToken := strings.TrimPrefix(dev.env[len(dev.env)-1], "SINDRI_TOKEN=")
	for _, c := range []struct {
		method, path, token string
		body                any
		status              int
		code, says          string
	}{
		{"POST", "/sources", s.secret, resourceBody("sources", map[string]any{"name": "x", "url": url, "schedule": "5s"}), 400, "bad_request", "shorter than"},
		{"POST", "/sources", s.secret, resourceBody("sources", map[string]any{"name": "x", "url": url, "schedule": "0 25 * * *"}), 400, "bad_request", "cron"},
		{"POST", "/sources", s.secret, resourceBody("sources", map[string]any{"name": "x", "url": "not a url"}), 400, "bad_request", "not a PostgreSQL connection string"},
		{"POST", "/sources", s.secret, resourceBody("sources", map[string]any{"name": "../x", "url": url}), 400, "bad_request", "source name"},
		{"POST", "/sources", s.secret, resourceBody("sources", map[string]any{"name": "prod", "url": url}), 409, "conflict", `already a source named \"prod\"`},
		{"POST", "/sources", s.secret, resourceBody("sources", map[string]any{"name": "x", "url": url, "keep": 0}), 400, "bad_request", "keep"},
		{"POST", "/sources", s.secret, resourceBody("sources", map[string]any{"name": "x", "url": url, "mode": "logical"}), 400, "bad_request", "not a source mode"},
		{"PATCH", "/sources/" + strconv.FormatInt(created.ID, 10), s.secret, resourceBody("sources", map[string]any{"keep": -3}), 400, "bad_request", "keep must be"},
		{"GET", "/sources/999", s.secret, nil, 404, "resource_not_found", "no source 999"},
		{"GET", "/images?source=nope", devToken, nil, 404, "resource_not_found", "no source named"},
		{"GET", "/sources", devToken, nil, 403, "forbidden", "upload user"},
		{"POST", "/sources/" + strconv.FormatInt(created.ID, 10) + "/refresh", devToken, nil, 403, "forbidden", "upload user"},
	} {
		status, body := s.call(t, c.method, c.path, c.token, c.body)
		if status != c.status || !strings.Contains(string(body), `"code":"`+c.code+`"`) || !strings.Contains(string(body), c.says) {
			t.Errorf("%s %s %v: %d %s; want %d %s saying %q", c.method, c.path, c.body, status, body, c.status, c.code, c.says)
		}
	}

	// Update, then delete: the image stays, of no source.
	var updated cliSource
	admin.okJSON(&updated, "sources", "update", "prod", "--schedule", "0 4 * * *", "--keep", "3")
	if updated.Schedule != "0 4 * * *" || updated.Keep != 3 || updated.NextRefreshAt == nil || !strings.Contains(*updated.NextRefreshAt, "T04:00:00Z") {
		t.Fatalf("after sources update: %+v", updated)
	}
	admin.ok("sources", "delete", "prod")
	if status, body := s.call(t, http.MethodGet, "/images/"+strconv.FormatInt(refreshed.LastImageID, 10), s.secret, nil); status != 200 || strings.Contains(string(body), "source_id") {
		t.Fatalf("the image after its source was deleted: %d %s", status, body)
	}
	admin.fails(1, []string{"no source named"}, "sources", "get", "prod")

	// Replica mode: a standby that streams, its lag shown, refreshed.
	out, errOut, code = admin.shell(fmt.Sprintf("echo %q | sindri sources create --name standby --mode replica --url - --json", url))
	if code != 0 {
		t.Fatalf("sources create --mode replica: exit %d\n%s\n%s", code, out, errOut)
	}
	var replica cliSource
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		admin.okJSON(&replica, "sources", "get", "standby")
		if replica.Status == "streaming" && replica.LagBytes != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica-mode source after 2 minutes: %+v", replica)
		}
	}
	admin.okJSON(&replica, "sources", "refresh", "standby", "--wait")
	if replica.LastImageID == 0 || replica.Status != "streaming" {
		t.Fatalf("after a replica-mode refresh: %+v", replica)
	}
	status, body := s.call(t, http.MethodGet, "/status", s.secret, nil)
	if status != 200 || !strings.Contains(string(body), `"standbys":{"standby":{"status":"streaming"`) {
		t.Fatalf("/status: %d %s", status, body)
	}
	if status, body := s.call(t, http.MethodGet, "/metrics", "", nil); status != 200 || !strings.Contains(string(body), `sindri_source_lag_bytes{source="standby"}`) {
		t.Fatalf("/metrics: %d, no lag gauge", status)
	}
	admin.ok("sources", "delete", "standby")
}
