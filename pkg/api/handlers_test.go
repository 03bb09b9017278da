package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// fake is an in-memory stand-in for the engine's services, so that the
// handlers are tested without root, volumes or Postgres: a few rows, the
// ownership rule (another's instance or backup is not found), each call
// recorded with its actor, and an error to fail the next call with.
type fake struct {
	mu        sync.Mutex
	images    map[int64]store.Image
	instances map[int64]store.Instance
	backups   map[int64]store.Backup
	archive   []byte
	status    engine.Status
	calls     []string
	fail      error // the next call's error
	uploaded  []byte
}

func newFake() *fake {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	archive := []byte("a tar.zst, as it were")
	sum := sha256.Sum256(archive)
	return &fake{
		images: map[int64]store.Image{
			1: {ID: 1, Status: store.ImageReady, PGVersion: "15", BackedUpAt: at, CreatedAt: at, UpdatedAt: at},
			2: {ID: 2, Status: store.ImageDestroying, BackedUpAt: at, CreatedAt: at, UpdatedAt: at},
		},
		instances: map[int64]store.Instance{
			5: {ID: 5, ImageID: 1, Owner: "ada@example.com", Status: store.InstanceResetting, Port: 6005,
				Credentials: store.Credentials{Username: "draupnir", Password: "p@ss/word", ClientKey: "ADA-KEY"}, CreatedAt: at, UpdatedAt: at},
			6: {ID: 6, ImageID: 1, Owner: "bob@example.com", Status: store.InstanceRunning, Port: 6006, CreatedAt: at, UpdatedAt: at},
		},
		backups: map[int64]store.Backup{
			9: {ID: 9, InstanceID: 5, Owner: "ada@example.com", Status: store.BackupDone, SizeBytes: int64(len(archive)),
				SHA256: hex.EncodeToString(sum[:]), CreatedAt: at, UpdatedAt: at},
		},
		archive: archive,
	}
}

// call records a call and returns the error to fail it with, if any.
func (f *fake) call(a engine.Actor, format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	who := a.Owner
	if a.Upload {
		who = "upload"
	}
	f.calls = append(f.calls, who+": "+fmt.Sprintf(format, args...))
	err := f.fail
	f.fail = nil
	return err
}

func (f *fake) lastCall() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return ""
	}
	return f.calls[len(f.calls)-1]
}

func owns(a engine.Actor, owner string) bool { return a.Upload || (a.Owner != "" && a.Owner == owner) }

type fakeImages struct{ *fake }

func (f fakeImages) List(ctx context.Context, a engine.Actor) ([]store.Image, error) {
	if err := f.call(a, "list images"); err != nil {
		return nil, err
	}
	return []store.Image{f.images[2], f.images[1]}, nil
}

func (f fakeImages) Get(ctx context.Context, a engine.Actor, id int64) (store.Image, error) {
	if err := f.call(a, "get image %d", id); err != nil {
		return store.Image{}, err
	}
	img, ok := f.images[id]
	if !ok {
		return img, fmt.Errorf("there is no image %d: %w", id, engine.ErrNotFound)
	}
	return img, nil
}

func (f fakeImages) Create(ctx context.Context, a engine.Actor, req engine.ImageRequest) (store.Image, error) {
	if err := f.call(a, "create image %q backed up %s from backup %d", req.Name, req.BackedUpAt.UTC().Format(time.RFC3339), req.BackupID); err != nil {
		return store.Image{}, err
	}
	return store.Image{ID: 3, Name: req.Name, Status: store.ImagePending, BackedUpAt: req.BackedUpAt}, nil
}

func (f fakeImages) Upload(ctx context.Context, a engine.Actor, id int64, body io.Reader, size int64) (store.Image, error) {
	data, err := io.ReadAll(body)
	if err != nil {
		return store.Image{}, err
	}
	if err := f.call(a, "upload %d bytes (size %d) to image %d", len(data), size, id); err != nil {
		return store.Image{}, err
	}
	f.uploaded = data
	return store.Image{ID: id, Status: store.ImagePending}, nil
}

func (f fakeImages) Finalise(ctx context.Context, a engine.Actor, id int64) (store.Image, error) {
	if err := f.call(a, "finalise image %d", id); err != nil {
		return store.Image{}, err
	}
	return store.Image{ID: id, Status: store.ImageReady}, nil
}

func (f fakeImages) Destroy(ctx context.Context, a engine.Actor, id int64, force bool) error {
	return f.call(a, "destroy image %d force %v", id, force)
}

