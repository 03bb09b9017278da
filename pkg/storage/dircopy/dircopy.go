//go:build linux

// Package dircopy stores sindri's volumes and images as plain directories
// on any filesystem, by copying, as containerd's "native" snapshotter
// does. It is there so that the layers above storage can be tested on a
// machine without BTRFS or ZFS, and it passes the same conformance suite;
// it is not offered in sindrid's configuration, because it lacks what
// serving relies on (see Capabilities): every clone is a full copy, and a
// snapshot of a volume being written is not atomic.
//
// Under the root directory:
//
//	volumes/<name>   a volume's files (Entry.Path)
//	images/<name>    an image's files, made read-only
//	meta/<name>      the entry's record: the directory it belongs to, a
//	                 clone's image, and the modes Freeze took write bits from
//	work/<step>/     one call's copy being made or entry being removed; the
//	                 call holds the directory's flock while it runs
//
// Each call builds in its own work directory, writes the record, writes
// the filesystem to disk (syncfs) and then renames its directory into
// place, which is the call's one atomic act; Destroy renames the entry
// into its work directory first and removes it there. A record belongs to
// the directory whose identity (inode and birth time) it names, so a
// record left by a call that died before its rename, or after a Destroy's,
// is never taken for another entry's. A new driver removes the work
// directories that no call holds, and seals an image whose call died
// between its rename and the sealing of its root.
//
// # What an image promises
//
// Where it can (root, or CAP_LINUX_IMMUTABLE, on a filesystem that keeps
// the flag: ext4, XFS, BTRFS, tmpfs since Linux 6.0; New tries), Freeze
// sets the immutable flag on every file and directory of the image: every
// write, chmod, remove or rename in it fails with EPERM, root's too, and
// the image keeps the volume's modes, so a backup's archive of it restores
// as the volume was. The driver then declares ImmutableImages. Symlinks
// cannot carry the flag and FIFOs and device nodes are not opened to set
// it, but their directories keep them from being replaced.
//
// Otherwise (a driver that is not root) Freeze takes the write bits from
// every file and directory, recording the modes it changed so that a clone
// gets them back exactly (were the records lost, a clone gets its owner's
// write bit back everywhere, which is exact for a Postgres data
// directory). A process without CAP_DAC_OVERRIDE is then refused every
// create, write, remove and mkdir in the image with EACCES; root is not,
// an owner can chmod a file back, and whoever reads the image's modes (a
// backup's archive) sees no write bit. The conformance suite checks each
// case as the driver declares it.
//
// # What a clone costs
//
// Clone and Snapshot copy every file: the time and disk they take grow with
// the image. Holes in sparse files stay holes, and where the filesystem can
// share extents (XFS, BTRFS used as a plain directory) the kernel's
// copy_file_range shares them. Owners, modes, times, symlinks, hard links
// within the tree, FIFOs and device nodes are kept; extended attributes,
// ACLs and file flags are not. ExclusiveBytes counts every block of the
// entry's files, the whole copy, as its own. A Snapshot of a volume that
// is being written copies its files one after another, so it may hold them
// at different moments: a backup of a running Postgres taken so may not
// recover.
package dircopy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/keyedmutex"
	"github.com/sindri-db/sindri/pkg/storage"
)

const (
	volumesDir = "volumes"
	imagesDir  = "images"
	metaDir    = "meta"
	workDir    = "work"
)

// Driver implements storage.Driver on a directory of any filesystem.
type Driver struct {
	root  string
	locks keyedmutex.Map[string]
	// immutable: images are made read-only by the immutable flag, which
	// binds root too; otherwise by taking their write bits.
	immutable bool
}

var _ storage.Driver = (*Driver)(nil)

// New opens the driver on root, making root and its directories when they
// are missing, and removes what steps that died left in work/.
func New(root string) (*Driver, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	for _, dir := range []string{volumesDir, imagesDir, metaDir, workDir} {
		// 0711: the Postgres user must reach into its own data directory.
		if err := os.MkdirAll(filepath.Join(root, dir), 0o711); err != nil {
			return nil, err
		}
	}
	d := &Driver{root: root}
	if err := d.removeAbandonedWork(); err != nil {
		return nil, err
	}
	st, err := d.begin("probe")
	if err != nil {
		return nil, err
	}
	d.immutable = canMarkImmutable(st.dir)
	if err := st.end(); err != nil {
		return nil, err
	}
	if err := d.sealImages(); err != nil {
		return nil, err
	}
	return d, nil
}

