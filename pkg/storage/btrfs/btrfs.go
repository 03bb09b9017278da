//go:build linux

// Package btrfs stores sindri's volumes as BTRFS subvolumes and its images
// as read-only BTRFS snapshots, through the kernel's ioctls
// (github.com/containerd/btrfs/v2).
//
// Under the root directory:
//
//	volumes/<name>   writable subvolumes (uploads, clones)
//	images/<name>    read-only snapshots
//	receiving/<name>/ what `btrfs receive` writes until it is checked and
//	                 snapshotted into images/<name> (Receive)
//
// BTRFS does not refuse to delete a snapshot that has snapshots of its own,
// so the driver keeps that rule itself: a volume's subvolume records the
// UUID of the image it was cloned from (its parent UUID), and an image with
// any volume naming it as parent is not destroyed.
//
// Lookups by name cost the same however many entries exist: Get opens the
// one directory and asks the kernel for its subvolume's record, and finds
// a clone's image through the filesystem's UUID tree. Only List, and the
// destroy of an image (which must know that no volume was cloned from it),
// read every subvolume's record, in one tree search that opens nothing, so
// that an entry destroyed meanwhile is simply not listed.
package btrfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	cbtrfs "github.com/containerd/btrfs/v2"
	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/keyedmutex"
	"github.com/sindri-db/sindri/pkg/storage"
)

const (
	volumesDir = "volumes"
	imagesDir  = "images"
)

// Driver implements storage.Driver on a directory of a BTRFS filesystem.
type Driver struct {
	root  string
	locks keyedmutex.Map[string]
	// Where the entries of each kind are linked: the subvolume holding the
	// volumes/ or images/ directory and that directory's inode number, as
	// a subvolume's record names them.
	dirs map[storage.Kind]linkDir
}

type linkDir struct{ subvol, ino uint64 }

var _ storage.Driver = (*Driver)(nil)

// New opens the driver on root, which must be on BTRFS. It makes root and
// its volumes/, images/ and receiving/ directories and turns on quota
// accounting (for ExclusiveBytes) when they are missing, and removes what
// receives cut short by a crash left: like the locks it keeps, the driver
// takes itself for the one process using root.
func New(root string) (*Driver, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	if err := IsBtrfs(root); err != nil {
		return nil, err
	}
	for _, dir := range []string{volumesDir, imagesDir} {
		// 0711: the Postgres user must reach into its own data directory.
		if err := os.MkdirAll(filepath.Join(root, dir), 0o711); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, receivingDir), 0o700); err != nil {
		return nil, err
	}
	if err := removeStages(root); err != nil {
		return nil, err
	}
	if err := enableQuota(root); err != nil {
		return nil, err
	}
	d := &Driver{root: root, dirs: map[storage.Kind]linkDir{}}
	for kind, dir := range map[storage.Kind]string{storage.KindVolume: volumesDir, storage.KindImage: imagesDir} {
		path := filepath.Join(root, dir)
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return nil, fmt.Errorf("stat %s: %w", path, err)
		}
		id, err := cbtrfs.SubvolID(path)
		if err != nil {
			return nil, fmt.Errorf("reading the subvolume of %s: %w", path, err)
		}
		d.dirs[kind] = linkDir{subvol: id, ino: st.Ino}
	}
	return d, nil
}

// IsBtrfs reports whether path is on a BTRFS filesystem.
func IsBtrfs(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.BTRFS_SUPER_MAGIC {
		return fmt.Errorf("%s is not on a BTRFS filesystem", path)
	}
	return nil
}

func (d *Driver) Name() string { return "btrfs" }

// Capabilities: a Snapshot is a subvolume of its own, which destroying its
// source leaves whole, so it pins nothing; clones and snapshots share
// extents, images are read-only subvolumes, and a snapshot is atomic.
func (d *Driver) Capabilities() storage.Capabilities {
	return storage.Capabilities{SnapshotPinsSource: false, ThinClones: true, ImmutableImages: true, AtomicSnapshot: true, StreamFormat: storage.StreamBtrfs}
}

