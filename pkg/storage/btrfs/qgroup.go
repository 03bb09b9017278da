//go:build linux

package btrfs

/*
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>

// qgroup_exclusive sets excl to the exclusive bytes of the level-0 qgroup
// of subvolume id on the filesystem open at fd. It returns 1, 0 when there
// is no such qgroup, or -1 with errno (ENOENT: quota is off).
static int qgroup_exclusive(int fd, unsigned long long id, unsigned long long *excl) {
	struct btrfs_ioctl_search_args args;
	memset(&args, 0, sizeof(args));
	args.key.tree_id = BTRFS_QUOTA_TREE_OBJECTID;
	args.key.min_type = BTRFS_QGROUP_INFO_KEY;
	args.key.max_type = BTRFS_QGROUP_INFO_KEY;
	args.key.min_objectid = 0; // level 0: one qgroup per subvolume
	args.key.max_objectid = 0;
	args.key.min_offset = id;
	args.key.max_offset = id;
	args.key.max_transid = (unsigned long long)-1;
	args.key.nr_items = 1;
	if (ioctl(fd, BTRFS_IOC_TREE_SEARCH, &args) < 0)
		return -1;
	if (args.key.nr_items == 0)
		return 0;
	struct btrfs_ioctl_search_header sh;
	memcpy(&sh, args.buf, sizeof(sh));
	if (sh.type != BTRFS_QGROUP_INFO_KEY || sh.len < sizeof(struct btrfs_qgroup_info_item))
		return 0;
	struct btrfs_qgroup_info_item item;
	memcpy(&item, args.buf + sizeof(sh), sizeof(item));
	*excl = le64toh(item.excl);
	return 1;
}

// qgroups_exclusive reads, in one tree search, the level-0 qgroup info
// items whose ids lie in [from, to]: at most cap of them, their ids into
// ids and their exclusive bytes into excl, in id order. It returns how
// many it read, or -1 with errno (ENOENT: quota is off), and sets *last to
// the key offset of the last item the search returned and *seen to the
// number it returned: none means the range is exhausted, otherwise the
// caller searches again from *last + 1.
static int qgroups_exclusive(int fd, unsigned long long from, unsigned long long to,
		unsigned long long *ids, unsigned long long *excl, int cap,
		unsigned long long *last, unsigned *seen) {
	size_t buf_size = (size_t)cap * (sizeof(struct btrfs_ioctl_search_header) + sizeof(struct btrfs_qgroup_info_item));
	struct btrfs_ioctl_search_args_v2 *args = calloc(1, sizeof(*args) + buf_size);
	if (args == NULL)
		return -1;
	args->key.tree_id = BTRFS_QUOTA_TREE_OBJECTID;
	args->key.min_type = BTRFS_QGROUP_INFO_KEY;
	args->key.max_type = BTRFS_QGROUP_INFO_KEY;
	args->key.min_objectid = 0;
	args->key.max_objectid = 0;
	args->key.min_offset = from;
	args->key.max_offset = to;
	args->key.max_transid = (unsigned long long)-1;
	args->key.nr_items = cap;
	args->buf_size = buf_size;
	if (ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, args) < 0) {
		int saved = errno;
		free(args);
		errno = saved;
		return -1;
	}
	int n = 0;
	size_t at = 0;
	*seen = 0;
	const char *buf = (const char *)args->buf;
	for (unsigned i = 0; i < args->key.nr_items && n < cap; i++) {
		struct btrfs_ioctl_search_header sh;
		if (at + sizeof(sh) > buf_size)
			break;
		memcpy(&sh, buf + at, sizeof(sh));
		at += sizeof(sh);
		if (at + sh.len > buf_size)
			break;
		*last = sh.offset;
		(*seen)++;
		if (sh.type == BTRFS_QGROUP_INFO_KEY && sh.objectid == 0 && sh.len >= sizeof(struct btrfs_qgroup_info_item)) {
			struct btrfs_qgroup_info_item item;
			memcpy(&item, buf + at, sizeof(item));
			ids[n] = sh.offset;
			excl[n] = le64toh(item.excl);
			n++;
		}
		at += sh.len;
	}
	free(args);
	return n;
}

// Simple quotas (Linux 6.7) charge each extent to the subvolume that
// wrote it: a clone's usage is exactly what was written into it, and,
// unlike full qgroups, the accounting does not slow every snapshot as
// deleted subvolumes pile up. The constant is newer than Debian 12's
// headers.
#define SINDRI_QUOTA_CTL_ENABLE_SIMPLE_QUOTA 4

static int quota_enable(int fd, int simple) {
	struct btrfs_ioctl_quota_ctl_args args;
	memset(&args, 0, sizeof(args));
	args.cmd = simple ? SINDRI_QUOTA_CTL_ENABLE_SIMPLE_QUOTA : BTRFS_QUOTA_CTL_ENABLE;
	return ioctl(fd, BTRFS_IOC_QUOTA_CTL, &args);
}

static int fs_sync(int fd) {
	return ioctl(fd, BTRFS_IOC_SYNC, 0);
}
*/
import "C"