// seal makes an image's root directory read-only, the last of its tree:
// moving a directory to another parent needs it writable.
func (d *Driver) seal(image string) error {
	if d.immutable {
		return setImmutable(image, true)
	}
	var st unix.Stat_t
	if err := unix.Lstat(image, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: image, Err: err}
	}
	if st.Mode&0o222 == 0 {
		return nil
	}
	if err := unix.Chmod(image, st.Mode&0o7777&^0o222); err != nil {
		return &fs.PathError{Op: "chmod", Path: image, Err: err}
	}
	return nil
}

// unseal makes an image's root directory writable again, for Destroy to
// move it.
func (d *Driver) unseal(image string) error {
	if d.immutable {
		return setImmutable(image, false)
	}
	var st unix.Stat_t
	if err := unix.Lstat(image, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: image, Err: err}
	}
	if err := unix.Chmod(image, st.Mode&0o7777|unix.S_IWUSR); err != nil {
		return &fs.PathError{Op: "chmod", Path: image, Err: err}
	}
	return nil
}

// makeReadOnly makes everything under root but root itself read-only, and
// records in rec the modes it changes.
func (d *Driver) makeReadOnly(ctx context.Context, st *step, root, image string, rec record) error {
	if !d.immutable {
		if err := recordModes(ctx, root, rec.modes); err != nil {
			return err
		}
	}
	if err := d.writeRecord(st, image, rec); err != nil {
		return err
	}
	if d.immutable {
		return markImmutable(ctx, root)
	}
	return takeWriteBits(ctx, root)
}