type fakeInstances struct{ *fake }

func (f fakeInstances) List(ctx context.Context, a engine.Actor) ([]store.Instance, error) {
	if err := f.call(a, "list instances"); err != nil {
		return nil, err
	}
	var out []store.Instance
	for _, id := range []int64{5, 6} {
		if owns(a, f.instances[id].Owner) {
			out = append(out, f.instances[id])
		}
	}
	return out, nil
}

func (f fakeInstances) Get(ctx context.Context, a engine.Actor, id int64) (store.Instance, error) {
	if err := f.call(a, "get instance %d", id); err != nil {
		return store.Instance{}, err
	}
	inst, ok := f.instances[id]
	if !ok || !owns(a, inst.Owner) {
		return store.Instance{}, fmt.Errorf("there is no instance %d: %w", id, engine.ErrNotFound)
	}
	return inst, nil
}

func (f fakeInstances) Create(ctx context.Context, a engine.Actor, req engine.NewInstance) (store.Instance, error) {
	if err := f.call(a, "create instance of image %d ttl %s protected %v", req.ImageID, req.TTL, req.Protected); err != nil {
		return store.Instance{}, err
	}
	if _, ok := f.images[req.ImageID]; !ok {
		return store.Instance{}, fmt.Errorf("there is no image %d: %w", req.ImageID, engine.ErrNotFound)
	}
	return store.Instance{ID: 7, ImageID: req.ImageID, Owner: a.Owner, Status: store.InstanceRunning, Port: 6007, Protected: req.Protected,
		Credentials: store.Credentials{Username: "draupnir", Password: "pw", CACertificate: "CA", ClientCertificate: "CERT", ClientKey: "KEY"}}, nil
}

func (f fakeInstances) Update(ctx context.Context, a engine.Actor, id int64, expiresAt *time.Time, protected *bool) (store.Instance, error) {
	if err := f.call(a, "update instance %d expires %v protected %v", id, expiresAt != nil, protected != nil && *protected); err != nil {
		return store.Instance{}, err
	}
	return f.instances[id], nil
}

func (f fakeInstances) Reset(ctx context.Context, a engine.Actor, id int64) (store.Instance, error) {
	if err := f.call(a, "reset instance %d", id); err != nil {
		return store.Instance{}, err
	}
	return f.instances[id], nil
}

func (f fakeInstances) Destroy(ctx context.Context, a engine.Actor, id int64) error {
	return f.call(a, "destroy instance %d", id)
}

type fakeBackups struct{ *fake }

func (f fakeBackups) List(ctx context.Context, a engine.Actor) ([]store.Backup, error) {
	if err := f.call(a, "list backups"); err != nil {
		return nil, err
	}
	return []store.Backup{f.backups[9]}, nil
}

func (f fakeBackups) Get(ctx context.Context, a engine.Actor, id int64) (store.Backup, error) {
	if err := f.call(a, "get backup %d", id); err != nil {
		return store.Backup{}, err
	}
	b, ok := f.backups[id]
	if !ok || !owns(a, b.Owner) {
		return store.Backup{}, fmt.Errorf("there is no backup %d: %w", id, engine.ErrNotFound)
	}
	return b, nil
}

func (f fakeBackups) Create(ctx context.Context, a engine.Actor, src engine.BackupSource) (store.Backup, error) {
	if err := f.call(a, "back up instance %d image %d", src.InstanceID, src.ImageID); err != nil {
		return store.Backup{}, err
	}
	return store.Backup{ID: 10, InstanceID: src.InstanceID, ImageID: src.ImageID, Status: store.BackupRunning}, nil
}

func (f fakeBackups) Open(ctx context.Context, a engine.Actor, id int64) (io.ReadSeekCloser, store.Backup, error) {
	b, err := f.Get(ctx, a, id)
	if err != nil {
		return nil, b, err
	}
	return readSeekNopCloser{bytes.NewReader(f.archive)}, b, nil
}

func (f fakeBackups) Delete(ctx context.Context, a engine.Actor, id int64) error {
	return f.call(a, "delete backup %d", id)
}

type readSeekNopCloser struct{ io.ReadSeeker }

func (readSeekNopCloser) Close() error { return nil }

type fakeStatus struct{ *fake }

func (f fakeStatus) Get(ctx context.Context, a engine.Actor) (engine.Status, error) {
	if err := f.call(a, "status"); err != nil {
		return engine.Status{}, err
	}
	return f.status, nil
}

