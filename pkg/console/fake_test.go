package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// fake stands in for the engine's services (and the authenticator), so
// that the console's handlers are tested without root, volumes or
// Postgres. It keeps the services' ownership rule (another's instance or
// backup is not found, as engine.Services decide), records each change
// with its actor, and fails the next call with fail.
type fake struct {
	mu        sync.Mutex
	images    map[int64]store.Image
	instances map[int64]store.Instance
	backups   map[int64]store.Backup
	status    engine.Status
	changes   []string
	fail      error
	nextID    int64
	// tokens are the tokens the fake authenticator accepts.
	tokens  map[string]auth.Principal
	revoked []int64
	oauth   bool
	// createStarted, if set, receives a value when Create is called, and
	// Create waits for createRelease.
	createStarted chan struct{}
	createRelease chan struct{}
}

const (
	uploadToken = "the-shared-secret"
	adaToken    = "sdr_ada"
	bobToken    = "sdr_bob"
)

func newFake() *fake {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	exp := at.Add(24 * time.Hour)
	return &fake{
		images: map[int64]store.Image{
			1: {ID: 1, Name: "prod-anon", Status: store.ImageReady, PGVersion: "15", SizeBytes: 3 << 30, Anonymised: true, BackedUpAt: at, CreatedAt: at},
			2: {ID: 2, Status: store.ImageFinalising, BackedUpAt: at, CreatedAt: at},
		},
		instances: map[int64]store.Instance{
			5: {ID: 5, ImageID: 1, Owner: "ada@example.com", Status: store.InstanceRunning, Port: 6005, ExpiresAt: &exp,
				Credentials: store.Credentials{Username: "u5", Password: "p@ss/5"}, CreatedAt: at},
			6: {ID: 6, ImageID: 1, Owner: "bob@example.com", Status: store.InstanceRunning, Port: 6006, ExpiresAt: &exp,
				Credentials: store.Credentials{Username: "u6", Password: "bobs-secret-6"}, CreatedAt: at},
		},
		backups: map[int64]store.Backup{
			9:  {ID: 9, InstanceID: 5, Owner: "ada@example.com", Status: store.BackupDone, SizeBytes: 4, CreatedAt: at, UpdatedAt: at},
			10: {ID: 10, InstanceID: 6, Owner: "bob@example.com", Status: store.BackupDone, SizeBytes: 4, CreatedAt: at, UpdatedAt: at},
		},
		status: engine.Status{Healthy: true, StorageDriver: "btrfs", TotalBytes: 100 << 30, FreeBytes: 60 << 30,
			UsedByInstancesBytes: 10 << 30, UsedByBackupsBytes: 5 << 30, ImagesByStatus: map[string]int{"ready": 1, "finalising": 1},
			InstancesByStatus: map[string]int{"running": 2}, BackupsByStatus: map[string]int{"done": 2}, ExpectedCloningTime: 65 * time.Millisecond},
		nextID: 100,
		tokens: map[string]auth.Principal{
			uploadToken: {Upload: true},
			adaToken:    {Email: "ada@example.com", TokenID: 1, Kind: store.TokenOAuth},
			bobToken:    {Email: "bob@example.com", TokenID: 2, Kind: store.TokenOAuth},
		},
	}
}

func owns(a engine.Actor, owner string) bool { return a.Upload || (a.Owner != "" && a.Owner == owner) }

func actorName(a engine.Actor) string {
	if a.Upload {
		return "upload"
	}
	return a.Owner
}

// change records a change and returns the error to fail it with.
func (f *fake) change(a engine.Actor, format string, args ...any) error {
	f.changes = append(f.changes, actorName(a)+": "+fmt.Sprintf(format, args...))
	err := f.fail
	f.fail = nil
	return err
}

func (f *fake) Changes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.changes...)
}

func (f *fake) failNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// --- the authenticator ---

func (f *fake) AuthenticateToken(ctx context.Context, token string) (auth.Principal, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.tokens[token]
	if !ok {
		return auth.Principal{}, fmt.Errorf("%w: unknown token", auth.ErrUnauthorized)
	}
	return p, nil
}
func (f *fake) OAuthEnabled() bool { return f.oauth }
func (f *fake) StartBrowserLogin(w http.ResponseWriter, r *http.Request, loginPath string) {
	http.Redirect(w, r, "https://provider.example/authorize", http.StatusFound)
}
func (f *fake) SetBrowserLoginDone(done auth.BrowserLoginDone) {}
func (f *fake) RevokeToken(ctx context.Context, id int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, id)
	return nil
}

// --- the services ---

type fakeImages struct{ *fake }

