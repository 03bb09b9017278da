//go:build linux

package btrfs

/*
#include <endian.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>

// qgroup_exclusive fills ids and excl with up to max level-0 qgroups of the
// filesystem open at fd; it returns their number, or -errno.
static int qgroup_exclusive(int fd, unsigned long long *ids, unsigned long long *excl, int max) {
	struct btrfs_ioctl_search_args args;
	int n = 0;
	memset(&args, 0, sizeof(args));
	args.key.tree_id = BTRFS_QUOTA_TREE_OBJECTID;
	args.key.min_type = BTRFS_QGROUP_INFO_KEY;
	args.key.max_type = BTRFS_QGROUP_INFO_KEY;
	args.key.min_objectid = 0;
	args.key.max_objectid = 0;
	args.key.min_offset = 0;
	args.key.max_offset = (1ULL << 48) - 1; // level 0: one qgroup per subvolume
	args.key.max_transid = (unsigned long long)-1;
	for (;;) {
		args.key.nr_items = 4096;
		if (ioctl(fd, BTRFS_IOC_TREE_SEARCH, &args) < 0)
			return -1;
		if (args.key.nr_items == 0)
			return n;
		size_t off = 0;
		struct btrfs_ioctl_search_header sh;
		for (unsigned i = 0; i < args.key.nr_items; i++) {
			memcpy(&sh, args.buf + off, sizeof(sh));
			off += sizeof(sh);
			if (sh.type == BTRFS_QGROUP_INFO_KEY && n < max) {
				struct btrfs_qgroup_info_item item;
				memcpy(&item, args.buf + off, sizeof(item));
				ids[n] = sh.offset;
				excl[n] = le64toh(item.excl);
				n++;
			}
			off += sh.len;
			args.key.min_offset = sh.offset + 1;
		}
		if (args.key.min_offset == 0 || args.key.min_offset > args.key.max_offset)
			return n;
	}
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
// is current, and returns each subvolume's exclusive bytes by subvolume id.
func exclusiveBytes(path string) (map[uint64]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if r, errno := C.fs_sync(C.int(f.Fd())); r < 0 {
		return nil, fmt.Errorf("btrfs sync %s: %w", path, errno)
	}
	const max = 1 << 16
	ids := make([]C.ulonglong, max)
	excl := make([]C.ulonglong, max)
	n, errno := C.qgroup_exclusive(C.int(f.Fd()), &ids[0], &excl[0], max)
	if n < 0 {
		if errno == syscall.ENOENT {
			return nil, fmt.Errorf("btrfs quota is not enabled on %s", path)
		}
		return nil, fmt.Errorf("reading btrfs qgroups of %s: %w", path, errno)
	}
	out := make(map[uint64]int64, int(n))
	for i := 0; i < int(n); i++ {
		out[uint64(ids[i])] = int64(excl[i])
	}
	return out, nil
}