// sealImages seals the images whose Freeze, Snapshot or Destroy died
// between its rename and its chmod of the image's root.
func (d *Driver) sealImages() error {
	des, err := os.ReadDir(d.kindDir(storage.KindImage))
	if err != nil {
		return err
	}
	for _, de := range des {
		if err := d.seal(d.path(storage.KindImage, de.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// step is one call's own directory under work/, where it builds what it
// then renames into place, keeps its record's next version and puts what
// it destroys. The call holds the directory's flock while it runs, which
// tells its directory from one that a call that died left behind.
type step struct {
	dir  string
	lock *os.File
}

func (d *Driver) begin(what string) (*step, error) {
	for {
		dir, err := os.MkdirTemp(filepath.Join(d.root, workDir), what+"-")
		if err != nil {
			return nil, err
		}
		lock, err := lockDir(dir, true)
		if errors.Is(err, fs.ErrNotExist) {
			continue // taken for abandoned by a new driver before the lock
		}
		if err != nil {
			return nil, err
		}
		if _, err := os.Lstat(dir); err == nil {
			return &step{dir: dir, lock: lock}, nil
		}
		lock.Close() // removed by a new driver, which held the lock first
	}
}

// path is a name in the step's directory.
func (s *step) path(name string) string { return filepath.Join(s.dir, name) }

// end removes the step's directory and what is left in it.
func (s *step) end() error {
	defer s.lock.Close()
	return removeTree(s.dir)
}

// sync writes everything on the driver's filesystem to disk, so that what
// the step's rename commits is whole after a power loss too.
func (s *step) sync() error {
	if err := unix.Syncfs(int(s.lock.Fd())); err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	return nil
}

// lockDir opens dir and takes its flock, waiting for it or not; it
// returns nil, nil when wait is false and another holds it.
func lockDir(dir string, wait bool) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return f, nil
}

// removeAbandonedWork removes the step directories that no call holds:
// copies and removals cut short when their process died.
func (d *Driver) removeAbandonedWork() error {
	dirs, err := os.ReadDir(filepath.Join(d.root, workDir))
	if err != nil {
		return err
	}
	for _, de := range dirs {
		dir := filepath.Join(d.root, workDir, de.Name())
		f, err := lockDir(dir, false)
		if errors.Is(err, fs.ErrNotExist) || f == nil && err == nil {
			continue // gone meanwhile, or a live call's
		}
		if err != nil {
			return err
		}
		err = removeTree(dir)
		f.Close()
		if err != nil {
			return fmt.Errorf("removing abandoned work %s: %w", dir, err)
		}
	}
	return nil
}

func (d *Driver) Name() string { return "dircopy" }

// Capabilities: everything is a copy, so a snapshot pins nothing, clones
// are not thin and a snapshot is taken file by file. Images are immutable,
// to root too, where the driver can set the immutable flag. Its images
// move as tar.zst.
func (d *Driver) Capabilities() storage.Capabilities {
	return storage.Capabilities{ImmutableImages: d.immutable, StreamFormat: storage.StreamTarZstd}
}

func (d *Driver) kindDir(kind storage.Kind) string {
	if kind == storage.KindImage {
		return filepath.Join(d.root, imagesDir)
	}
	return filepath.Join(d.root, volumesDir)
}

func (d *Driver) path(kind storage.Kind, name string) string {
	return filepath.Join(d.kindDir(kind), name)
}

// lookup tells which kind of entry name is, or ErrNotFound.
func (d *Driver) lookup(name string) (storage.Kind, string, error) {
	for _, kind := range []storage.Kind{storage.KindVolume, storage.KindImage} {
		path := d.path(kind, name)
		if _, err := os.Lstat(path); err == nil {
			return kind, path, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
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

// place renames the directory built in work to the entry's path: the
// step's commit. It never replaces an entry.
func place(work, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, work, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A filesystem without RENAME_NOREPLACE: the name's lock and the
		// check before the copy keep the name free.
		err = os.Rename(work, path)
	}
	if err != nil {
		return fmt.Errorf("moving %s to %s: %w", work, path, err)
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
	st, err := d.begin("create")
	if err != nil {
		return storage.Entry{}, err
	}
	defer st.end()
	work := st.path("tree")
	if err := os.Mkdir(work, 0o755); err != nil {
		return storage.Entry{}, err
	}
	if err := os.Chmod(work, 0o755); err != nil { // whatever the umask
		return storage.Entry{}, err
	}
	// A volume made by Create has no record. One left by a gone entry of
	// the same name names another directory, so it is only clutter.
	if err := d.removeRecord(volume); err != nil {
		return storage.Entry{}, err
	}
	path := d.path(storage.KindVolume, volume)
	if err := place(work, path); err != nil {
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
	if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	}
	st, err := d.begin("freeze")
	if err != nil {
		return storage.Entry{}, err
	}
	defer st.end()
	id, err := identify(src)
	if err != nil {
		return storage.Entry{}, err
	}
	// A record of this very directory is a freeze that died after taking
	// some write bits: its modes are the volume's as they were.
	rec, err := d.readRecord(image)
	if err != nil {
		return storage.Entry{}, err
	}
	if rec.id != id {
		rec = record{id: id, modes: map[string]uint32{}}
	}
	if err := d.makeReadOnly(ctx, st, src, image, rec); err != nil {
		return storage.Entry{}, fmt.Errorf("freezing volume %q: %w", volume, err)
	}
	if err := st.sync(); err != nil {
		return storage.Entry{}, err
	}
	dst := d.path(storage.KindImage, image)
	if err := place(src, dst); err != nil {
		return storage.Entry{}, fmt.Errorf("freezing volume %q into image %q: %w", volume, image, err)
	}
	if err := d.seal(dst); err != nil {
		return storage.Entry{}, fmt.Errorf("freezing volume %q into image %q: %w", volume, image, err)
	}
	if err := d.removeRecord(volume); err != nil {
		return storage.Entry{}, err
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
	st, err := d.begin("clone")
	if err != nil {
		return storage.Entry{}, err
	}
	defer st.end()
	work := st.path("tree")
	err = d.copyOf(ctx, storage.KindImage, image, src, work)
	var id identity
	if err == nil {
		id, err = identify(work)
	}
	if err == nil {
		err = st.sync()
	}
	if err == nil {
		err = d.writeRecord(st, volume, record{id: id, origin: image})
	}
	dst := d.path(storage.KindVolume, volume)
	if err == nil {
		err = place(work, dst)
	}
	if err != nil {
		return storage.Entry{}, fmt.Errorf("cloning image %q into volume %q: %w", image, volume, err)
	}
	return storage.Entry{Name: volume, Kind: storage.KindVolume, Origin: image, Path: dst}, nil
}

func (d *Driver) Snapshot(ctx context.Context, source, image string) (storage.Entry, error) {
	if err := storage.ValidateNames(source, image); err != nil {
		return storage.Entry{}, err
	}
	defer d.locks.Acquire([]string{image}, []string{source})()
	kind, src, err := d.lookup(source)
	if err != nil {
		return storage.Entry{}, err
	}
	if err := d.requireFree(image); err != nil {
		return storage.Entry{}, err
	}
	st, err := d.begin("snapshot")
	if err != nil {
		return storage.Entry{}, err
	}
	defer st.end()
	work := st.path("tree")
	err = d.copyOf(ctx, kind, source, src, work)
	rec := record{modes: map[string]uint32{}}
	if err == nil {
		rec.id, err = identify(work)
	}
	if err == nil {
		err = d.makeReadOnly(ctx, st, work, image, rec)
	}
	if err == nil {
		err = st.sync()
	}
	dst := d.path(storage.KindImage, image)
	if err == nil {
		err = place(work, dst)
	}
	if err == nil {
		err = d.seal(dst)
	}
	if err != nil {
		return storage.Entry{}, fmt.Errorf("snapshotting %q into image %q: %w", source, image, err)
	}
	return storage.Entry{Name: image, Kind: storage.KindImage, Path: dst}, nil
}

// copyOf copies the entry at src into the new directory dst, giving an
// image's files back the write bits Freeze took.
func (d *Driver) copyOf(ctx context.Context, kind storage.Kind, name, src, dst string) error {
	modes := map[string]uint32{}
	restore := false
	if kind == storage.KindImage {
		id, err := identify(src)
		if err != nil {
			return err
		}
		rec, err := d.readRecord(name)
		if err != nil {
			return err
		}
		// Without its record (lost, or the tree moved to another
		// filesystem, which changes every identity) an image made read-only
		// by its modes gets its owner's write bit back everywhere: a
		// Postgres data directory (0700 and 0600) is whole again.
		modes, restore = rec.modes, rec.id != id && !isImmutable(src)
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	modeOf := func(rel string, mode uint32) uint32 {
		if m, ok := modes[rel]; ok {
			return m
		}
		if restore {
			return mode | unix.S_IWUSR
		}
		return mode
	}
	return copyTree(ctx, src, dst, modeOf)
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
		entries, err := d.List(ctx)
		if err != nil {
			return err
		}
		if err := storage.RefuseIfCloned(entries, name); err != nil {
			return err
		}
	}
	st, err := d.begin("destroy")
	if err != nil {
		return err
	}
	defer st.end()
	if kind == storage.KindImage {
		// Moving a directory to another parent writes into it (its "..").
		if err := d.unseal(path); err != nil {
			return fmt.Errorf("destroying image %q: %w", name, err)
		}
	}
	// Moved whole out of sight first: a reader finds the entry as it was or
	// nothing, never half of it.
	if err := os.Rename(path, st.path("entry")); err != nil {
		return fmt.Errorf("destroying %s %q: %w", kind, name, err)
	}
	if err := d.removeRecord(name); err != nil {
		return err
	}
	// What a failure here leaves in the step's directory goes when the
	// next driver starts.
	if err := removeTree(st.path("entry")); err != nil {
		return fmt.Errorf("removing destroyed %s %q: %w", kind, name, err)
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

// get reads the entry name of kind; false when there is none, or when it
// was destroyed while get ran.
func (d *Driver) get(kind storage.Kind, name string) (storage.Entry, bool, error) {
	path := d.path(kind, name)
	id, err := identify(path)
	if errors.Is(err, fs.ErrNotExist) {
		return storage.Entry{}, false, nil
	}
	if err != nil {
		return storage.Entry{}, false, err
	}
	e := storage.Entry{Name: name, Kind: kind, Path: path}
	if kind == storage.KindImage {
		return e, true, nil
	}
	rec, err := d.readRecord(name)
	if err != nil {
		return storage.Entry{}, false, err
	}
	if rec.id == id {
		e.Origin = rec.origin
		return e, true, nil
	}
	// No record of this directory: a volume made by Create, if it is still
	// there. A clone's record goes only after Destroy moved it away.
	if now, err := identify(path); err != nil || now != id {
		return storage.Entry{}, false, nil
	}
	return e, true, nil
}

// List reads the volumes' and images' directories and each volume's
// record; an entry destroyed meanwhile is left out.
func (d *Driver) List(ctx context.Context) ([]storage.Entry, error) {
	var entries []storage.Entry
	for _, kind := range []storage.Kind{storage.KindVolume, storage.KindImage} {
		des, err := os.ReadDir(d.kindDir(kind))
		if err != nil {
			return nil, err
		}
		for _, de := range des {
			if storage.ValidateName(de.Name()) != nil {
				continue
			}
			e, ok, err := d.get(kind, de.Name())
			if err != nil {
				return nil, err
			}
			if ok {
				entries = append(entries, e)
			}
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, nil
}

// ExclusiveBytes is the disk the entry's files take: a copy shares nothing
// that the driver knows of.
func (d *Driver) ExclusiveBytes(ctx context.Context, name string) (int64, error) {
	if err := storage.ValidateName(name); err != nil {
		return 0, err
	}
	_, path, err := d.lookup(name)
	if err != nil {
		return 0, err
	}
	n, err := diskUsage(ctx, path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, statErr := os.Lstat(path); errors.Is(statErr, fs.ErrNotExist) {
			return 0, storage.NotFound(name)
		}
	}
	return n, err
}

func (d *Driver) Capacity(ctx context.Context) (storage.Capacity, error) {
	return storage.StatCapacity(d.root)
}

// ExclusiveBytesOf walks each named entry in turn: a copy's usage has no
// figure the filesystem keeps, so there is nothing to share between names.
func (d *Driver) ExclusiveBytesOf(ctx context.Context, names []string) (map[string]int64, error) {
	if err := storage.ValidateNames(names...); err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(names))
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := d.ExclusiveBytes(ctx, name)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[name] = n
	}
	return out, nil
}