// The tokens of the handler tests: the shared secret and two users.
var testPrincipals = map[string]auth.Principal{
	"secret": {Upload: true},
	"ada":    {Email: "ada@example.com", TokenID: 1},
	"bob":    {Email: "bob@example.com", TokenID: 2},
}

// newHandlerServer serves the real routes over f, authenticating the
// tokens of testPrincipals.
func newHandlerServer(f *fake) http.Handler {
	s := NewServer(Options{Logger: discardLogger(), Authenticate: func(r *http.Request) (any, error) {
		p, ok := testPrincipals[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		if !ok {
			return nil, ErrUnauthorized
		}
		return p, nil
	}})
	(&Handlers{Images: fakeImages{f}, Instances: fakeInstances{f}, Backups: fakeBackups{f}, Status: fakeStatus{f},
		PublicHostname: "db.example.com", Version: "9.9.9"}).Register(s)
	return s.Handler()
}

// as is a request with token's bearer and a JSON body (if any).
func as(token, method, path, body string, header ...string) req {
	q := req{method: method, path: path, noAuth: true, header: map[string]string{"Authorization": "Bearer " + token}}
	if body != "" {
		q.body = strings.NewReader(body)
		q.header["Content-Type"] = "application/vnd.api+json"
	}
	for i := 0; i+1 < len(header); i += 2 {
		q.header[header[i]] = header[i+1]
	}
	return q
}

// The handlers render what the services return, in the contract's words,
// and take the caller's principal to the services as the actor.
func TestHandlersRenderWhatTheServicesReturn(t *testing.T) {
	f := newFake()
	h := newHandlerServer(f)

	w := do(h, as("bob", "GET", "/images", ""))
	var images []resource.Image
	if err := resource.UnmarshalList(w.Body.Bytes(), &images); err != nil || w.Code != 200 {
		t.Fatalf("GET /images: %d %v %s", w.Code, err, w.Body)
	}
	if len(images) != 2 || images[0].Status != "failed" || images[0].Error != "the image is being destroyed" || !images[1].Ready {
		t.Errorf("images %+v", images)
	}
	if got := f.lastCall(); got != "bob@example.com: list images" {
		t.Errorf("call %q", got)
	}

	w = do(h, as("ada", "GET", "/instances/5", ""))
	var inst resource.Instance
	if err := resource.Unmarshal(w.Body.Bytes(), &inst); err != nil || w.Code != 200 {
		t.Fatalf("GET /instances/5: %d %v %s", w.Code, err, w.Body)
	}
	if inst.Status != "creating" || inst.Hostname != "db.example.com" || inst.Credentials == nil || inst.Credentials.ClientKey != "ADA-KEY" ||
		inst.DatabaseURL != "postgres://draupnir:p%40ss%2Fword@db.example.com:6005/postgres?sslmode=require" {
		t.Errorf("instance %+v %+v", inst, inst.Credentials)
	}

	// The list carries no credentials, and the service decides whose.
	w = do(h, as("ada", "GET", "/instances", ""))
	var list []resource.Instance
	if err := resource.UnmarshalList(w.Body.Bytes(), &list); err != nil || len(list) != 1 || list[0].ID != 5 || list[0].Credentials != nil {
		t.Errorf("ada's list: %v %+v", err, list)
	}
	w = do(h, as("secret", "GET", "/instances", ""))
	if err := resource.UnmarshalList(w.Body.Bytes(), &list); err != nil || len(list) != 2 {
		t.Errorf("the upload user's list: %v %+v", err, list)
	}

	yours := int64(1)
	f.status = engine.Status{Healthy: false, Problems: []string{"image 2 failed"}, StorageDriver: "btrfs", FreeBytes: 10, DiskReserveBytes: 5,
		InstancesByStatus: map[string]int{"resetting": 1, "running": 2, "destroying": 1},
		Limits:            []engine.LimitUse{{Name: "instances_per_user", Limit: 3, Used: 2, Yours: &yours}}}
	w = do(h, as("ada", "GET", "/status", ""))
	var st resource.Status
	if err := resource.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatalf("GET /status: %v %s", err, w.Body)
	}
	if st.Status != "degraded" || st.Version != "9.9.9" || st.Instances["creating"] != 1 || st.Instances["stopped"] != 1 ||
		*st.Limits["instances_per_user"].Yours != 1 || *st.Limits["disk_reserve"].Free != 10 {
		t.Errorf("status %+v", st)
	}
	if got := f.lastCall(); got != "ada@example.com: status" {
		t.Errorf("call %q", got)
	}
}

