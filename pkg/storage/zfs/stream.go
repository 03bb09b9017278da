package zfs

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	gozfs "github.com/mistifyio/go-zfs/v3"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/internal/streamcmd"
)

func (d *Driver) receiving() string         { return d.parent + "/" + receivingDataset }
func (d *Driver) stage(image string) string { return d.receiving() + "/" + image }

// Send writes `zfs send` of the image's @frozen snapshot, the one its
// clones come from: a full stream. It runs the zfs command itself rather
// than through go-zfs, whose commands all share one timeout, too short
// for a large image and blind to ctx.
func (d *Driver) Send(ctx context.Context, image string, w io.Writer) error {
	if err := storage.ValidateName(image); err != nil {
		return err
	}
	defer d.locks.Acquire(nil, []string{image})()
	kind, _, err := d.lookup(image)
	if err != nil {
		return err
	}
	if kind != storage.KindImage {
		return storage.WrongKind(image, storage.KindImage)
	}
	snap := d.snapshot(image)
	if _, err := gozfs.GetDataset(snap); err != nil {
		return fmt.Errorf("image %q has no @%s snapshot to send: %w", image, frozenSnapshot, classify(err, image))
	}
	if err := streamcmd.Run(ctx, nil, w, "zfs", "send", snap); err != nil {
		return fmt.Errorf("sending image %q: %w", image, err)
	}
	return nil
}

// Receive runs `zfs receive` into receiving/<image>@frozen, whatever the
// sent snapshot was called, checks that it made one filesystem with that
// one snapshot and nothing unsafe in it (storage.CheckReceivedTree), and
// promotes it into images/ as Freeze does a volume. A
// receive that fails leaves nothing: zfs itself destroys a new filesystem
// whose stream failed, and what is left in receiving/ (a crash, a
// filesystem that failed the check) is destroyed.
func (d *Driver) Receive(ctx context.Context, image string, r io.Reader) (storage.Entry, error) {
	if err := storage.ValidateName(image); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{image}, nil)()
	if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	}
	stream, err := storage.CheckStream(r, storage.StreamZFS)
	if err != nil {
		return storage.Entry{}, err
	}
	if stream, err = checkBegin(stream); err != nil {
		return storage.Entry{}, err
	}
	stage := d.stage(image)
	if err := d.destroyStage(stage); err != nil {
		return storage.Entry{}, fmt.Errorf("destroying what an earlier receive of %q left: %w", image, err)
	}
	entry, err := d.receive(ctx, image, stage, stream)
	if err != nil {
		if derr := d.destroyStage(stage); derr != nil {
			err = errors.Join(err, fmt.Errorf("destroying the partial receive of %q: %w", image, derr))
		}
	}
	return entry, err
}

func (d *Driver) receive(ctx context.Context, image, stage string, stream io.Reader) (storage.Entry, error) {
	if err := streamcmd.Run(ctx, stream, nil, "zfs", "receive", stage+"@"+frozenSnapshot); err != nil {
		return storage.Entry{}, fmt.Errorf("receiving image %q: %w", image, err)
	}
	ds, err := d.checkReceived(stage)
	if err != nil {
		return storage.Entry{}, fmt.Errorf("receiving image %q: %w", image, err)
	}
	if ds, err = mountReadOnly(ds); err != nil {
		return storage.Entry{}, fmt.Errorf("mounting the received filesystem: %w", classify(err, image))
	}
	if err := storage.CheckReceivedTree(ctx, ds.Mountpoint); err != nil {
		return storage.Entry{}, fmt.Errorf("receiving image %q: %w", image, err)
	}
	return d.promote(ds, image, image, "received filesystem")
}

