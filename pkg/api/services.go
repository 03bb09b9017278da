package api

import (
	"context"
	"io"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// The services the handlers call, which the engine implements
// (engine.Services): each method takes the caller as an engine.Actor and
// decides what the actor may see and do; its errors are of the engine's
// classes (the error table, errors.go), with messages written for the
// client. A handler decodes the request, calls one service and renders
// what it returns.

// ImageService: images are everybody's to see; only the upload user
// changes them (engine.ErrForbidden), and only the upload user reads why a
// finalise failed.
type ImageService interface {
	List(ctx context.Context, a engine.Actor) ([]store.Image, error)
	Get(ctx context.Context, a engine.Actor, id int64) (store.Image, error)
	// Create records a pending image; a pull or a restore is then
	// finalised in the background.
	Create(ctx context.Context, a engine.Actor, req engine.ImageRequest) (store.Image, error)
	// Upload streams body (size bytes, -1 if unknown) into the image's
	// upload.
	Upload(ctx context.Context, a engine.Actor, id int64, body io.Reader, size int64) (store.Image, error)
	Finalise(ctx context.Context, a engine.Actor, id int64) (store.Image, error)
	Destroy(ctx context.Context, a engine.Actor, id int64, force bool) error
	// ListOfSource returns the images source name made, newest first;
	// engine.ErrNotFound when there is no such source.
	ListOfSource(ctx context.Context, a engine.Actor, name string) ([]store.Image, error)
}

// InstanceService: an instance is its owner's (and the upload user's);
// another's is engine.ErrNotFound.
type InstanceService interface {
	List(ctx context.Context, a engine.Actor) ([]store.Instance, error)
	Get(ctx context.Context, a engine.Actor, id int64) (store.Instance, error)
	Create(ctx context.Context, a engine.Actor, req engine.NewInstance) (store.Instance, error)
	// Update changes the expiry or the protection; nil leaves either.
	Update(ctx context.Context, a engine.Actor, id int64, expiresAt *time.Time, protected *bool) (store.Instance, error)
	Reset(ctx context.Context, a engine.Actor, id int64) (store.Instance, error)
	Destroy(ctx context.Context, a engine.Actor, id int64) error
}

// HostService: the fleet's hosts, the upload user's only
// (engine.ErrForbidden for others).
type HostService interface {
	List(ctx context.Context, a engine.Actor) ([]store.Host, error)
}

// BackupService: a backup is its owner's (and the upload user's);
// another's is engine.ErrNotFound. Only the upload user backs up an image.
type BackupService interface {
	List(ctx context.Context, a engine.Actor) ([]store.Backup, error)
	Get(ctx context.Context, a engine.Actor, id int64) (store.Backup, error)
	// Create returns once the snapshot is taken, the backup running.
	Create(ctx context.Context, a engine.Actor, src engine.BackupSource) (store.Backup, error)
	// Open opens a done backup's archive.
	Open(ctx context.Context, a engine.Actor, id int64) (io.ReadSeekCloser, store.Backup, error)
	Delete(ctx context.Context, a engine.Actor, id int64) error
}

// StatusService: the server's figures, each per-user limit with the
// actor's own (LimitUse.Yours).
type StatusService interface {
	Get(ctx context.Context, a engine.Actor) (engine.Status, error)
}

// SourceService: sources are the upload user's only
// (engine.ErrForbidden for anyone else).
type SourceService interface {
	List(ctx context.Context, a engine.Actor) ([]store.Source, error)
	Get(ctx context.Context, a engine.Actor, id int64) (store.Source, error)
	Create(ctx context.Context, a engine.Actor, req engine.SourceRequest) (store.Source, error)
	Update(ctx context.Context, a engine.Actor, id int64, p engine.SourcePatch) (store.Source, error)
	Delete(ctx context.Context, a engine.Actor, id int64) error
	// Refresh starts a refresh now and returns the source refreshing.
	Refresh(ctx context.Context, a engine.Actor, id int64) (store.Source, error)
}

// The engine's services are these.
var (
	_ ImageService    = engine.ImageService{}
	_ InstanceService = engine.InstanceService{}
	_ BackupService   = engine.BackupService{}
	_ StatusService   = engine.StatusService{}
	_ SourceService   = engine.SourceService{}
)
