// Package zfs stores sindri's volumes and images as ZFS datasets under one
// parent dataset, through the zfs command (github.com/mistifyio/go-zfs/v3).
//
// Under the parent dataset P:
//
//	P/volumes/<name>          writable filesystems (uploads, and clones
//	                          whose origin is an image's snapshot)
//	P/images/<name>           read-only filesystems (readonly=on)
//	P/images/<name>@frozen    the snapshot clones are made from
//
//	P/volumes/<name>@<image> the origin of an image made by Snapshot from a
//	                          volume (destroyed with that image)
//	P/receiving/<name>        what `zfs receive` writes until it is checked
//	                          and promoted into P/images/<name> (Receive)
//
// Freeze snapshots the volume, makes it read-only and renames it into
// images/; the rename is the step that makes the image exist, so a freeze
// cut short leaves either the volume (which Freeze finishes) or the image.
// Receive does the same with the filesystem that `zfs receive` made.
package zfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	gozfs "github.com/mistifyio/go-zfs/v3"
	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/keyedmutex"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/internal/streamcmd"
)

const (
	volumesDataset   = "volumes"
	imagesDataset    = "images"
	receivingDataset = "receiving"
	frozenSnapshot   = "frozen"
)

// CommandTimeout bounds every zfs command the driver runs; go-zfs sends
// SIGTERM at the deadline and SIGKILL after the grace period.
const (
	CommandTimeout = 2 * time.Minute
	commandGrace   = 5 * time.Second
)

// Driver implements storage.Driver on a parent ZFS dataset.
type Driver struct {
	parent string
	locks  keyedmutex.Map[string]
}

var _ storage.Driver = (*Driver)(nil)

