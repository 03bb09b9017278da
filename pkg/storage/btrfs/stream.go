//go:build linux

package btrfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	cbtrfs "github.com/containerd/btrfs/v2"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/internal/streamcmd"
)

// receivingDir holds one directory per receive under way, named after the
// image it will make, into which `btrfs receive` writes its subvolume.
// Nothing in it is an entry.
const receivingDir = "receiving"

func (d *Driver) stagePath(image string) string { return filepath.Join(d.root, receivingDir, image) }

// Send writes `btrfs send` of the image's subvolume: a full stream, which
// carries the subvolume's UUID (or the one it was itself received from).
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
	if err := streamcmd.Run(ctx, nil, w, "btrfs", "-q", "send", path); err != nil {
		return fmt.Errorf("sending image %q: %w", image, err)
	}
	return nil
}

// Receive runs `btrfs receive` confined (chroot) to a directory of its own
// under receiving/, checks that it made one read-only subvolume with a
// received UUID (which btrfs receive sets only once the whole stream is
// in) and holds nothing unsafe (storage.CheckReceivedTree), and
// snapshots that, read-only, into images/: the snapshot is the
// step that makes the image exist, and it keeps the received UUID. A
// received subvolume cannot be moved into images/ instead: renaming a
// read-only directory into another directory fails with EROFS (its ".."
// would change).
func (d *Driver) Receive(ctx context.Context, image string, r io.Reader) (storage.Entry, error) {
	if err := storage.ValidateName(image); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{image}, nil)()
	if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	}
	stream, err := storage.CheckStream(r, storage.StreamBtrfs)
	if err != nil {
		return storage.Entry{}, err
	}
	stage := d.stagePath(image)
	if err := removeStage(stage); err != nil {
		return storage.Entry{}, fmt.Errorf("removing what an earlier receive of %q left: %w", image, err)
	}
	if err := os.Mkdir(stage, 0o700); err != nil {
		return storage.Entry{}, err
	}
	entry, err := d.receive(ctx, image, stage, stream)
	if rerr := removeStage(stage); rerr != nil && err != nil {
		err = errors.Join(err, fmt.Errorf("removing the partial receive of %q: %w", image, rerr))
	}
	// On success a stage that could not be removed is only a leftover,
	// which the next New removes.
	return entry, err
}

func (d *Driver) receive(ctx context.Context, image, stage string, stream io.Reader) (storage.Entry, error) {
	if err := streamcmd.Run(ctx, stream, nil, "btrfs", "-q", "receive", "-C", stage); err != nil {
		return storage.Entry{}, fmt.Errorf("receiving image %q: %w", image, err)
	}
	received, err := checkReceived(stage)
	if err != nil {
		return storage.Entry{}, fmt.Errorf("receiving image %q: %w", image, err)
	}
	if err := storage.CheckReceivedTree(ctx, received); err != nil {
		return storage.Entry{}, fmt.Errorf("receiving image %q: %w", image, err)
	}
	dst := d.imagePath(image)
	if err := cbtrfs.SubvolSnapshot(dst, received, true); err != nil {
		return storage.Entry{}, fmt.Errorf("making image %q of the received subvolume: %w", image, err)
	}
	return storage.Entry{Name: image, Kind: storage.KindImage, Path: dst}, nil
}

// checkReceived returns the one subvolume that `btrfs receive` made in
// stage, once it is whole: read-only, with a received UUID.
func checkReceived(stage string) (string, error) {
	entries, err := os.ReadDir(stage)
	if err != nil {
		return "", err
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return "", fmt.Errorf("the stream made %d subvolumes (%q), not one", len(entries), names)
	}
	path := filepath.Join(stage, entries[0].Name())
	sv, err := readSubvolAt(path)
	if err != nil {
		return "", fmt.Errorf("the stream made no subvolume: %w", err)
	}
	if !sv.readonly || sv.received.isZero() {
		return "", fmt.Errorf("btrfs receive did not finish subvolume %q (read-only %v, received UUID %x)", sv.name, sv.readonly, sv.received)
	}
	return path, nil
}

// removeStage removes a receive's directory and the subvolume (whole or
// partial) that btrfs receive made in it.
func removeStage(stage string) error {
	entries, err := os.ReadDir(stage)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := filepath.Join(stage, e.Name())
		if _, err := readSubvolAt(path); err == nil {
			err = cbtrfs.SubvolDelete(path)
			if err != nil {
				return err
			}
			continue
		}
		if err := os.RemoveAll(path); err != nil {
			return err
		}
	}
	return os.Remove(stage)
}

// removeStages removes what receives cut short by a crash left.
func removeStages(root string) error {
	dir := filepath.Join(root, receivingDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := removeStage(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("removing what a receive cut short left in %s: %w", dir, err)
		}
	}
	return nil
}
