// Package portable moves an image between drivers of different kinds (a
// BTRFS host and a ZFS host) as the tar.zst stream that sindri writes for
// backups. Drivers of the same StreamFormat use the filesystem's own
// stream instead (storage.Driver's Send and Receive), which is faster and
// keeps more (timestamps, extended attributes, sparse files, hard links);
// this one keeps what a data directory needs: every directory, regular
// file and symbolic link with its content, mode and numeric owner, and the
// image's top directory's mode and owner.
//
// Its writer is the one of backups (package tarball) and its reader the
// extractor of uploads (package ingest), which keeps every path inside
// the volume it fills and bounds what a stream may expand to.
package portable

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/sindri-db/sindri/pkg/ingest"
	"github.com/sindri-db/sindri/pkg/keyedmutex"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/internal/streamcmd"
	"github.com/sindri-db/sindri/pkg/tarball"
)

// Format is the format of the stream, for a Capabilities.StreamFormat
// comparison: tar.zst.
const Format = storage.StreamTarZstd

// receiving serialises the receives of one image into one driver.
var receiving keyedmutex.Map[string]

// stageSuffix names the volume a Receive fills.
const stageSuffix = ".receiving"

// StageVolume is the name of the volume that Receive fills and freezes
// into image. A crash in the middle of a Receive leaves it behind, as a
// volume like any other, until the next Receive of the same image
// destroys it.
func StageVolume(image string) string { return image + stageSuffix }

// Send writes the image's tree to w as tar.zst (zstd's fastest level, as
// backups are written). The caller keeps the image from being destroyed
// until Send returns.
func Send(ctx context.Context, d storage.Driver, image string, w io.Writer) error {
	e, err := d.Get(ctx, image)
	if err != nil {
		return err
	}
	if e.Kind != storage.KindImage {
		return storage.WrongKind(image, storage.KindImage)
	}
	return SendTree(ctx, image, e.Path, w)
}

// SendTree is Send of the image whose tree is at dir, for a driver whose
// own stream is tar.zst (dircopy): it has looked the image up, and keeps
// it from being destroyed until SendTree returns.
func SendTree(ctx context.Context, image, dir string, w io.Writer) error {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return err
	}
	if err := tarball.Write(ctx, zw, dir, tarball.Options{Owners: true, Top: true}); err != nil {
		zw.Close()
		return fmt.Errorf("sending image %q as tar.zst: %w", image, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("sending image %q as tar.zst: %w", image, err)
	}
	return nil
}

// Receive makes the read-only image named image in d from a stream that
// Send wrote, from a driver of any kind: it creates the volume
// StageVolume(image), extracts the stream into it within limits (see
// ingest.Limits) and freezes it into the image, which is then an image as
// any Freeze makes. A name already taken is storage.ErrExists and a
// stream that is not tar.zst storage.ErrStreamFormat, both before
// anything is made; a stream cut short or corrupt (zstd's checksum is
// checked), one that passes limits, an error of r, the end of ctx or a
// stream through which nothing moved for streamcmd's stall timeout (two
// minutes) destroy the volume and leave nothing.
func Receive(ctx context.Context, d storage.Driver, image string, r io.Reader, limits ingest.Limits) (storage.Entry, error) {
	if err := storage.ValidateName(image); err != nil {
		return storage.Entry{}, err
	}
	stage := StageVolume(image)
	if err := storage.ValidateName(stage); err != nil {
		return storage.Entry{}, fmt.Errorf("%w: image name %q is too long to receive as tar.zst (the volume it is received into would be %q)", storage.ErrInvalidName, image, stage)
	}
	// Two receives of one image would share its stage volume.
	defer receiving.Lock(fmt.Sprintf("%p/%s", d, image))()
	if _, err := d.Get(ctx, image); err == nil {
		return storage.Entry{}, storage.Exists(image)
	} else if !errors.Is(err, storage.ErrNotFound) {
		return storage.Entry{}, err
	}
	stream, err := storage.CheckStream(r, Format)
	if err != nil {
		return storage.Entry{}, err
	}
	if err := d.Destroy(ctx, stage); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return storage.Entry{}, fmt.Errorf("destroying what an earlier receive of %q left: %w", image, err)
	}
	vol, err := d.Create(ctx, stage)
	if err != nil {
		return storage.Entry{}, err
	}
	entry, err := fill(ctx, d, vol, image, stream, limits)
	if err != nil {
		if derr := d.Destroy(context.WithoutCancel(ctx), stage); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
			err = errors.Join(err, fmt.Errorf("destroying the partial receive of %q: %w", image, derr))
		}
	}
	return entry, err
}

func fill(ctx context.Context, d storage.Driver, vol storage.Entry, image string, stream io.Reader, limits ingest.Limits) (storage.Entry, error) {
	// The extractor notices ctx between entries; the guard, in the middle
	// of a read that blocks, and when the stream stalls.
	stream, stop := streamcmd.Guard(ctx, stream)
	defer stop()
	if _, err := ingest.ExtractWith(ctx, stream, vol.Path, ingest.Options{Limits: limits, Replica: true}); err != nil {
		return storage.Entry{}, fmt.Errorf("receiving image %q as tar.zst: %w", image, err)
	}
	return d.Freeze(ctx, vol.Name, image)
}
