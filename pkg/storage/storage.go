// Package storage keeps sindri's data directories: writable volumes and the
// read-only images they are frozen into, on a copy-on-write filesystem
// (BTRFS, ZFS) or, for trying sindri and for tests where neither is at
// hand, in plain directories by copying (dircopy).
//
// # Lifecycle
//
// A Driver manages named entries of two kinds:
//
//   - A volume is a writable directory. Create makes an empty one, which is
//     where an upload lands; Clone makes one that starts with an image's
//     bytes, which is where an instance's Postgres runs. On a driver with
//     thin clones (Capabilities.ThinClones) a clone costs disk only for the
//     blocks written into it after the clone; otherwise it is a copy.
//
//   - An image is a read-only snapshot. Freeze turns a volume into an image
//     of a new name: the volume's content becomes the image and the volume is
//     gone. On a driver with immutable images (Capabilities.ImmutableImages)
//     nothing can write into an image: a write fails (EROFS on BTRFS and
//     ZFS), root's too; otherwise an image is read-only by its mode bits
//     alone.
//
//     Create(v)  ──▶ volume v (empty, writable)
//     Freeze(v, i) ──▶ image i (read-only); volume v no longer exists
//     Clone(i, c) ──▶ volume c (writable, starts with i's bytes)
//     Destroy(c) ──▶ c is gone; i and its other clones are untouched
//     Destroy(i) ──▶ refused with ErrHasClones while any clone of i exists
//     Snapshot(c, s) ──▶ image s (read-only): c's bytes at this instant
//
// Snapshot is how a running instance is backed up without stopping it: on
// a driver whose snapshots are atomic (Capabilities.AtomicSnapshot, BTRFS
// and ZFS) the copy is as consistent as the filesystem's snapshot, so
// Postgres recovers it like a crashed server. Whether the snapshot pins its
// source, so that Destroy of the source is refused with ErrHasClones until
// the snapshot is destroyed, is a driver's capability
// (Capabilities.SnapshotPinsSource): on ZFS it does, on BTRFS it does not.
//
// Names are one path element made of lower-case letters, digits, '-', '_'
// and '.', starting with a letter or digit, at most 64 bytes, with no '..'. Volumes and images share one namespace. Callers derive names from ids
// ("image-3", "instance-7"); a name that breaks the rule is ErrInvalidName.
//
// Every step is atomic on disk as far as the filesystem allows, and the state
// lives on the filesystem alone: a new Driver over the same place (as after
// a restart) lists exactly what exists. A Driver is safe for concurrent use.
package storage

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Kind tells a writable volume from a read-only image.
type Kind string

const (
	KindVolume Kind = "volume"
	KindImage  Kind = "image"
)

// Entry is a volume or an image.
type Entry struct {
	Name string
	Kind Kind
	// Origin is the image a volume was cloned from; empty for an image and
	// for a volume made by Create.
	Origin string
	// Path is the directory holding the entry's files.
	Path string
}

// Capacity is the size of the filesystem the driver stores into.
type Capacity struct {
	TotalBytes int64
	FreeBytes  int64
}

// Capabilities are what a driver's filesystem does differently that its
// callers must allow for, declared by the driver rather than guessed from
// its name (as containerd's snapshotters declare theirs). The conformance
// suite holds each driver to what it declares.
type Capabilities struct {
	// SnapshotPinsSource: while an image made by Snapshot exists, Destroy
	// of its source (a volume or an image) is refused with ErrHasClones;
	// once the snapshot is destroyed, the source can be. Without it the
	// source can be destroyed at any time and the snapshot stays whole.
	SnapshotPinsSource bool
	// ThinClones: Clone and Snapshot share the source's blocks, so they
	// take about the same time and disk whatever the source's size, and a
	// clone's ExclusiveBytes are only what was written into it since.
	// Without it they are copies: they take time and disk in proportion to
	// the source, and a clone's ExclusiveBytes are all of its bytes.
	ThinClones bool
	// ImmutableImages: the filesystem itself refuses every write into an
	// image, root's included: with EROFS where the image is a read-only
	// subvolume or dataset, with EPERM where each of its files and
	// directories carries the immutable flag. Either way the image shows
	// the volume's modes. Without it an image is read-only by its mode
	// bits alone: nothing in it has a write bit (so whoever reads its
	// modes, a backup's archive, sees none), a process without
	// CAP_DAC_OVERRIDE is refused with EACCES, but root can still write
	// into it and its owner can chmod it back.
	ImmutableImages bool
	// AtomicSnapshot: Snapshot takes every byte of the source at one
	// instant, so that a snapshot of a running Postgres's volume recovers
	// like a crashed server. Without it Snapshot copies file by file, and
	// only a snapshot of a volume that nothing writes meanwhile is
	// consistent.
	AtomicSnapshot bool
}

