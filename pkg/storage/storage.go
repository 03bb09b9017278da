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
//     Send(i, w) ──▶ a stream of i's bytes written to w; i is unchanged
//     Receive(j, r) ──▶ image j (read-only) on another driver: i's bytes
//
// Snapshot is how a running instance is backed up without stopping it: on
// a driver whose snapshots are atomic (Capabilities.AtomicSnapshot, BTRFS
// and ZFS) the copy is as consistent as the filesystem's snapshot, so
// Postgres recovers it like a crashed server. Whether the snapshot pins its
// source, so that Destroy of the source is refused with ErrHasClones until
// the snapshot is destroyed, is a driver's capability
// (Capabilities.SnapshotPinsSource): on ZFS it does, on BTRFS it does not.
//
// # Moving images between hosts
//
// Send and Receive copy an image to another filesystem, usually on another
// host, by the filesystem's own replication: `btrfs send` and `btrfs
// receive`, `zfs send` and `zfs receive`; dircopy, which has none, sends
// tar.zst (package storage/portable). The stream is a full one: it needs
// nothing on the receiving side (an incremental stream, from an image both
// sides hold, is not done yet). A received image is an image as Freeze makes
// one: read-only, cloned by Clone, snapshotted by Snapshot, sent on by Send,
// destroyed by Destroy, under the same Capabilities. It holds the bytes,
// modes, numeric owners and symbolic links of the image that was sent, and
// so sindri's volume record in it, unchanged: hosts that exchange images
// must give the postgres user the same uid.
//
// A receive is checked before the image exists. The stream must be in the
// driver's format (Capabilities.StreamFormat), told by its first bytes:
// another format is refused with ErrStreamFormat before anything is made.
// The filesystem's tool must take all of it: each format carries checksums,
// and a stream cut short fails. And what the tool made must be one whole
// read-only copy. Only then does the image appear, in one step. A receive
// that fails or is cancelled leaves nothing; what a crash in the middle of
// a btrfs or zfs one leaves is not an entry, and the next Receive of that
// name, or the next New over the same place, removes it. A crash in the
// middle of a tar.zst receive leaves a volume, which the next Receive of
// that name destroys (see portable.StageVolume).
//
// Drivers of different formats exchange images as the tar.zst stream that
// sindri writes for backups, through package storage/portable.
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
	"io"
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
	// StreamFormat names the stream Send writes and Receive reads:
	// StreamBtrfs, StreamZFS, or StreamTarZstd for a driver without a
	// stream of its own (dircopy), whose Send and Receive are those of
	// package storage/portable. Two drivers exchange images by Send and
	// Receive only when their formats are equal; otherwise as tar.zst
	// through package storage/portable.
	StreamFormat string
}

// The formats of image streams.
const (
	// StreamBtrfs is what `btrfs send` writes: the image's subvolume.
	StreamBtrfs = "btrfs-send"
	// StreamZFS is what `zfs send` writes: the image's @frozen snapshot.
	StreamZFS = "zfs-send"
	// StreamTarZstd is a tar archive compressed with zstd, as sindri's
	// backups are: what package storage/portable writes, for any driver.
	StreamTarZstd = "tar.zst"
)

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
	// ExclusiveBytesOf is ExclusiveBytes of each named entry at once, by
	// name, for callers that sum or show many (every instance of a
	// host): its cost is one filesystem-wide step (one sync and one read
	// of the quota tree on BTRFS, one command on ZFS) rather than one per
	// name. A name with no entry, or whose entry is destroyed while it
	// runs, is left out of the map, never an error; an invalid name is
	// ErrInvalidName.
	ExclusiveBytesOf(ctx context.Context, names []string) (map[string]int64, error)
	// Capacity reports the filesystem's total and free bytes.
	Capacity(ctx context.Context) (Capacity, error)
	// Send writes a full stream of the image, in the driver's
	// StreamFormat, to w, until the image is all sent, w fails or ctx
	// ends (a stream cut short is refused by any Receive). The image
	// stays usable meanwhile; Destroy of it waits until Send returns. A
	// volume is ErrWrongKind: freeze it first.
	Send(ctx context.Context, image string, w io.Writer) error
	// Receive reads from r a stream that Send of a driver of the same
	// StreamFormat wrote, and makes of it the read-only image named
	// image, with the sent image's content. The name need not be the
	// sent image's. A name already taken is ErrExists and a stream of
	// another format ErrStreamFormat, both before the stream is read
	// past its first bytes; a stream cut short or corrupt, an error of
	// r (wrapped) or the end of ctx leave no image and nothing else
	// (see "Moving images between hosts"); so does a filesystem that
	// runs out of space, an error that NoSpace tells, and a filesystem's
	// stream that holds device nodes, FIFOs, sockets or set-ID files,
	// ErrUnsafeContent (CheckReceivedTree; tar.zst never makes them). r
	// is read to its end on success, not always on failure.
	Receive(ctx context.Context, image string, r io.Reader) (Entry, error)
}

// Classified errors; match them with errors.Is.
var (
	ErrNotFound    = errors.New("no such volume or image")
	ErrExists      = errors.New("a volume or image of that name already exists")
	ErrHasClones   = errors.New("the image has clones")
	ErrBusy        = errors.New("the volume or image is in use")
	ErrInvalidName = errors.New("invalid volume or image name")
	ErrWrongKind   = errors.New("wrong kind of entry for this operation")
	// ErrStreamFormat is a stream to receive that is not in the
	// receiver's format (or in none that sindri knows).
	ErrStreamFormat = errors.New("the stream is not in the format this driver receives")
	// ErrUnsafeContent is a received stream whose files no data
	// directory holds (see CheckReceivedTree).
	ErrUnsafeContent = errors.New("the stream holds files an image may not")
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