// New opens the driver on the parent dataset (for example "tank/sindri"),
// creating it and its volumes, images and receiving children when they
// are missing, and destroys what receives cut short by a crash left: like
// the locks it keeps, the driver takes itself for the one process using
// the dataset.
func New(parent string) (*Driver, error) {
	parent = strings.Trim(parent, "/")
	if parent == "" || strings.ContainsAny(parent, "@ \x00") || strings.Contains(parent, "..") {
		return nil, fmt.Errorf("invalid ZFS parent dataset %q", parent)
	}
	gozfs.SetRunner(&gozfs.Runner{Timeout: CommandTimeout, Grace: commandGrace})
	d := &Driver{parent: parent}
	for _, ds := range []string{parent, d.volumes(), d.images(), d.receiving()} {
		if _, err := gozfs.GetDataset(ds); err == nil {
			continue
		} else if !errors.Is(classify(err, ds), storage.ErrNotFound) {
			return nil, classify(err, ds)
		}
		if _, err := gozfs.CreateFilesystem(ds, nil); err != nil && !errors.Is(classify(err, ds), storage.ErrExists) {
			return nil, fmt.Errorf("creating dataset %s: %w", ds, classify(err, ds))
		}
	}
	// A clone that wrote an access time on each read would copy, block by
	// block, the metadata its image shares with every other clone.
	// Volumes and images inherit the setting from their parents.
	for _, ds := range []string{d.volumes(), d.images(), d.receiving()} {
		dataset, err := gozfs.GetDataset(ds)
		if err != nil {
			return nil, classify(err, ds)
		}
		if atime, err := dataset.GetProperty("atime"); err == nil && atime == "off" {
			continue
		}
		if err := dataset.SetProperty("atime", "off"); err != nil {
			return nil, fmt.Errorf("turning access times off on %s: %w", ds, classify(err, ds))
		}
	}
	if err := d.destroyStages(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Driver) Name() string { return "zfs" }

// Capabilities: a Snapshot is a clone of a ZFS snapshot of its source,
// which ZFS does not destroy while the clone exists, so it pins the source.
func (d *Driver) Capabilities() storage.Capabilities {
	return storage.Capabilities{SnapshotPinsSource: true, ThinClones: true, ImmutableImages: true, AtomicSnapshot: true, StreamFormat: storage.StreamZFS}
}

func (d *Driver) volumes() string              { return d.parent + "/" + volumesDataset }
func (d *Driver) images() string               { return d.parent + "/" + imagesDataset }
func (d *Driver) volume(name string) string    { return d.volumes() + "/" + name }
func (d *Driver) image(name string) string     { return d.images() + "/" + name }
func (d *Driver) snapshot(image string) string { return d.image(image) + "@" + frozenSnapshot }

// classify turns a zfs command's failure into the storage package's errors.
// The zfs command tells only in words which failure it was.
func classify(err error, name string) error {
	var zerr *gozfs.Error
	if !errors.As(err, &zerr) {
		return err
	}
	msg := strings.TrimSpace(zerr.Stderr)
	var kind error
	switch {
	case strings.Contains(msg, "does not exist"):
		kind = storage.ErrNotFound
	case strings.Contains(msg, "already exists"):
		kind = storage.ErrExists
	case strings.Contains(msg, "dependent clones"):
		kind = storage.ErrHasClones
	case strings.Contains(msg, "busy"):
		kind = storage.ErrBusy
	case strings.Contains(msg, "out of space"):
		// What storage.NoSpace tells, as for a write that ENOSPC refuses.
		return fmt.Errorf("%s: %w: %s", zerr.Debug, syscall.ENOSPC, msg)
	default:
		return fmt.Errorf("%s: %s", zerr.Debug, msg)
	}
	return fmt.Errorf("%w: %q: %s", kind, name, msg)
}

// lookup tells which kind of entry name is, or ErrNotFound.
func (d *Driver) lookup(name string) (storage.Kind, *gozfs.Dataset, error) {
	for _, c := range []struct {
		kind storage.Kind
		ds   string
	}{{storage.KindVolume, d.volume(name)}, {storage.KindImage, d.image(name)}} {
		ds, err := gozfs.GetDataset(c.ds)
		if err == nil {
			return c.kind, ds, nil
		}
		if err := classify(err, name); !errors.Is(err, storage.ErrNotFound) {
			return "", nil, err
		}
	}
	return "", nil, storage.NotFound(name)
}

func (d *Driver) requireFree(name string) error {
	if _, _, err := d.lookup(name); err == nil {
		return storage.Exists(name)
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	return nil
}

func (d *Driver) Create(ctx context.Context, volume string) (storage.Entry, error) {
	if err := storage.ValidateName(volume); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{volume}, nil)()
	if err := d.requireFree(volume); err != nil {
		return storage.Entry{}, err
	}
	ds, err := gozfs.CreateFilesystem(d.volume(volume), nil)
	if err != nil {
		return storage.Entry{}, fmt.Errorf("creating volume: %w", classify(err, volume))
	}
	return storage.Entry{Name: volume, Kind: storage.KindVolume, Path: ds.Mountpoint}, nil
}

func (d *Driver) Freeze(ctx context.Context, volume, image string) (storage.Entry, error) {
	if err := storage.ValidateNames(volume, image); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{volume, image}, nil)()
	kind, ds, err := d.lookup(volume)
	if err != nil {
		return storage.Entry{}, err
	}
	if kind != storage.KindVolume {
		return storage.Entry{}, storage.WrongKind(volume, storage.KindVolume)
	}
	if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	}
	// Snapshot first, then read-only, then the rename: until the rename the
	// volume is still a volume, and a repeated Freeze picks up where the
	// last one stopped.
	snap := ds.Name + "@" + frozenSnapshot
	if _, err := gozfs.GetDataset(snap); err != nil {
		if _, err := ds.Snapshot(frozenSnapshot, false); err != nil && !errors.Is(classify(err, volume), storage.ErrExists) {
			return storage.Entry{}, fmt.Errorf("snapshotting volume: %w", classify(err, volume))
		}
	}
	return d.promote(ds, volume, image, "volume")
}

