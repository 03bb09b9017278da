//go:build linux

package dircopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// copier copies one tree: what `cp -a --reflink=auto --sparse=always`
// does, in Go, without extended attributes.
type copier struct {
	ctx context.Context
	// modeOf is the mode to give the copy of the file at rel (relative to
	// the tree's root, "." for the root) whose mode in the source is mode.
	modeOf func(rel string, mode uint32) uint32
	// links holds the first copy of each file with more than one link, so
	// that the copy keeps the tree's hard links.
	links map[fileKey]string
}

type fileKey struct{ dev, ino uint64 }

// copyTree copies the directory src into the existing directory dst, with
// owners, modes (through modeOf), times, symlinks, hard links, holes,
// FIFOs and device nodes. An entry that vanishes from src while it is
// copied (a file a running Postgres removes) is left out.
func copyTree(ctx context.Context, src, dst string, modeOf func(rel string, mode uint32) uint32) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: src, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s is not a directory", src)
	}
	c := &copier{ctx: ctx, modeOf: modeOf, links: map[fileKey]string{}}
	if err := c.contents(src, dst, "."); err != nil {
		return err
	}
	return c.finish(dst, ".", &st)
}

// contents copies what the directory src holds into dst.
func (c *copier) contents(src, dst, rel string) error {
	des, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, de := range des {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		s, t, r := filepath.Join(src, de.Name()), filepath.Join(dst, de.Name()), path.Join(rel, de.Name())
		var st unix.Stat_t
		if err := unix.Lstat(s, &st); errors.Is(err, unix.ENOENT) {
			continue
		} else if err != nil {
			return &fs.PathError{Op: "lstat", Path: s, Err: err}
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			// Writable by its owner until its contents are in.
			if err := os.Mkdir(t, 0o700); err != nil {
				return err
			}
			if err := c.contents(s, t, r); err != nil {
				return err
			}
		case unix.S_IFREG:
			key := fileKey{dev: st.Dev, ino: st.Ino}
			if first, ok := c.links[key]; ok {
				if err := os.Link(first, t); err != nil {
					return err
				}
				continue // the same inode: its owner, mode and times are set
			}
			if err := copyFile(s, t, st.Size); errors.Is(err, unix.ENOENT) && !exists(t) {
				continue
			} else if err != nil {
				return err
			}
			if st.Nlink > 1 {
				c.links[key] = t
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(s)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if err := os.Symlink(target, t); err != nil {
				return err
			}
		default: // FIFOs, sockets, device nodes
			if err := unix.Mknod(t, st.Mode&unix.S_IFMT|0o600, int(st.Rdev)); err != nil {
				return &fs.PathError{Op: "mknod", Path: t, Err: err}
			}
		}
		if err := c.finish(t, r, &st); err != nil {
			return err
		}
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// finish gives the copy at path the source's owner, mode and times; a
// directory's last, once its contents are in.
func (c *copier) finish(path, rel string, st *unix.Stat_t) error {
	if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		// After the chown, which clears set-user-ID and set-group-ID.
		if err := unix.Chmod(path, c.modeOf(rel, st.Mode&0o7777)); err != nil {
			return &fs.PathError{Op: "chmod", Path: path, Err: err}
		}
	}
	times := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimes", Path: path, Err: err}
	}
	return nil
}

// copyFile copies the first size bytes of the regular file src into a new
// file dst: a reflink where the filesystem shares extents, otherwise its
// data segments one by one, so that holes stay holes.
func copyFile(src, dst string, size int64) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return out.Close()
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			data = off // no SEEK_DATA: all of it is data
		}
		end, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		if data >= end {
			break
		}
		if err := copyRange(in, out, data, end-data); err != nil {
			return fmt.Errorf("copying %s: %w", src, err)
		}
		off = end
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Close()
}

// copyRange copies n bytes at off from in to out, in the kernel where it
// can, which shares extents on filesystems that can.
func copyRange(in, out *os.File, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		chunk := min(n, 1<<30)
		copied, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(chunk), 0)
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			_, err = io.Copy(io.NewOffsetWriter(out, woff), io.NewSectionReader(in, roff, n))
			return err
		}
		if err != nil {
			return err
		}
		if copied == 0 {
			return nil // the file shrank while it was copied
		}
		n -= int64(copied)
	}
	return nil
}