// Driver is a store of volumes and images. See the package documentation
// for the lifecycle.
type Driver interface {
	// Name is the driver's name: "btrfs", "zfs" or "dircopy". It is for
	// people (logs, /status); callers branch on Capabilities instead.
	Name() string
	// Capabilities declares how the driver's filesystem behaves where
	// drivers differ.
	Capabilities() Capabilities
	// Create makes an empty writable volume.
	Create(ctx context.Context, volume string) (Entry, error)
	// Freeze turns a volume into a read-only image named image. The volume
	// is consumed.
	Freeze(ctx context.Context, volume, image string) (Entry, error)
	// Clone makes a writable volume that starts with the image's bytes.
	Clone(ctx context.Context, image, volume string) (Entry, error)
	// Snapshot makes a read-only image of a volume's or an image's bytes
	// as they are now, without consuming or pausing the source.
	Snapshot(ctx context.Context, source, image string) (Entry, error)
	// Destroy removes a volume, or an image that has no clones.
	Destroy(ctx context.Context, name string) error
	// Get returns one entry. It costs the same however many entries
	// exist, and a name destroyed while it runs is ErrNotFound or the
	// entry as it was, never another error.
	Get(ctx context.Context, name string) (Entry, error)
	// List returns every volume and image, sorted by name. An entry made
	// or destroyed while it runs may be listed or not, but never makes it
	// fail.
	List(ctx context.Context) ([]Entry, error)
	// ExclusiveBytes is the disk an entry holds that nothing else shares:
	// for a clone, what was written into it since the clone. On ZFS it
	// counts writes once their transaction group has committed (seconds).
	ExclusiveBytes(ctx context.Context, name string) (int64, error)
	// Capacity reports the filesystem's total and free bytes.
	Capacity(ctx context.Context) (Capacity, error)
}

// Classified errors; match them with errors.Is.
var (
	ErrNotFound    = errors.New("no such volume or image")
	ErrExists      = errors.New("a volume or image of that name already exists")
	ErrHasClones   = errors.New("the image has clones")
	ErrBusy        = errors.New("the volume or image is in use")
	ErrInvalidName = errors.New("invalid volume or image name")
	ErrWrongKind   = errors.New("wrong kind of entry for this operation")
)

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// ValidateName returns ErrInvalidName, wrapped with the reason, for a name
// that is not a single safe path element.
func ValidateName(name string) error {
	if !namePattern.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w: %q (use 1-64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit, no '..')", ErrInvalidName, name)
	}
	return nil
}

// entryError wraps a classified error with the entry's name.
func entryError(kind error, name string) error {
	return fmt.Errorf("%w: %q", kind, name)
}

// NotFound, Exists, HasClones and WrongKind build classified errors naming
// the entry; drivers use them so that messages read alike.
func NotFound(name string) error  { return entryError(ErrNotFound, name) }
func Exists(name string) error    { return entryError(ErrExists, name) }
func HasClones(name string) error { return entryError(ErrHasClones, name) }
func WrongKind(name string, want Kind) error {
	return fmt.Errorf("%w: %q is not a %s", ErrWrongKind, name, want)
}

// ValidateNames is ValidateName for each name.
func ValidateNames(names ...string) error {
	for _, n := range names {
		if err := ValidateName(n); err != nil {
			return err
		}
	}
	return nil
}

// RefuseIfCloned returns ErrHasClones when an entry was cloned from image.
func RefuseIfCloned(entries []Entry, image string) error {
	for _, e := range entries {
		if e.Origin == image {
			return fmt.Errorf("%w (%q is one)", HasClones(image), e.Name)
		}
	}
	return nil
}