// promote makes the filesystem ds read-only and renames it into the
// image's name: the rename is the step that makes the image exist. The
// errors call ds what, named name.
func (d *Driver) promote(ds *gozfs.Dataset, name, image, what string) (storage.Entry, error) {
	if err := ds.SetProperty("readonly", "on"); err != nil {
		return storage.Entry{}, fmt.Errorf("making %s read-only: %w", what, classify(err, name))
	}
	// Unmounted for the rename, mounted again read-only after it: zfs-fuse
	// refuses to rename a mounted dataset and mounts read-write unless told.
	if err := unmount(ds); err != nil {
		return storage.Entry{}, fmt.Errorf("unmounting %s: %w", what, classify(err, name))
	}
	// zfs-fuse can call a dataset busy for a moment after its unmount
	// too, when much was freed on it just before.
	var frozen *gozfs.Dataset
	err := retryBusy(func() error {
		var err error
		frozen, err = ds.Rename(d.image(image), false, false)
		return err
	})
	if err != nil {
		return storage.Entry{}, fmt.Errorf("renaming %s into image: %w", what, classify(err, image))
	}
	if frozen, err = mountReadOnly(frozen); err != nil {
		return storage.Entry{}, fmt.Errorf("mounting image: %w", classify(err, image))
	}
	return storage.Entry{Name: image, Kind: storage.KindImage, Path: frozen.Mountpoint}, nil
}

// retryBusy repeats op while the dataset is busy, for up to five seconds:
// a filesystem that was just written can stay busy for a moment after its
// last file is closed.
func retryBusy(op func() error) error {
	delay := 10 * time.Millisecond
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := op()
		var zerr *gozfs.Error
		if err == nil || !errors.As(err, &zerr) || !strings.Contains(zerr.Stderr, "busy") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
		delay = min(2*delay, 500*time.Millisecond)
	}
}

func isMounted(ds *gozfs.Dataset) (bool, error) {
	v, err := ds.GetProperty("mounted")
	return v == "yes", err
}

func unmount(ds *gozfs.Dataset) error {
	mounted, err := isMounted(ds)
	if err != nil || !mounted {
		return err
	}
	return retryBusy(func() error {
		_, err := ds.Unmount(false)
		return err
	})
}

// mountReadOnly mounts ds read-only, unless it is so already. zfs-fuse
// sometimes mounts a dataset by itself, read-write, once it is renamed:
// such a mount is replaced, since on it an open file of a dataset whose
// readonly property is on can still be overwritten.
func mountReadOnly(ds *gozfs.Dataset) (*gozfs.Dataset, error) {
	mounted, err := isMounted(ds)
	if err != nil {
		return ds, err
	}
	if mounted {
		var st unix.Statfs_t
		if err := unix.Statfs(ds.Mountpoint, &st); err != nil {
			return ds, err
		}
		if st.Flags&unix.ST_RDONLY != 0 {
			return ds, nil
		}
		if err := unmount(ds); err != nil {
			return ds, fmt.Errorf("unmounting a read-write mount: %w", err)
		}
	}
	return ds.Mount(false, []string{"ro"})
}

func (d *Driver) Clone(ctx context.Context, image, volume string) (storage.Entry, error) {
	if err := storage.ValidateNames(image, volume); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{volume}, []string{image})()
	if err := d.requireFree(volume); err != nil {
		return storage.Entry{}, err
	}
	snap, err := gozfs.GetDataset(d.snapshot(image))
	if err != nil {
		if _, kerr := gozfs.GetDataset(d.volume(image)); kerr == nil {
			return storage.Entry{}, storage.WrongKind(image, storage.KindImage)
		}
		return storage.Entry{}, classify(err, image)
	}
	snap.Type = gozfs.DatasetSnapshot
	ds, err := snap.Clone(d.volume(volume), nil)
	if err != nil {
		return storage.Entry{}, fmt.Errorf("cloning image: %w", classify(err, volume))
	}
	return storage.Entry{Name: volume, Kind: storage.KindVolume, Origin: image, Path: ds.Mountpoint}, nil
}