import (
	"fmt"
	"os"
	"syscall"
)

// enableQuota turns on quota accounting, which is what lets the filesystem
// report per-subvolume exclusive bytes: simple quotas where the kernel has
// them, full qgroups before Linux 6.7. It is a no-op when already on.
func enableQuota(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, errno := C.quota_enable(C.int(f.Fd()), 1)
	if r < 0 && (errno == syscall.EINVAL || errno == syscall.EOPNOTSUPP) {
		r, errno = C.quota_enable(C.int(f.Fd()), 0)
	}
	if r < 0 {
		return fmt.Errorf("enabling btrfs quota on %s: %w", path, errno)
	}
	return nil
}

// exclusiveBytes commits the running transaction, so that the accounting
// is current, and returns the exclusive bytes of subvolume id; false when
// the subvolume has no quota group. It reads that one quota group, whatever
// the number of subvolumes.
func exclusiveBytes(path string, id uint64) (int64, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	if r, errno := C.fs_sync(C.int(f.Fd())); r < 0 {
		return 0, false, fmt.Errorf("btrfs sync %s: %w", path, errno)
	}
	var excl C.ulonglong
	r, errno := C.qgroup_exclusive(C.int(f.Fd()), C.ulonglong(id), &excl)
	if r < 0 {
		if errno == syscall.ENOENT {
			return 0, false, fmt.Errorf("btrfs quota is not enabled on %s", path)
		}
		return 0, false, fmt.Errorf("reading btrfs qgroup of %s: %w", path, errno)
	}
	return int64(excl), r == 1, nil
}

// qgroupSearchBatch is how many qgroup items one tree search returns at
// most: 72 bytes each, so about 72 KiB of buffer. (A variable for the
// test that makes one read take several searches.)
var qgroupSearchBatch = 1024

// exclusiveBytesOf commits the running transaction once, so that the
// accounting is current, and returns the exclusive bytes of each subvolume
// of ids that has a quota group, read in one tree search over the quota
// groups between the least and the greatest of ids (a few ioctls for
// thousands of them). Ids without a quota group are left out.
func exclusiveBytesOf(path string, ids []uint64) (map[uint64]int64, error) {
	out := make(map[uint64]int64, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if r, errno := C.fs_sync(C.int(f.Fd())); r < 0 {
		return nil, fmt.Errorf("btrfs sync %s: %w", path, errno)
	}
	wanted := make(map[uint64]bool, len(ids))
	lo, hi := ids[0], ids[0]
	for _, id := range ids {
		wanted[id] = true
		lo, hi = min(lo, id), max(hi, id)
	}
	got := make([]C.ulonglong, qgroupSearchBatch)
	excl := make([]C.ulonglong, qgroupSearchBatch)
	for from := lo; ; {
		var last C.ulonglong
		var seen C.uint
		n, errno := C.qgroups_exclusive(C.int(f.Fd()), C.ulonglong(from), C.ulonglong(hi), &got[0], &excl[0], C.int(qgroupSearchBatch), &last, &seen)
		if n < 0 {
			if errno == syscall.ENOENT {
				return nil, fmt.Errorf("btrfs quota is not enabled on %s", path)
			}
			return nil, fmt.Errorf("reading the btrfs qgroups of %s: %w", path, errno)
		}
		for i := range int(n) {
			if id := uint64(got[i]); wanted[id] {
				out[id] = int64(excl[i])
			}
		}
		if seen == 0 || uint64(last) >= hi {
			return out, nil
		}
		from = uint64(last) + 1
	}
}
