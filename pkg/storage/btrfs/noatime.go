//go:build linux

package btrfs

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// fsNoAtimeFlag is FS_NOATIME_FL of linux/fs.h (chattr +A), which
// golang.org/x/sys does not name.
const fsNoAtimeFlag = 0x00000080

// forbidAtime marks every directory and regular file under root, root
// included, as never to have its access time updated, so that the clones
// of an image made from root never write to read it: on BTRFS an access
// time written into a clone unshares the metadata its image shares with
// every other clone (a copy of the tree's leaves, and a commit that grows
// with them), whatever the mount's atime options. The flag travels with
// the inodes into every snapshot. It is best effort: an entry that does
// not take it is read as before. The walk opens each level relative to
// the one above without following a link, so nothing outside root is
// touched whatever root's contents are.
func forbidAtime(root string) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	if !setNoAtime(fd) {
		unix.Close(fd)
		return // the filesystem has no such flag
	}
	forbidAtimeIn(fd)
}

// forbidAtimeIn flags what the directory open at dir holds, and closes it.
func forbidAtimeIn(dir int) {
	d := os.NewFile(uintptr(dir), "")
	defer d.Close()
	for {
		entries, err := d.ReadDir(256)
		for _, e := range entries {
			switch {
			case e.Type().IsDir():
				fd, err := unix.Openat(dir, e.Name(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					continue
				}
				setNoAtime(fd)
				forbidAtimeIn(fd)
			case e.Type().IsRegular():
				fd, err := unix.Openat(dir, e.Name(), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
				if err != nil {
					continue
				}
				var st unix.Stat_t
				if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
					setNoAtime(fd)
				}
				unix.Close(fd)
			}
		}
		if err != nil || len(entries) == 0 {
			return
		}
	}
}

// setNoAtime sets the flag on the inode open at fd; false when the
// filesystem does not know the flags.
func setNoAtime(fd int) bool {
	flags, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) {
		return false
	}
	if err != nil || flags&fsNoAtimeFlag != 0 {
		return true
	}
	unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags|fsNoAtimeFlag)
	return true
}