func (d *Driver) Snapshot(ctx context.Context, source, image string) (storage.Entry, error) {
	if err := storage.ValidateNames(source, image); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{image}, []string{source})()
	kind, ds, err := d.lookup(source)
	if err != nil {
		return storage.Entry{}, err
	}
	if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	}
	origin := d.snapshot(source)
	if kind == storage.KindVolume {
		origin = ds.Name + "@" + image
		if _, err := gozfs.GetDataset(origin); err == nil {
			// Left by a Snapshot cut short: the instant it holds is gone.
			if err := d.destroySnapshot(origin); err != nil {
				return storage.Entry{}, err
			}
		}
		if _, err := ds.Snapshot(image, false); err != nil {
			return storage.Entry{}, fmt.Errorf("snapshotting volume: %w", classify(err, source))
		}
	}
	entry, err := d.cloneReadOnly(origin, image)
	if err != nil && kind == storage.KindVolume {
		d.destroySnapshot(origin)
	}
	return entry, err
}

// cloneReadOnly makes image a read-only clone of the snapshot origin, with
// the @frozen snapshot every image has.
func (d *Driver) cloneReadOnly(origin, image string) (storage.Entry, error) {
	snap, err := gozfs.GetDataset(origin)
	if err != nil {
		return storage.Entry{}, classify(err, image)
	}
	snap.Type = gozfs.DatasetSnapshot
	clone, err := snap.Clone(d.image(image), map[string]string{"readonly": "on"})
	if err != nil {
		return storage.Entry{}, fmt.Errorf("cloning snapshot: %w", classify(err, image))
	}
	if _, err := clone.Snapshot(frozenSnapshot, false); err != nil {
		clone.Destroy(gozfs.DestroyRecursive | gozfs.DestroyForceUmount)
		return storage.Entry{}, fmt.Errorf("snapshotting image: %w", classify(err, image))
	}
	// zfs-fuse mounts a new clone read-write whatever readonly says.
	if err := unmount(clone); err != nil {
		return storage.Entry{}, classify(err, image)
	}
	if clone, err = mountReadOnly(clone); err != nil {
		return storage.Entry{}, fmt.Errorf("mounting image: %w", classify(err, image))
	}
	return storage.Entry{Name: image, Kind: storage.KindImage, Path: clone.Mountpoint}, nil
}

func (d *Driver) destroySnapshot(name string) error {
	snap, err := gozfs.GetDataset(name)
	if err != nil {
		return classify(err, name)
	}
	snap.Type = gozfs.DatasetSnapshot
	return classify(retryBusy(func() error { return snap.Destroy(gozfs.DestroyDefault) }), name)
}

func (d *Driver) Destroy(ctx context.Context, name string) error {
	if err := storage.ValidateName(name); err != nil {
		return err
	}
	defer d.locks.Acquire([]string{name}, nil)()
	kind, ds, err := d.lookup(name)
	if err != nil {
		return err
	}
	// Recursive: an image's @frozen snapshot, or the snapshot a cut-short
	// freeze left on a volume, goes with it. Not -R: while a clone of one
	// of those snapshots exists, zfs itself refuses, before it unmounts
	// anything, that it "has dependent clones" (ErrHasClones), which
	// spares a listing of every dataset.
	err = retryBusy(func() error { return ds.Destroy(gozfs.DestroyRecursive | gozfs.DestroyForceUmount) })
	if err != nil {
		return fmt.Errorf("destroying %s: %w", kind, classify(err, name))
	}
	// An image made by Snapshot from a volume leaves that volume's
	// snapshot behind, which would keep pinning the volume.
	if origin, ok := strings.CutPrefix(ds.Origin, d.volumes()+"/"); ok && strings.HasSuffix(origin, "@"+name) {
		if err := d.destroySnapshot(ds.Origin); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("destroying the snapshot %s was made from: %w", name, err)
		}
	}
	return nil
}