func (d *Driver) volumePath(name string) string { return filepath.Join(d.root, volumesDir, name) }
func (d *Driver) imagePath(name string) string  { return filepath.Join(d.root, imagesDir, name) }

func (d *Driver) path(kind storage.Kind, name string) string {
	if kind == storage.KindImage {
		return d.imagePath(name)
	}
	return d.volumePath(name)
}

// linkedIn tells whether a subvolume is linked as name in the directory
// of the entries of kind.
func (d *Driver) linkedIn(kind storage.Kind, sv subvol, name string) bool {
	dir := d.dirs[kind]
	return sv.parentID == dir.subvol && sv.dirID == dir.ino && sv.name == name
}

// lookup tells which kind of entry name is, or ErrNotFound.
func (d *Driver) lookup(name string) (storage.Kind, string, error) {
	for _, c := range []struct {
		kind storage.Kind
		path string
	}{{storage.KindVolume, d.volumePath(name)}, {storage.KindImage, d.imagePath(name)}} {
		if _, err := os.Lstat(c.path); err == nil {
			return c.kind, c.path, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", "", err
		}
	}
	return "", "", storage.NotFound(name)
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
	path := d.volumePath(volume)
	if err := cbtrfs.SubvolCreate(path); err != nil {
		return storage.Entry{}, fmt.Errorf("creating volume %q: %w", volume, err)
	}
	return storage.Entry{Name: volume, Kind: storage.KindVolume, Path: path}, nil
}

func (d *Driver) Freeze(ctx context.Context, volume, image string) (storage.Entry, error) {
	if err := storage.ValidateNames(volume, image); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{volume, image}, nil)()
	kind, src, err := d.lookup(volume)
	if err != nil {
		return storage.Entry{}, err
	}
	if kind != storage.KindVolume {
		return storage.Entry{}, storage.WrongKind(volume, storage.KindVolume)
	}
	dst := d.imagePath(image)
	srcInfo, err := readSubvolAt(src)
	if err != nil {
		return storage.Entry{}, fmt.Errorf("reading volume %q: %w", volume, err)
	}
	if imgInfo, err := readSubvolAt(dst); err == nil {
		// A freeze that stopped after the snapshot: the image is this
		// volume's snapshot, so only the volume's removal is left to do.
		if imgInfo.parent != srcInfo.uuid {
			return storage.Entry{}, storage.Exists(image)
		}
	} else if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	} else {
		forbidAtime(src)
		if err := cbtrfs.SubvolSnapshot(dst, src, true); err != nil {
			return storage.Entry{}, fmt.Errorf("freezing volume %q into image %q: %w", volume, image, err)
		}
	}
	if err := cbtrfs.SubvolDelete(src); err != nil {
		return storage.Entry{}, fmt.Errorf("removing frozen volume %q: %w", volume, err)
	}
	return storage.Entry{Name: image, Kind: storage.KindImage, Path: dst}, nil
}

func (d *Driver) Clone(ctx context.Context, image, volume string) (storage.Entry, error) {
	if err := storage.ValidateNames(image, volume); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{volume}, []string{image})()
	kind, src, err := d.lookup(image)
	if err != nil {
		return storage.Entry{}, err
	}
	if kind != storage.KindImage {
		return storage.Entry{}, storage.WrongKind(image, storage.KindImage)
	}
	if err := d.requireFree(volume); err != nil {
		return storage.Entry{}, err
	}
	dst := d.volumePath(volume)
	if err := cbtrfs.SubvolSnapshot(dst, src, false); err != nil {
		return storage.Entry{}, fmt.Errorf("cloning image %q into volume %q: %w", image, volume, err)
	}
	return storage.Entry{Name: volume, Kind: storage.KindVolume, Origin: image, Path: dst}, nil
}

