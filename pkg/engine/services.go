package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// Actor is who asks a service: the owner recorded on what they create (an
// e-mail address, "token:NAME", or UploadOwner) and whether they are the
// upload user (the shared secret). How the actor was authenticated is the
// caller's business.
type Actor struct {
	Owner  string
	Upload bool
}

// owns is the ownership rule: the upload user has everything, anyone else
// what their owner is recorded on; an actor without an owner has nothing.
func (a Actor) owns(owner string) bool {
	return a.Upload || (a.Owner != "" && a.Owner == owner)
}

// acting is ctx for a change the actor asked for: detached from the
// caller's cancellation (a client that goes away does not cut an
// instance's creation short; it expires by its TTL instead) and naming the
// actor for the audit log.
func (a Actor) acting(ctx context.Context) context.Context {
	return WithActor(context.WithoutCancel(ctx), a.Owner)
}

// Services are the engine's entry points for callers that act for someone
// (the API, a console): each method takes the Actor, decides what the
// actor may see and do, and returns errors of the engine's classes only
// (errors.go), with messages written for the actor.
//
//   - Images are everybody's to see, except a branch (an image of an
//     instance's data), which is its owner's and the upload user's; only
//     the upload user creates, uploads, finalises, destroys or backs one
//     up (ErrForbidden otherwise), but an instance's owner branches it,
//     and finalises and destroys the branch; only the upload user reads
//     why a finalise failed (HiddenFinaliseError for the others: the text
//     may quote the data).
//   - Instances and backups are their owner's: the upload user sees and
//     acts on all of them, anyone else on their own, and another's is
//     ErrNotFound, as if it did not exist.
//   - Sources are the upload user's only (ErrForbidden for anyone else);
//     their url's password is never returned.
//   - Status shows each per-user limit's figure for the actor (Yours);
//     only the upload user's keeps every owner's figure.
type Services struct {
	Images    ImageService
	Instances InstanceService
	Backups   BackupService
	Status    StatusService
	Sources   SourceService
}

// Services returns the engine's services.
func (e *Engine) Services() Services {
	return Services{Images: ImageService{e}, Instances: InstanceService{e}, Backups: BackupService{e}, Status: StatusService{e},
		Sources: SourceService{e}}
}

// HiddenFinaliseError is what an actor other than the upload user reads
// of a failed finalise: its text may quote the data (an anonymisation
// script's error names the row it failed on).
const HiddenFinaliseError = "finalising the image failed; the upload user can see why"

// ImageService is what an actor may see of images and do with them.
type ImageService struct{ e *Engine }

// List returns every image, newest first.
func (s ImageService) List(ctx context.Context, a Actor) ([]store.Image, error) {
	images, err := s.e.opts.Store.ListImages(ctx)
	if err != nil {
		return nil, classify(err)
	}
	return a.seeImages(images), nil
}

// seeImages is images as a reads them: without the branches of others.
func (a Actor) seeImages(images []store.Image) []store.Image {
	out := images[:0]
	for _, img := range images {
		if a.seesImage(img) {
			out = append(out, a.seeImage(img))
		}
	}
	return out
}

// Get returns image id.
func (s ImageService) Get(ctx context.Context, a Actor, id int64) (store.Image, error) {
	img, err := s.e.opts.Store.GetImage(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Image{}, noImage(id)
	}
	if err != nil {
		return store.Image{}, classify(err)
	}
	if !a.seesImage(img) {
		return store.Image{}, noImage(id)
	}
	return a.seeImage(img), nil
}

// Create records a pending image (CreateImage). A pull (SourceURL), a
// restore (BackupID) or a branch (InstanceID: the instance's owner's and
// the upload user's to make) is then finalised at once, in the
// background: a later Finalise joins that run.
func (s ImageService) Create(ctx context.Context, a Actor, req ImageRequest) (store.Image, error) {
	if req.InstanceID != 0 {
		if _, err := (InstanceService{s.e}).Get(ctx, a, req.InstanceID); err != nil {
			return store.Image{}, err
		}
	} else if err := a.mayChangeImages(); err != nil {
		return store.Image{}, err
	}
	if req.BackedUpAt.IsZero() && req.InstanceID == 0 {
		return store.Image{}, refuse(ErrInvalid, "attribute backed_up_at is required (an RFC 3339 time such as 2017-05-01T12:00:00Z)")
	}
	ctx = a.acting(ctx)
	img, err := s.e.CreateImage(ctx, req)
	if errors.Is(err, ErrNotFound) && req.BackupID != 0 {
		return store.Image{}, refuse(ErrNotFound, "there is no backup %d", req.BackupID)
	}
	if errors.Is(err, ErrNotFound) && req.InstanceID != 0 {
		return store.Image{}, refuse(ErrNotFound, "there is no instance %d", req.InstanceID)
	}
	if err != nil {
		return store.Image{}, classify(err)
	}
	if req.SourceURL != "" || req.BackupID != 0 || req.InstanceID != 0 {
		go s.e.FinaliseImage(ctx, img.ID)
	}
	return a.seeImage(img), nil
}

