//go:build linux

package dircopy

import (
	"context"
	"io"

	"github.com/sindri-db/sindri/pkg/ingest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/portable"
)

// Send writes the image as tar.zst, the stream of package storage/portable:
// plain directories have no stream of their own.
func (d *Driver) Send(ctx context.Context, image string, w io.Writer) error {
	if err := storage.ValidateName(image); err != nil {
		return err
	}
	defer d.locks.Acquire(nil, []string{image})()
	kind, path, err := d.lookup(image)
	if err != nil {
		return err
	}
	if kind != storage.KindImage {
		return storage.WrongKind(image, storage.KindImage)
	}
	return portable.SendTree(ctx, image, path, w)
}

// Receive is portable.Receive into this driver, without limits on what the
// stream expands to: it stops where the filesystem is full. What a crash in
// the middle leaves is the volume portable.StageVolume(image), which the
// next Receive of the image destroys.
func (d *Driver) Receive(ctx context.Context, image string, r io.Reader) (storage.Entry, error) {
	return portable.Receive(ctx, d, image, r, ingest.Limits{})
}