func (d *Driver) Snapshot(ctx context.Context, source, image string) (storage.Entry, error) {
	if err := storage.ValidateNames(source, image); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{image}, []string{source})()
	_, src, err := d.lookup(source)
	if err != nil {
		return storage.Entry{}, err
	}
	if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	}
	dst := d.imagePath(image)
	forbidAtime(src)
	if err := cbtrfs.SubvolSnapshot(dst, src, true); err != nil {
		return storage.Entry{}, fmt.Errorf("snapshotting %q into image %q: %w", source, image, err)
	}
	return storage.Entry{Name: image, Kind: storage.KindImage, Path: dst}, nil
}

func (d *Driver) Destroy(ctx context.Context, name string) error {
	if err := storage.ValidateName(name); err != nil {
		return err
	}
	defer d.locks.Acquire([]string{name}, nil)()
	kind, path, err := d.lookup(name)
	if err != nil {
		return err
	}
	if kind == storage.KindImage {
		// Which volumes name the image as parent is known only from each
		// subvolume's record: the one step that reads them all.
		entries, err := d.list()
		if err != nil {
			return err
		}
		if err := storage.RefuseIfCloned(entries, name); err != nil {
			return err
		}
	}
	if err := cbtrfs.SubvolDelete(path); err != nil {
		return fmt.Errorf("destroying %s %q: %w", kind, name, err)
	}
	return nil
}

func (d *Driver) Get(ctx context.Context, name string) (storage.Entry, error) {
	if err := storage.ValidateName(name); err != nil {
		return storage.Entry{}, err
	}
	for _, kind := range []storage.Kind{storage.KindVolume, storage.KindImage} {
		e, ok, err := d.get(kind, name)
		if err != nil || ok {
			return e, err
		}
	}
	return storage.Entry{}, storage.NotFound(name)
}

// get reads the entry name of kind from its subvolume's record; false when
// there is none (a missing path, a plain directory, a subvolume being
// deleted).
func (d *Driver) get(kind storage.Kind, name string) (storage.Entry, bool, error) {
	path := d.path(kind, name)
	f, sv, err := openSubvol(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotSubvol) {
		return storage.Entry{}, false, nil
	}
	if err != nil {
		return storage.Entry{}, false, err
	}
	defer f.Close()
	if !d.linkedIn(kind, sv, name) {
		return storage.Entry{}, false, nil
	}
	e := storage.Entry{Name: name, Kind: kind, Path: path}
	if kind == storage.KindVolume && !sv.parent.isZero() {
		img, ok, err := subvolByUUID(f, sv.parent)
		if err != nil {
			return storage.Entry{}, false, fmt.Errorf("finding the image of volume %q: %w", name, err)
		}
		if ok && d.linkedIn(storage.KindImage, img, img.name) && storage.ValidateName(img.name) == nil {
			e.Origin = img.name
		}
	}
	return e, true, nil
}

// readSubvolAt reads the record of the subvolume whose root is path.
func readSubvolAt(path string) (subvol, error) {
	f, sv, err := openSubvol(path)
	if err != nil {
		return subvol{}, err
	}
	f.Close()
	return sv, nil
}

func (d *Driver) List(ctx context.Context) ([]storage.Entry, error) {
	return d.list()
}