// Upload streams body, of size bytes (-1 or 0 if unknown), into image
// id's upload directory (UploadImage). A size that cannot fit above the
// disk reserve is refused before anything is read.
func (s ImageService) Upload(ctx context.Context, a Actor, id int64, body io.Reader, size int64) (store.Image, error) {
	if _, err := s.toChange(ctx, a, id); err != nil {
		return store.Image{}, err
	}
	if err := a.mayChangeImages(); err != nil {
		return store.Image{}, err // a branch's owner does not upload into it
	}
	if size > 0 {
		if err := s.e.CheckDiskReserve(ctx, size, fmt.Sprintf("an upload of %d bytes", size)); err != nil {
			return store.Image{}, classify(err)
		}
	}
	if _, err := s.e.UploadImage(a.acting(ctx), id, body); err != nil {
		return store.Image{}, classify(err)
	}
	return s.Get(ctx, a, id)
}

// Finalise makes image id ready (FinaliseImage) and returns it.
func (s ImageService) Finalise(ctx context.Context, a Actor, id int64) (store.Image, error) {
	if _, err := s.toChange(ctx, a, id); err != nil {
		return store.Image{}, err
	}
	img, err := s.e.FinaliseImage(a.acting(ctx), id)
	if err != nil {
		return store.Image{}, classify(err)
	}
	return a.seeImage(img), nil
}

// Destroy destroys image id (DestroyImage); with force its instances
// too, which only the upload user may ask: a branch's owner destroys a
// branch without instances, never the upload user's clones of it.
func (s ImageService) Destroy(ctx context.Context, a Actor, id int64, force bool) error {
	if _, err := s.toChange(ctx, a, id); err != nil {
		return err
	}
	if force && !a.Upload {
		return refuse(ErrForbidden, "only the upload user (the shared secret) may destroy an image with its instances (force); destroy your instances of it first")
	}
	return classify(s.e.DestroyImage(a.acting(ctx), id, force))
}

// toChange is Get for a change, which only the upload user may make.
func (s ImageService) toChange(ctx context.Context, a Actor, id int64) (store.Image, error) {
	img, err := s.Get(ctx, a, id)
	if err != nil {
		return img, err
	}
	return img, a.mayChangeImage(img)
}

func (a Actor) mayChangeImages() error {
	if !a.Upload {
		return refuse(ErrForbidden, "only the upload user (the shared secret) may change images")
	}
	return nil
}

// seeImage is img as a reads it: a failed finalise's reason is the
// upload user's, and a branch's its owner's too (only they see it).
func (a Actor) seeImage(img store.Image) store.Image {
	if !a.Upload && img.Owner == "" && img.Status == store.ImageFailed && img.Error != "" {
		img.Error = HiddenFinaliseError
	}
	return img
}

// InstanceService is what an actor may see of instances and do with
// them.
type InstanceService struct{ e *Engine }

// NewInstance is what an actor asks for: a clone of image ImageID that
// lives TTL (0: the default lifetime), and is protected from expiry if
// Protected.
type NewInstance struct {
	ImageID   int64
	TTL       time.Duration
	Protected bool
}

// List returns the actor's instances (every instance for the upload
// user), without their certificates and keys, which a listing does not
// show (store.ListInstanceSummaries: a thousand unchanged ones cost a
// thousand small rows; only the changed ones are read whole and opened).
func (s InstanceService) List(ctx context.Context, a Actor) ([]store.Instance, error) {
	owner := a.Owner
	switch {
	case a.Upload:
		owner = "" // every owner
	case owner == "":
		return nil, nil
	}
	instances, err := s.e.opts.Store.ListInstanceSummaries(ctx, owner)
	if err == nil && s.e.opts.Store.FleetHost() != "" {
		// The listing is the store's, shared: the fleet's view of it is
		// a copy.
		instances = slices.Clone(instances)
		err = s.e.present(ctx, instances)
	}
	if err != nil {
		return nil, classify(err)
	}
	// A summary has no keys: nothing to take out (seeInstance).
	return instances, nil
}