// recordModes adds to modes the mode of every file and directory under
// root that has a write bit and is not in modes yet.
func recordModes(ctx context.Context, root string, modes map[string]uint32) error {
	return walkModes(ctx, root, func(rel, _ string, mode uint32) error {
		if _, ok := modes[rel]; !ok && mode&0o222 != 0 {
			modes[rel] = mode
		}
		return nil
	})
}

// takeWriteBits takes every write bit from the files and directories
// under root; root's own are seal's to take, once it is in place.
func takeWriteBits(ctx context.Context, root string) error {
	return walkModes(ctx, root, func(rel, p string, mode uint32) error {
		if rel == "." || mode&0o222 == 0 {
			return nil
		}
		if err := unix.Chmod(p, mode&^0o222); err != nil {
			return &fs.PathError{Op: "chmod", Path: p, Err: err}
		}
		return nil
	})
}

// walkModes calls fn with the relative path, the path and the mode of
// everything under root but symlinks, whose modes mean nothing.
func walkModes(ctx context.Context, root string, fn func(rel, path string, mode uint32) error) error {
	return filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if de.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), p, st.Mode&0o7777)
	})
}

// removeTree removes path and everything under it, clearing immutable
// flags and giving directories their owner's write bit back where that is
// what stops it (an image's).
func removeTree(path string) error {
	err := os.RemoveAll(path)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	filepath.WalkDir(path, func(p string, de fs.DirEntry, err error) error {
		if err == nil && (de.IsDir() || de.Type().IsRegular()) {
			setImmutable(p, false)
		}
		if err == nil && de.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// diskUsage is the disk that the files under root take, each hard-linked
// file once; an error matching fs.ErrNotExist when root is gone.
func diskUsage(ctx context.Context, root string) (int64, error) {
	seen := map[fileKey]bool{}
	var total int64
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if p != root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if p != root && errors.Is(err, unix.ENOENT) {
				return nil
			}
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		key := fileKey{dev: st.Dev, ino: st.Ino}
		if !seen[key] {
			seen[key] = true
			total += st.Blocks * 512
		}
		return nil
	})
	return total, err
}

// immutableFlag is FS_IMMUTABLE_FL (linux/fs.h): nobody, root included,
// may change, remove, rename or link the inode, or add to a directory.
const immutableFlag = 0x10

// setImmutable sets or clears the immutable flag of the regular file or
// directory at path.
func setImmutable(path string, on bool) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return &fs.PathError{Op: "FS_IOC_GETFLAGS", Path: path, Err: err}
	}
	want := flags &^ immutableFlag
	if on {
		want = flags | immutableFlag
	}
	if want == flags {
		return nil
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(want)); err != nil {
		return &fs.PathError{Op: "FS_IOC_SETFLAGS", Path: path, Err: err}
	}
	return nil
}

// markImmutable sets the immutable flag of every regular file and
// directory under root; root's own is seal's to set, once it is in place.
// Symlinks cannot have it, and device nodes and FIFOs are not opened:
// their immutable directories keep them from being removed or replaced.
func markImmutable(ctx context.Context, root string) error {
	return walkModes(ctx, root, func(rel, p string, mode uint32) error {
		if rel == "." {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFDIR {
			return nil
		}
		return setImmutable(p, true)
	})
}

// canMarkImmutable tells whether the driver may set the immutable flag on
// the filesystem of dir: it needs CAP_LINUX_IMMUTABLE and a filesystem that
// keeps the flag (ext4, XFS, BTRFS, tmpfs since Linux 6.0).
func canMarkImmutable(dir string) bool {
	probe := filepath.Join(dir, "probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return false
	}
	if setImmutable(probe, true) != nil {
		return false
	}
	return setImmutable(probe, false) == nil
}

// isImmutable tells whether the inode at path has the immutable flag.
func isImmutable(path string) bool {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, 0, &st); err != nil {
		return false
	}
	return st.Attributes_mask&unix.STATX_ATTR_IMMUTABLE != 0 && st.Attributes&unix.STATX_ATTR_IMMUTABLE != 0
}