// list reads every subvolume's record in one tree search and keeps those
// linked under volumes/ and images/. It opens nothing, so an entry
// destroyed while it runs is left out, not an error.
func (d *Driver) list() ([]storage.Entry, error) {
	infos, err := cbtrfs.SubvolList(d.root)
	if err != nil {
		return nil, fmt.Errorf("listing subvolumes of %s: %w", d.root, err)
	}
	imageByUUID := map[string]string{}
	var entries []storage.Entry
	for _, kind := range []storage.Kind{storage.KindImage, storage.KindVolume} {
		dir := d.dirs[kind]
		for _, info := range infos {
			// No UUID: its root item was not read, as when the
			// subvolume was deleted during the search.
			if info.ParentID != dir.subvol || info.DirID != dir.ino || info.UUID == "" || storage.ValidateName(info.Name) != nil {
				continue
			}
			e := storage.Entry{Name: info.Name, Kind: kind, Path: d.path(kind, info.Name)}
			if kind == storage.KindImage {
				imageByUUID[info.UUID] = e.Name
			} else {
				e.Origin = imageByUUID[info.ParentUUID]
			}
			entries = append(entries, e)
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, nil
}

func (d *Driver) ExclusiveBytes(ctx context.Context, name string) (int64, error) {
	if err := storage.ValidateName(name); err != nil {
		return 0, err
	}
	_, path, err := d.lookup(name)
	if err != nil {
		return 0, err
	}
	sv, err := readSubvolAt(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, storage.NotFound(name)
	}
	if err != nil {
		return 0, err
	}
	excl, ok, err := exclusiveBytes(d.root, sv.id)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("no quota group for %q (subvolume %d); is quota accounting on?", name, sv.id)
	}
	return excl, nil
}

// listIDsFrom is the number of names from which ExclusiveBytesOf finds
// their subvolume ids in one listing of every subvolume (about 6 ms for
// 1,000) rather than by a lookup of each (about 18 µs each). A variable
// for the test that runs both ways.
var listIDsFrom = 64

// ExclusiveBytesOf finds each named entry's subvolume id, then commits
// the running transaction once and reads all their quota groups in one
// tree search: the cost of one ExclusiveBytes, whose sync is most of it,
// plus that of finding the ids.
func (d *Driver) ExclusiveBytesOf(ctx context.Context, names []string) (map[string]int64, error) {
	if err := storage.ValidateNames(names...); err != nil {
		return nil, err
	}
	byID, err := d.subvolIDs(ctx, names)
	if err != nil {
		return nil, err
	}
	ids := make([]uint64, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	excl, err := exclusiveBytesOf(d.root, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(ids))
	for id, name := range byID {
		n, ok := excl[id]
		if !ok {
			// Destroyed since its id was read (and perhaps made anew,
			// another subvolume), or quota accounting is broken.
			if now, still, err := d.subvolOf(name); err != nil {
				return nil, err
			} else if still && now.id == id {
				return nil, fmt.Errorf("no quota group for %q (subvolume %d); is quota accounting on?", name, id)
			}
			continue
		}
		out[name] = n
	}
	return out, nil
}

// subvolIDs maps the subvolume id of each named entry that exists to its
// name: from one listing of every subvolume when there are many names
// (an entry destroyed meanwhile is not listed), else by looking each up.
func (d *Driver) subvolIDs(ctx context.Context, names []string) (map[uint64]string, error) {
	byID := make(map[uint64]string, len(names))
	if len(names) >= listIDsFrom {
		wanted := make(map[string]bool, len(names))
		for _, name := range names {
			wanted[name] = true
		}
		infos, err := cbtrfs.SubvolList(d.root)
		if err != nil {
			return nil, fmt.Errorf("listing subvolumes of %s: %w", d.root, err)
		}
		for _, info := range infos {
			if !wanted[info.Name] || info.UUID == "" {
				continue // not asked for, or deleted during the search
			}
			for _, kind := range []storage.Kind{storage.KindVolume, storage.KindImage} {
				if dir := d.dirs[kind]; info.ParentID == dir.subvol && info.DirID == dir.ino {
					byID[info.ID] = info.Name
				}
			}
		}
		return byID, nil
	}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sv, ok, err := d.subvolOf(name)
		if err != nil {
			return nil, err
		}
		if ok {
			byID[sv.id] = name
		}
	}
	return byID, nil
}

// subvolOf reads the record of the subvolume of entry name, a volume or
// an image; false when there is none (as get).
func (d *Driver) subvolOf(name string) (subvol, bool, error) {
	for _, kind := range []storage.Kind{storage.KindVolume, storage.KindImage} {
		sv, err := readSubvolAt(d.path(kind, name))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotSubvol) {
			continue
		}
		if err != nil {
			return subvol{}, false, err
		}
		if d.linkedIn(kind, sv, name) {
			return sv, true, nil
		}
	}
	return subvol{}, false, nil
}

func (d *Driver) Capacity(ctx context.Context) (storage.Capacity, error) {
	return storage.StatCapacity(d.root)
}