// Get returns instance id, if it is the actor's.
func (s InstanceService) Get(ctx context.Context, a Actor, id int64) (store.Instance, error) {
	inst, err := s.e.opts.Store.GetInstance(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !a.owns(inst.Owner)) {
		return store.Instance{}, refuse(ErrNotFound, "there is no instance %d", id)
	}
	if err != nil {
		return store.Instance{}, classify(err)
	}
	return s.see(ctx, inst)
}

// see is inst as the actor reads it (seeInstance), presented for the
// fleet (present).
func (s InstanceService) see(ctx context.Context, inst store.Instance) (store.Instance, error) {
	one := []store.Instance{seeInstance(inst)}
	if err := s.e.present(ctx, one); err != nil {
		return store.Instance{}, classify(err)
	}
	return one[0], nil
}

// Create clones the image for the actor and starts Postgres on it
// (CreateInstance), within the lifetime ExpiryFor allows.
func (s InstanceService) Create(ctx context.Context, a Actor, req NewInstance) (store.Instance, error) {
	// Another's branch is not there for a.
	if img, err := s.e.opts.Store.GetImage(ctx, req.ImageID); err == nil && !a.seesImage(img) {
		return store.Instance{}, noImage(req.ImageID)
	}
	expiresAt, err := s.e.ExpiryFor(req.TTL)
	if err != nil {
		return store.Instance{}, classify(err)
	}
	inst, err := s.e.CreateInstance(a.acting(ctx), InstanceRequest{
		ImageID: req.ImageID, Owner: a.Owner, ExpiresAt: expiresAt, Protected: req.Protected,
	})
	if errors.Is(err, ErrNotFound) {
		return store.Instance{}, noImage(req.ImageID)
	}
	if err != nil {
		return store.Instance{}, classify(err)
	}
	return s.see(ctx, inst)
}

// Update changes the expiry or the protection of instance id
// (UpdateInstance); nil leaves either as it is.
func (s InstanceService) Update(ctx context.Context, a Actor, id int64, expiresAt *time.Time, protected *bool) (store.Instance, error) {
	if _, err := s.Get(ctx, a, id); err != nil {
		return store.Instance{}, err
	}
	inst, err := s.e.UpdateInstance(a.acting(ctx), id, expiresAt, protected)
	if err != nil {
		return store.Instance{}, classify(err)
	}
	return s.see(ctx, inst)
}

// Reset gives instance id its image's data again (ResetInstance).
func (s InstanceService) Reset(ctx context.Context, a Actor, id int64) (store.Instance, error) {
	if _, err := s.Get(ctx, a, id); err != nil {
		return store.Instance{}, err
	}
	inst, err := s.e.ResetInstance(a.acting(ctx), id)
	if err != nil {
		return store.Instance{}, classify(err)
	}
	return s.see(ctx, inst)
}

// Destroy destroys instance id (DestroyInstance).
func (s InstanceService) Destroy(ctx context.Context, a Actor, id int64) error {
	if _, err := s.Get(ctx, a, id); err != nil {
		return err
	}
	return classify(s.e.DestroyInstance(a.acting(ctx), id))
}

// seeInstance is inst as its owner reads it: the server's own key is
// nobody's to read.
func seeInstance(inst store.Instance) store.Instance {
	inst.ServerKey = ""
	return inst
}

// BackupService is what an actor may see of backups and do with them.
type BackupService struct{ e *Engine }

// BackupSource names what a backup is of: exactly one of an instance of
// the actor's and a ready image (the upload user's only).
type BackupSource struct {
	InstanceID int64
	ImageID    int64
}

// List returns the actor's backups (every backup for the upload user),
// newest first.
func (s BackupService) List(ctx context.Context, a Actor) ([]store.Backup, error) {
	filter := store.BackupFilter{Owner: a.Owner}
	switch {
	case a.Upload:
		filter.Owner = "" // every owner
	case a.Owner == "":
		return nil, nil
	}
	backups, err := s.e.opts.Store.ListBackups(ctx, filter)
	return backups, classify(err)
}

// Get returns backup id, if it is the actor's.
func (s BackupService) Get(ctx context.Context, a Actor, id int64) (store.Backup, error) {
	b, err := s.e.opts.Store.GetBackup(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !a.owns(b.Owner)) {
		return store.Backup{}, refuse(ErrNotFound, "there is no backup %d", id)
	}
	if err != nil {
		return store.Backup{}, classify(err)
	}
	return b, nil
}