func TestHandlersTakeRequestsToTheServices(t *testing.T) {
	f := newFake()
	h := newHandlerServer(f)
	for _, c := range []struct {
		q      req
		status int
		call   string
	}{
		{as("secret", "POST", "/images", `{"data":{"type":"images","attributes":{"name":"prod","backed_up_at":"2026-11-01T14:00:00+02:00","backup_id":"9"}}}`),
			201, `upload: create image "prod" backed up 2026-11-01T12:00:00Z from backup 9`},
		{as("secret", "POST", "/images/1/done", ""), 200, "upload: finalise image 1"},
		{as("secret", "DELETE", "/images/1?force=true", ""), 204, "upload: destroy image 1 force true"},
		{as("ada", "POST", "/instances", `{"data":{"type":"","id":"","attributes":{"image_id":"1","ttl":"30m","protected":true}}}`),
			201, "ada@example.com: create instance of image 1 ttl 30m0s protected true"},
		{as("ada", "PATCH", "/instances/5", `{"data":{"type":"instances","id":"5","attributes":{"protected":true}}}`),
			200, "ada@example.com: update instance 5 expires false protected true"},
		{as("ada", "POST", "/instances/5/reset", ""), 200, "ada@example.com: reset instance 5"},
		{as("ada", "DELETE", "/instances/5", ""), 204, "ada@example.com: destroy instance 5"},
		{as("ada", "POST", "/backups", `{"data":{"type":"backups","attributes":{"instance_id":5}}}`), 202, "ada@example.com: back up instance 5 image 0"},
		{as("ada", "DELETE", "/backups/9", ""), 204, "ada@example.com: delete backup 9"},
	} {
		w := do(h, c.q)
		if w.Code != c.status {
			t.Errorf("%s %s: %d %s", c.q.method, c.q.path, w.Code, w.Body)
		}
		if got := f.lastCall(); got != c.call {
			t.Errorf("%s %s: call %q, want %q", c.q.method, c.q.path, got, c.call)
		}
	}

	// An upload streams the body to the service, with its size.
	q := as("secret", "PUT", "/images/1/upload", "")
	q.body = strings.NewReader("tarball!")
	if w := do(h, q); w.Code != 200 || string(f.uploaded) != "tarball!" || f.lastCall() != "upload: upload 8 bytes (size 8) to image 1" {
		t.Errorf("upload: %d %s %q %q", w.Code, w.Body, f.uploaded, f.lastCall())
	}
}

// Whatever a service refuses with is written through the error table, in
// the request's format; a request the handler itself refuses never
// reaches a service.
func TestHandlersWriteServiceErrors(t *testing.T) {
	f := newFake()
	h := newHandlerServer(f)
	for _, c := range []struct {
		err    error
		status int
		code   string
		detail string // "" for a hidden one
	}{
		{fmt.Errorf("only the upload user may change images: %w", engine.ErrForbidden), 403, CodeForbidden, "only the upload user may change images: forbidden"},
		{&engine.LimitError{Key: "limits.instances_per_user", Msg: "you have 3 instances, the limit is 3"}, 429, CodeQuotaExceeded, "you have 3 instances, the limit is 3"},
		{&engine.LimitError{Disk: true, Msg: "1 MiB free, under the disk reserve"}, 503, CodeNoDiskSpace, "1 MiB free, under the disk reserve"},
		{fmt.Errorf("write /var/lib/sindri/x: %w", engine.ErrDiskFull), 503, CodeNoDiskSpace, ""},
		{errors.New("pgx: connection refused to 10.0.0.3"), 500, CodeInternalServerError, ""},
	} {
		f.fail = c.err
		d := wantError(t, do(h, as("secret", "POST", "/images/1/done", "")), c.status, c.code)
		if c.detail != "" && d != c.detail {
			t.Errorf("%v: detail %q, want %q", c.err, d, c.detail)
		}
		if c.detail == "" && (strings.Contains(d, "/var/lib") || strings.Contains(d, "10.0.0.3")) {
			t.Errorf("%v: detail %q leaks", c.err, d)
		}
		f.fail = c.err
		e := wantDraupnirError(t, do(h, as("secret", "POST", "/images/1/done", "", VersionHeader, "5.3.6")), c.status)
		if c.status < 500 && e.Code != c.code {
			t.Errorf("%v for Draupnir: %+v", c.err, e)
		}
	}

	n := len(f.calls)
	for _, q := range []req{
		as("secret", "DELETE", "/images/1?force=maybe", ""),
		as("ada", "POST", "/instances", `{"data":{"type":"instances","attributes":{"image_id":"1","ttl":"-5m"}}}`),
		as("ada", "POST", "/backups", `{"data":{"type":"backups","attributes":{"instance_id":5,"image_id":1}}}`),
		as("ada", "POST", "/images", `{"data":{"type":"images","attributes":{"colour":"red"}}}`),
		as("ada", "GET", "/instances/05", ""),
	} {
		w := do(h, q)
		if w.Code != 400 && w.Code != 404 {
			t.Errorf("%s %s: %d %s", q.method, q.path, w.Code, w.Body)
		}
	}
	if len(f.calls) != n {
		t.Errorf("refused requests reached the services: %q", f.calls[n:])
	}
}