func (d *Driver) Get(ctx context.Context, name string) (storage.Entry, error) {
	if err := storage.ValidateName(name); err != nil {
		return storage.Entry{}, err
	}
	kind, ds, err := d.lookup(name)
	if err != nil {
		return storage.Entry{}, err
	}
	return d.entry(kind, name, ds), nil
}

func (d *Driver) entry(kind storage.Kind, name string, ds *gozfs.Dataset) storage.Entry {
	e := storage.Entry{Name: name, Kind: kind, Path: ds.Mountpoint}
	if origin, ok := strings.CutPrefix(ds.Origin, d.images()+"/"); ok {
		e.Origin = strings.TrimSuffix(origin, "@"+frozenSnapshot)
	}
	return e
}

func (d *Driver) List(ctx context.Context) ([]storage.Entry, error) {
	return d.list()
}

func (d *Driver) list() ([]storage.Entry, error) {
	all, err := gozfs.Filesystems(d.parent)
	if err != nil {
		return nil, classify(err, d.parent)
	}
	var entries []storage.Entry
	for _, ds := range all {
		rest, ok := strings.CutPrefix(ds.Name, d.parent+"/")
		if !ok {
			continue
		}
		var kind storage.Kind
		name := ""
		if n, ok := strings.CutPrefix(rest, volumesDataset+"/"); ok {
			kind, name = storage.KindVolume, n
		} else if n, ok := strings.CutPrefix(rest, imagesDataset+"/"); ok {
			kind, name = storage.KindImage, n
		}
		if name == "" || storage.ValidateName(name) != nil {
			continue // the volumes/images datasets themselves, or not ours
		}
		entries = append(entries, d.entry(kind, name, ds))
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, nil
}

func (d *Driver) ExclusiveBytes(ctx context.Context, name string) (int64, error) {
	if err := storage.ValidateName(name); err != nil {
		return 0, err
	}
	_, ds, err := d.lookup(name)
	if err != nil {
		return 0, err
	}
	// used counts the dataset's own blocks and its snapshots', never the
	// blocks a clone shares with its origin.
	return int64(ds.Used), nil
}

// ExclusiveBytesOf reads the used property of every volume and image in
// one `zfs list` of the volumes and images datasets, the figure
// ExclusiveBytes reads one dataset at a time, and keeps the named ones.
func (d *Driver) ExclusiveBytesOf(ctx context.Context, names []string) (map[string]int64, error) {
	if err := storage.ValidateNames(names...); err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(names))
	if len(names) == 0 {
		return out, nil
	}
	ctx, cancel := context.WithTimeout(ctx, CommandTimeout)
	defer cancel()
	var listed bytes.Buffer
	// A dataset destroyed while the list runs is left out of it.
	if err := streamcmd.Run(ctx, nil, &listed, "zfs", "list", "-r", "-H", "-p", "-t", "filesystem", "-o", "name,used", d.volumes(), d.images()); err != nil {
		return nil, fmt.Errorf("reading the used bytes of %s's volumes and images: %w", d.parent, err)
	}
	used := map[string]int64{}
	for line := range strings.Lines(listed.String()) {
		ds, value, ok := strings.Cut(strings.TrimSuffix(line, "\n"), "\t")
		if !ok {
			return nil, fmt.Errorf("zfs list printed %q, want a name and a number separated by a tab", line)
		}
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("zfs list printed %q for the used bytes of %s: %w", value, ds, err)
		}
		used[ds] = n
	}
	for _, name := range names {
		// Volumes and images share one namespace; a name is either.
		if n, ok := used[d.volume(name)]; ok {
			out[name] = n
		} else if n, ok := used[d.image(name)]; ok {
			out[name] = n
		}
	}
	return out, nil
}

func (d *Driver) Capacity(ctx context.Context) (storage.Capacity, error) {
	ds, err := gozfs.GetDataset(d.parent)
	if err != nil {
		return storage.Capacity{}, classify(err, d.parent)
	}
	return storage.Capacity{
		TotalBytes: int64(ds.Used + ds.Avail),
		FreeBytes:  int64(ds.Avail),
	}, nil
}