// Create starts a backup of src for the actor (CreateBackup): it returns
// once the snapshot is taken, with the backup running. Images are
// everybody's to see, so another user backing one up is ErrForbidden, not
// ErrNotFound: a backup of an image carries all of its files, what its
// instances would never show them included.
func (s BackupService) Create(ctx context.Context, a Actor, src BackupSource) (store.Backup, error) {
	var notFound error
	switch {
	case src.InstanceID != 0 && src.ImageID == 0:
		if _, err := (InstanceService{s.e}).Get(ctx, a, src.InstanceID); err != nil {
			return store.Backup{}, err
		}
		notFound = refuse(ErrNotFound, "there is no instance %d", src.InstanceID)
	case src.ImageID != 0 && src.InstanceID == 0:
		if !a.Upload {
			return store.Backup{}, refuse(ErrForbidden, "only the upload user (the shared secret) may back up an image; back up an instance of yours instead")
		}
		notFound = noImage(src.ImageID)
	}
	b, err := s.e.CreateBackup(a.acting(ctx), BackupRequest{InstanceID: src.InstanceID, ImageID: src.ImageID, Owner: a.Owner})
	if errors.Is(err, ErrNotFound) && notFound != nil {
		return store.Backup{}, notFound
	}
	if err != nil {
		return store.Backup{}, classify(err)
	}
	return b, nil
}

// Open opens finished backup id's archive (OpenBackup).
func (s BackupService) Open(ctx context.Context, a Actor, id int64) (io.ReadSeekCloser, store.Backup, error) {
	if _, err := s.Get(ctx, a, id); err != nil {
		return nil, store.Backup{}, err
	}
	f, b, err := s.e.OpenBackup(ctx, id)
	if err != nil {
		return nil, store.Backup{}, classify(err)
	}
	return f, b, nil
}

// Delete deletes backup id (DeleteBackup).
func (s BackupService) Delete(ctx context.Context, a Actor, id int64) error {
	if _, err := s.Get(ctx, a, id); err != nil {
		return err
	}
	return classify(s.e.DeleteBackup(a.acting(ctx), id))
}

// StatusService is the server's status as an actor sees it.
type StatusService struct{ e *Engine }

// Get returns Status with, for each per-user limit, the actor's own
// figure in Yours (none for the upload user, whom those limits do not
// hold); the other owners' figures (ByOwner) are the upload user's only.
func (s StatusService) Get(ctx context.Context, a Actor) (Status, error) {
	st, err := s.e.Status(ctx)
	if err != nil {
		return Status{}, classify(err)
	}
	if !a.Upload {
		st.Standbys = nil // sources are the upload user's
	}
	for i := range st.Limits {
		l := &st.Limits[i]
		if l.ByOwner == nil || a.Upload {
			continue
		}
		yours := l.ByOwner[a.Owner]
		l.Yours, l.ByOwner = &yours, nil
	}
	return st, nil
}

func noImage(id int64) error { return refuse(ErrNotFound, "there is no image %d", id) }

// refusal is an error of an engine class whose message, whole, is written
// for the actor.
type refusal struct {
	class error
	msg   string
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return r.class }

func refuse(class error, format string, args ...any) error {
	return &refusal{class: class, msg: fmt.Sprintf(format, args...)}
}

// classify gives an error of the store, the storage or Postgres the
// engine class it belongs to, keeping its message, so that the services'
// callers map the engine's classes only:
//
//	store.ErrUnavailable         ErrMetadataUnavailable (whatever else it is)
//	store.ErrNotFound            ErrNotFound
//	store.ErrInvalid             ErrInvalid (a check constraint, a NUL in text)
//	store.ErrConflict, ErrInUse  ErrConflict
//	storage.ErrHasClones         ErrImageHasInstances
//	postgres.ErrVersionMissing   ErrPGVersionMissing
//	ENOSPC (storage.NoSpace)     ErrDiskFull
//
// Any other error is returned as it is: one of the engine's classes
// already, or an internal failure.
func classify(err error) error {
	var class error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrUnavailable):
		class = ErrMetadataUnavailable
	case errors.Is(err, store.ErrNotFound):
		class = ErrNotFound
	case errors.Is(err, store.ErrInvalid):
		class = ErrInvalid
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrInUse):
		class = ErrConflict
	case errors.Is(err, storage.ErrHasClones):
		class = ErrImageHasInstances
	case errors.Is(err, postgres.ErrVersionMissing):
		class = ErrPGVersionMissing
	case storage.NoSpace(err):
		class = ErrDiskFull
	default:
		return err
	}
	if errors.Is(err, class) {
		return err
	}
	return &classified{class: class, err: err}
}

// classified is err with its engine class; its message is err's.
type classified struct{ class, err error }

func (c *classified) Error() string   { return c.err.Error() }
func (c *classified) Unwrap() []error { return []error{c.class, c.err} }