// Draupnir's clients read Draupnir's own errors for POST /instances.
func TestCreateInstanceDraupnirErrors(t *testing.T) {
	h := newHandlerServer(newFake())
	v53 := func(body string) req { return as("ada", "POST", "/instances", body, VersionHeader, "5.3.6") }
	for _, c := range []struct {
		body   string
		status int
		want   wire.DraupnirError
	}{
		{`{"data":{"type":"","attributes":{"image_id":"424242"}}}`, 404, wire.DraupnirImageNotFound},
		{`{"data":{"type":"","attributes":{}}}`, 400, wire.DraupnirBadImageID},
		{`{"data":{"type":"","attributes":{"image_id":"abc"}}}`, 400, wire.DraupnirBadImageID},
		{`{"data":`, 400, wire.DraupnirInvalidJSON},
	} {
		e := wantDraupnirError(t, do(h, v53(c.body)), c.status)
		if e.Title != c.want.Title || e.Detail != c.want.Detail || e.Source.Parameter != c.want.Source.Parameter {
			t.Errorf("%s: %+v, want %+v", c.body, e, c.want)
		}
	}
	// The same unknown image in JSON:API says which.
	w := do(h, as("ada", "POST", "/instances", `{"data":{"type":"instances","attributes":{"image_id":"424242"}}}`))
	if d := wantError(t, w, 404, CodeNotFound); !strings.Contains(d, "there is no image 424242") {
		t.Errorf("detail %q", d)
	}
}

// Another's instance is not found before anything about the body is
// checked; the body may not name another instance.
func TestUpdateInstance(t *testing.T) {
	h := newHandlerServer(newFake())
	wantError(t, do(h, as("bob", "PATCH", "/instances/5", `{"data":`)), 404, CodeNotFound)
	wantError(t, do(h, as("ada", "PATCH", "/instances/5", `{"data":`)), 400, CodeBadRequest)
	wantError(t, do(h, as("ada", "PATCH", "/instances/5", `{"data":{"type":"instances","id":"6","attributes":{"protected":true}}}`)), 409, CodeConflict)
	wantError(t, do(h, as("ada", "PATCH", "/instances/5", `{"data":{"type":"instances","attributes":{}}}`)), 400, CodeBadRequest)
}

func TestDownloadBackup(t *testing.T) {
	f := newFake()
	h := newHandlerServer(f)
	w := do(h, as("ada", "GET", "/backups/9/download", ""))
	sum := sha256.Sum256(f.archive)
	if w.Code != 200 || !bytes.Equal(w.Body.Bytes(), f.archive) || w.Header().Get("Content-Type") != "application/zstd" ||
		w.Header().Get("Repr-Digest") != "sha-256=:"+base64.StdEncoding.EncodeToString(sum[:])+":" {
		t.Errorf("%d %v %q", w.Code, w.Header(), w.Body)
	}
	w = do(h, as("ada", "GET", "/backups/9/download", "", "Range", "bytes=2-5"))
	if w.Code != 206 || w.Body.String() != string(f.archive[2:6]) {
		t.Errorf("range: %d %q", w.Code, w.Body)
	}
	wantError(t, do(h, as("ada", "GET", "/backups/9/download", "", "Range", "bytes=999-")), 416, CodeRangeNotSatisfiable)
	wantError(t, do(h, as("bob", "GET", "/backups/9/download", "")), 404, CodeNotFound)

	var list []resource.Backup
	w = do(h, as("ada", "GET", "/backups", ""))
	if err := json.Unmarshal(w.Body.Bytes(), new(any)); err != nil || resource.UnmarshalList(w.Body.Bytes(), &list) != nil || len(list) != 1 || list[0].SHA256 != f.backups[9].SHA256 {
		t.Errorf("GET /backups: %s", w.Body)
	}
}
