package engine

import (
	"context"
	"errors"

	"github.com/sindri-db/sindri/pkg/store"
)

// SourceService is what an actor may see of sources and do with them:
// the upload user everything, anyone else nothing (ErrForbidden).
type SourceService struct{ e *Engine }

func (a Actor) mayUseSources() error {
	if !a.Upload {
		return refuse(ErrForbidden, "only the upload user (the shared secret) may see or change sources")
	}
	return nil
}

// List returns every source, by id.
func (s SourceService) List(ctx context.Context, a Actor) ([]store.Source, error) {
	if err := a.mayUseSources(); err != nil {
		return nil, err
	}
	srcs, err := s.e.opts.Store.ListSources(ctx)
	return srcs, classify(err)
}

// Get returns source id.
func (s SourceService) Get(ctx context.Context, a Actor, id int64) (store.Source, error) {
	if err := a.mayUseSources(); err != nil {
		return store.Source{}, err
	}
	src, err := s.e.getSource(ctx, id)
	return src, classify(err)
}

// Create records a source (CreateSource).
func (s SourceService) Create(ctx context.Context, a Actor, req SourceRequest) (store.Source, error) {
	if err := a.mayUseSources(); err != nil {
		return store.Source{}, err
	}
	src, err := s.e.CreateSource(a.acting(ctx), req)
	return src, classify(err)
}

// Update changes source id (UpdateSource).
func (s SourceService) Update(ctx context.Context, a Actor, id int64, p SourcePatch) (store.Source, error) {
	if err := a.mayUseSources(); err != nil {
		return store.Source{}, err
	}
	src, err := s.e.UpdateSource(a.acting(ctx), id, p)
	return src, classify(err)
}

// Delete deletes source id (DeleteSource).
func (s SourceService) Delete(ctx context.Context, a Actor, id int64) error {
	if err := a.mayUseSources(); err != nil {
		return err
	}
	return classify(s.e.DeleteSource(a.acting(ctx), id))
}

// Refresh starts a refresh of source id now (RefreshSource).
func (s SourceService) Refresh(ctx context.Context, a Actor, id int64) (store.Source, error) {
	if err := a.mayUseSources(); err != nil {
		return store.Source{}, err
	}
	src, err := s.e.RefreshSource(a.acting(ctx), id)
	return src, classify(err)
}

// ListOfSource returns the images that source name made, newest first:
// images are everybody's to see, and so is which source made them.
func (s ImageService) ListOfSource(ctx context.Context, a Actor, name string) ([]store.Image, error) {
	src, err := s.e.opts.Store.GetSourceByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, refuse(ErrNotFound, "there is no source named %q", name)
	}
	if err != nil {
		return nil, classify(err)
	}
	images, err := s.e.opts.Store.ListImagesOfSource(ctx, src.ID)
	if err != nil {
		return nil, classify(err)
	}
	return a.seeImages(images), nil
}