func (f fakeImages) List(ctx context.Context, a engine.Actor) ([]store.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Image
	for _, img := range f.images {
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out, nil
}

func (f fakeImages) Get(ctx context.Context, a engine.Actor, id int64) (store.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.images[id]
	if !ok {
		return img, fmt.Errorf("there is no image %d: %w", id, engine.ErrNotFound)
	}
	return img, nil
}

func (f fakeImages) Create(ctx context.Context, a engine.Actor, req engine.ImageRequest) (store.Image, error) {
	return store.Image{}, errors.New("not used by the console")
}
func (f fakeImages) Upload(ctx context.Context, a engine.Actor, id int64, body io.Reader, size int64) (store.Image, error) {
	return store.Image{}, errors.New("not used by the console")
}
func (f fakeImages) Finalise(ctx context.Context, a engine.Actor, id int64) (store.Image, error) {
	return store.Image{}, errors.New("not used by the console")
}
func (f fakeImages) Destroy(ctx context.Context, a engine.Actor, id int64, force bool) error {
	return errors.New("not used by the console")
}
func (f fakeImages) ListOfSource(ctx context.Context, a engine.Actor, name string) ([]store.Image, error) {
	return nil, errors.New("not used by the console")
}

type fakeInstances struct{ *fake }

func (f fakeInstances) List(ctx context.Context, a engine.Actor) ([]store.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Instance
	for _, inst := range f.instances {
		if owns(a, inst.Owner) {
			out = append(out, inst)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out, nil
}

func (f fakeInstances) get(a engine.Actor, id int64) (store.Instance, error) {
	inst, ok := f.instances[id]
	if !ok || !owns(a, inst.Owner) {
		return store.Instance{}, fmt.Errorf("there is no instance %d: %w", id, engine.ErrNotFound)
	}
	return inst, nil
}

func (f fakeInstances) Get(ctx context.Context, a engine.Actor, id int64) (store.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.get(a, id)
}

func (f fakeInstances) Create(ctx context.Context, a engine.Actor, req engine.NewInstance) (store.Instance, error) {
	if f.createStarted != nil {
		f.createStarted <- struct{}{}
		<-f.createRelease
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.change(a, "create instance of image %d for %s", req.ImageID, req.TTL); err != nil {
		return store.Instance{}, err
	}
	if img, ok := f.images[req.ImageID]; !ok {
		return store.Instance{}, fmt.Errorf("there is no image %d: %w", req.ImageID, engine.ErrNotFound)
	} else if img.Status != store.ImageReady {
		return store.Instance{}, fmt.Errorf("image %d is %s, not ready: %w", req.ImageID, img.Status, engine.ErrImageNotReady)
	}
	f.nextID++
	inst := store.Instance{ID: f.nextID, ImageID: req.ImageID, Owner: a.Owner, Status: store.InstanceRunning, Port: 7000 + int(f.nextID),
		Credentials: store.Credentials{Username: "u", Password: "pw"}, CreatedAt: time.Now()}
	f.instances[inst.ID] = inst
	return inst, nil
}

func (f fakeInstances) Update(ctx context.Context, a engine.Actor, id int64, expiresAt *time.Time, protected *bool) (store.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inst, err := f.get(a, id)
	if err != nil {
		return inst, err
	}
	what := ""
	if expiresAt != nil {
		what += " expires " + expiresAt.UTC().Format(time.RFC3339)
		inst.ExpiresAt = expiresAt
	}
	if protected != nil {
		what += fmt.Sprintf(" protected %t", *protected)
		inst.Protected = *protected
	}
	if err := f.change(a, "update instance %d%s", id, what); err != nil {
		return store.Instance{}, err
	}
	f.instances[id] = inst
	return inst, nil
}

func (f fakeInstances) Reset(ctx context.Context, a engine.Actor, id int64) (store.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inst, err := f.get(a, id)
	if err != nil {
		return inst, err
	}
	return inst, f.change(a, "reset instance %d", id)
}

func (f fakeInstances) Destroy(ctx context.Context, a engine.Actor, id int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.get(a, id); err != nil {
		return err
	}
	if err := f.change(a, "destroy instance %d", id); err != nil {
		return err
	}
	delete(f.instances, id)
	return nil
}

type fakeBackups struct{ *fake }

func (f fakeBackups) List(ctx context.Context, a engine.Actor) ([]store.Backup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Backup
	for _, b := range f.backups {
		if owns(a, b.Owner) {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out, nil
}

func (f fakeBackups) get(a engine.Actor, id int64) (store.Backup, error) {
	b, ok := f.backups[id]
	if !ok || !owns(a, b.Owner) {
		return store.Backup{}, fmt.Errorf("there is no backup %d: %w", id, engine.ErrNotFound)
	}
	return b, nil
}

func (f fakeBackups) Get(ctx context.Context, a engine.Actor, id int64) (store.Backup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.get(a, id)
}

func (f fakeBackups) Create(ctx context.Context, a engine.Actor, src engine.BackupSource) (store.Backup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inst, ok := f.instances[src.InstanceID]
	if !ok || !owns(a, inst.Owner) {
		return store.Backup{}, fmt.Errorf("there is no instance %d: %w", src.InstanceID, engine.ErrNotFound)
	}
	if err := f.change(a, "back up instance %d", src.InstanceID); err != nil {
		return store.Backup{}, err
	}
	f.nextID++
	b := store.Backup{ID: f.nextID, InstanceID: src.InstanceID, Owner: a.Owner, Status: store.BackupRunning}
	f.backups[b.ID] = b
	return b, nil
}

type readSeekNopCloser struct{ *bytes.Reader }

func (readSeekNopCloser) Close() error { return nil }

func (f fakeBackups) Open(ctx context.Context, a engine.Actor, id int64) (io.ReadSeekCloser, store.Backup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.get(a, id)
	if err != nil {
		return nil, b, err
	}
	return readSeekNopCloser{bytes.NewReader([]byte(fmt.Sprintf("archive %d", id)))}, b, nil
}

func (f fakeBackups) Delete(ctx context.Context, a engine.Actor, id int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.get(a, id); err != nil {
		return err
	}
	if err := f.change(a, "delete backup %d", id); err != nil {
		return err
	}
	delete(f.backups, id)
	return nil
}

type fakeStatus struct{ *fake }

func (f fakeStatus) Get(ctx context.Context, a engine.Actor) (engine.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, nil
}

// options are the console's options over f.
func (f *fake) options() Options {
	return Options{Images: fakeImages{f}, Instances: fakeInstances{f}, Backups: fakeBackups{f}, Status: fakeStatus{f},
		Auth: f, PublicHostname: "db.example.com", Version: "9.9.9"}
}

var _ = strings.Contains
