//go:build linux

package btrfs

/*
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>

// subvol_info fills out with the record of the subvolume holding the file
// open at fd (Linux 4.18).
static int subvol_info(int fd, struct btrfs_ioctl_get_subvol_info_args *out) {
	memset(out, 0, sizeof(*out));
	return ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, out);
}

// search_one runs a tree search for the one key (objectid, type, offset
// from min_offset to max_offset) and copies the first item's header and up
// to cap bytes of its data. It returns 1 when an item was found, 0 when
// none, -1 with errno on failure.
static int search_one(int fd, unsigned long long tree, unsigned long long objectid, unsigned type,
		unsigned long long min_offset, unsigned long long max_offset,
		struct btrfs_ioctl_search_header *sh, void *data, size_t cap) {
	struct btrfs_ioctl_search_args args;
	memset(&args, 0, sizeof(args));
	args.key.tree_id = tree;
	args.key.min_objectid = objectid;
	args.key.max_objectid = objectid;
	args.key.min_type = type;
	args.key.max_type = type;
	args.key.min_offset = min_offset;
	args.key.max_offset = max_offset;
	args.key.max_transid = (unsigned long long)-1;
	args.key.nr_items = 1;
	if (ioctl(fd, BTRFS_IOC_TREE_SEARCH, &args) < 0)
		return -1;
	if (args.key.nr_items == 0)
		return 0;
	memcpy(sh, args.buf, sizeof(*sh));
	size_t n = sh->len < cap ? sh->len : cap;
	memcpy(data, args.buf + sizeof(*sh), n);
	return 1;
}

// uuid_subvol sets id to the subvolume whose UUID is uuid, from the UUID
// tree. It returns 1, 0 when no subvolume has that UUID, or -1 with errno.
static int uuid_subvol(int fd, const unsigned char *uuid, unsigned long long *id) {
	unsigned long long hi, lo;
	memcpy(&hi, uuid, 8);
	memcpy(&lo, uuid + 8, 8);
	struct btrfs_ioctl_search_header sh;
	unsigned long long first;
	int r = search_one(fd, BTRFS_UUID_TREE_OBJECTID, le64toh(hi), BTRFS_UUID_KEY_SUBVOL,
		le64toh(lo), le64toh(lo), &sh, &first, sizeof(first));
	if (r == 1 && sh.len < sizeof(first))
		return 0;
	if (r == 1)
		*id = le64toh(first);
	return r;
}

// root_backref tells where subvolume id is linked: the subvolume and the
// directory holding it, and its name there (name_cap bytes at most, with
// the terminating NUL). It returns 1, 0 when the subvolume is linked
// nowhere (it does not exist or is being deleted), or -1 with errno.
static int root_backref(int fd, unsigned long long id, unsigned long long *parent,
		unsigned long long *dirid, char *name, size_t name_cap) {
	struct btrfs_ioctl_search_header sh;
	unsigned char data[sizeof(struct btrfs_root_ref) + BTRFS_VOL_NAME_MAX];
	int r = search_one(fd, BTRFS_ROOT_TREE_OBJECTID, id, BTRFS_ROOT_BACKREF_KEY,
		0, (unsigned long long)-1, &sh, data, sizeof(data));
	if (r != 1)
		return r;
	if (sh.len < sizeof(struct btrfs_root_ref))
		return 0;
	struct btrfs_root_ref ref;
	memcpy(&ref, data, sizeof(ref));
	size_t len = le16toh(ref.name_len);
	if (len > sh.len - sizeof(ref))
		len = sh.len - sizeof(ref);
	if (len > name_cap - 1)
		len = name_cap - 1;
	memcpy(name, data + sizeof(ref), len);
	name[len] = 0;
	*parent = sh.offset;
	*dirid = le64toh(ref.dirid);
	return 1;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// subvolRootIno is the inode number of every subvolume's root directory
// (BTRFS_FIRST_FREE_OBJECTID).
const subvolRootIno = 256

// errNotSubvol says a directory is not the root of a subvolume.
var errNotSubvol = errors.New("not a btrfs subvolume")

type uuid [16]byte

func (u uuid) isZero() bool { return u == uuid{} }

// subvol is a subvolume's record, as the kernel keeps it.
type subvol struct {
	id       uint64
	parentID uint64 // the subvolume holding the directory it is linked in
	dirID    uint64 // that directory's inode number
	name     string // its name in that directory
	uuid     uuid
	parent   uuid // the UUID of the subvolume it is a snapshot of
	// received is the UUID of the subvolume it was received from, set
	// when `btrfs receive` has written all of it; zero otherwise.
	received uuid
	readonly bool
}

// openSubvol opens the directory at path, which must be the root of a
// subvolume, and reads the subvolume's record: one open, one fstat and one
// ioctl, whatever the number of subvolumes. It fails with an error
// matching os.ErrNotExist when nothing is at path or the subvolume is being
// deleted, and with errNotSubvol when path is not a subvolume's root
// directory. The caller closes the file.
func openSubvol(path string) (*os.File, subvol, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return nil, subvol{}, fmt.Errorf("%s: %w", path, errNotSubvol)
	}
	if err != nil {
		return nil, subvol{}, err
	}
	sv, err := readSubvol(f)
	if err != nil {
		f.Close()
		return nil, subvol{}, fmt.Errorf("%s: %w", path, err)
	}
	return f, sv, nil
}

func readSubvol(f *os.File) (subvol, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return subvol{}, err
	}
	if st.Ino != subvolRootIno {
		return subvol{}, errNotSubvol
	}
	var args C.struct_btrfs_ioctl_get_subvol_info_args
	if r, errno := C.subvol_info(C.int(f.Fd()), &args); r < 0 {
		if errno == unix.ENOTTY || errno == unix.EINVAL {
			return subvol{}, fmt.Errorf("reading the subvolume's record (needs Linux 4.18): %w", errno)
		}
		// ENOENT: deleted since the open.
		return subvol{}, fmt.Errorf("reading the subvolume's record: %w", errno)
	}
	sv := subvol{
		id:       uint64(args.treeid),
		parentID: uint64(args.parent_id),
		dirID:    uint64(args.dirid),
		name:     C.GoString(&args.name[0]),
	}
	copy(sv.uuid[:], C.GoBytes(unsafe.Pointer(&args.uuid[0]), C.BTRFS_UUID_SIZE))
	copy(sv.parent[:], C.GoBytes(unsafe.Pointer(&args.parent_uuid[0]), C.BTRFS_UUID_SIZE))
	copy(sv.received[:], C.GoBytes(unsafe.Pointer(&args.received_uuid[0]), C.BTRFS_UUID_SIZE))
	sv.readonly = uint64(args.flags)&C.BTRFS_ROOT_SUBVOL_RDONLY != 0
	if sv.parentID == 0 {
		// Zero for a deleted subvolume (and the top level, never an entry).
		return subvol{}, fmt.Errorf("reading the subvolume's record: %w", unix.ENOENT)
	}
	return sv, nil
}

// subvolByUUID returns the subvolume whose UUID is u, found through the
// UUID tree of the filesystem that f is on; false when there is none, or
// when it is being deleted. Two tree searches, whatever the number of
// subvolumes; they need CAP_SYS_ADMIN.
func subvolByUUID(f *os.File, u uuid) (subvol, bool, error) {
	var id C.ulonglong
	r, errno := C.uuid_subvol(C.int(f.Fd()), (*C.uchar)(unsafe.Pointer(&u[0])), &id)
	if r < 0 {
		return subvol{}, false, fmt.Errorf("searching the btrfs UUID tree: %w", errno)
	}
	if r == 0 {
		return subvol{}, false, nil
	}
	var parent, dirid C.ulonglong
	var name [C.BTRFS_VOL_NAME_MAX + 1]C.char
	r, errno = C.root_backref(C.int(f.Fd()), id, &parent, &dirid, &name[0], C.size_t(len(name)))
	if r < 0 {
		return subvol{}, false, fmt.Errorf("searching the btrfs root tree: %w", errno)
	}
	if r == 0 {
		return subvol{}, false, nil
	}
	return subvol{
		id:       uint64(id),
		parentID: uint64(parent),
		dirID:    uint64(dirid),
		name:     C.GoString(&name[0]),
		uuid:     u,
	}, true, nil
}