// checkReceived returns the filesystem zfs receive made at stage, once it
// is what an image is: a filesystem (not a volume) with the one snapshot
// @frozen and nothing else under it (as a replication stream, zfs send
// -R, would bring).
func (d *Driver) checkReceived(stage string) (*gozfs.Dataset, error) {
	ds, err := gozfs.GetDataset(stage)
	if err != nil {
		return nil, classify(err, stage)
	}
	if ds.Type != gozfs.DatasetFilesystem {
		return nil, fmt.Errorf("the stream made a %s, not a filesystem", ds.Type)
	}
	under, err := ds.Children(0)
	if err != nil {
		return nil, classify(err, stage)
	}
	var names []string
	for _, c := range under {
		names = append(names, c.Name)
	}
	if len(names) != 1 || names[0] != stage+"@"+frozenSnapshot {
		return nil, fmt.Errorf("the stream made %q under the filesystem, want only its @%s snapshot", names, frozenSnapshot)
	}
	return ds, nil
}

// destroyStage destroys a receive's filesystem, whole or left by a
// failure, if there is one.
func (d *Driver) destroyStage(stage string) error {
	ds, err := gozfs.GetDataset(stage)
	if err != nil {
		if err := classify(err, stage); errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		return classify(err, stage)
	}
	return classify(retryBusy(func() error { return ds.Destroy(gozfs.DestroyRecursive | gozfs.DestroyForceUmount) }), stage)
}

// destroyStages destroys what receives cut short by a crash left.
func (d *Driver) destroyStages() error {
	all, err := gozfs.Filesystems(d.receiving())
	if err != nil {
		return classify(err, d.receiving())
	}
	for _, ds := range all {
		rest, ok := strings.CutPrefix(ds.Name, d.receiving()+"/")
		if !ok || strings.Contains(rest, "/") {
			continue
		}
		if err := d.destroyStage(ds.Name); err != nil {
			return fmt.Errorf("destroying what a receive cut short left: %w", err)
		}
	}
	return nil
}

// The fields of a zfs stream's first record (DRR_BEGIN) that checkBegin
// reads, at their offsets: drr_type and drr_payloadlen (uint32 each), then
// drr_magic, drr_versioninfo, drr_creation_time (uint64 each), the
// objset's type and drr_flags (uint32 each), drr_toguid, drr_fromguid.
const (
	beginMagicAt    = 8
	beginVersionAt  = 16
	beginFromGUIDAt = 48
	beginHead       = 56
	// dmu_send.h: the low two bits of drr_versioninfo; a plain stream of
	// one snapshot is a substream, what zfs send -R or -p writes (with
	// the properties of the datasets, their mountpoints among them) a
	// compound stream.
	streamHeaderTypeMask = 0x3
	substream            = 1
)

// checkBegin refuses, before zfs receive sees them, the zfs streams that
// Send does not write: a compound stream, which would set properties on
// what it makes (such as where it is mounted) and make more than one
// dataset, and an incremental one, which needs a snapshot that the image
// to make would not have. It returns a reader of the whole stream.
func checkBegin(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(beginHead)
	if err != nil {
		return nil, fmt.Errorf("%w: the zfs stream ends within its first record: %v", storage.ErrStreamFormat, err)
	}
	order := binary.ByteOrder(binary.LittleEndian)
	if order.Uint64(head[beginMagicAt:]) != zfsStreamMagic {
		order = binary.BigEndian
	}
	if t := order.Uint64(head[beginVersionAt:]) & streamHeaderTypeMask; t != substream {
		return nil, fmt.Errorf("%w: the zfs stream is a compound one (zfs send -R or -p), which carries properties and more than one dataset; sindri receives the stream of one snapshot, as plain zfs send writes it", storage.ErrStreamFormat)
	}
	if order.Uint64(head[beginFromGUIDAt:]) != 0 {
		return nil, fmt.Errorf("%w: the zfs stream is an incremental one (zfs send -i), and sindri receives full streams only", storage.ErrStreamFormat)
	}
	return br, nil
}

// zfsStreamMagic is DMU_BACKUP_MAGIC.
const zfsStreamMagic = 0x2F5bacbac
