// Package setup picks and opens the storage driver for a data path: BTRFS
// or ZFS by the filesystem the path is on, or, when it is on neither, a
// BTRFS filesystem in a sparse loopback file that it makes and mounts there
// (the embedded default, so that a newcomer needs no spare disk).
package setup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/btrfs"
	"github.com/sindri-db/sindri/pkg/storage/zfs"
)

// Options are the [storage] settings and the data path.
type Options struct {
	// Driver is "auto", "btrfs" or "zfs".
	Driver string
	// DataPath is where volumes and images live (BTRFS), or where the ZFS
	// parent dataset is mounted.
	DataPath string
	// ZFSDataset is the parent dataset for the zfs driver; with "auto" on a
	// ZFS data path it defaults to the dataset mounted there.
	ZFSDataset string
	// LoopbackFile and LoopbackSize describe the embedded BTRFS; a size of 0
	// turns it off.
	LoopbackFile string
	LoopbackSize int64
	Logger       *slog.Logger
}

// Filesystem magic numbers from statfs(2).
const (
	btrfsMagic = unix.BTRFS_SUPER_MAGIC
	zfsMagic   = 0x2fc12fc1
)

// Open returns the driver for opts, setting up the loopback BTRFS when it
// is needed and missing, or mounting it again when it exists.
func Open(ctx context.Context, opts Options) (storage.Driver, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(opts.DataPath, 0o711); err != nil {
		return nil, fmt.Errorf("making data_path: %w", err)
	}
	fs, err := detect(opts.DataPath)
	if err != nil {
		return nil, err
	}
	switch opts.Driver {
	case "zfs":
		return openZFS(opts, fs)
	case "btrfs":
		if fs.kind != "btrfs" {
			if err := mountLoopback(ctx, opts, log); err != nil {
				return nil, err
			}
		}
		return btrfs.New(opts.DataPath)
	case "auto", "":
		switch fs.kind {
		case "btrfs":
			log.Info("storage: data_path is on BTRFS", "data_path", opts.DataPath)
			return btrfs.New(opts.DataPath)
		case "zfs":
			log.Info("storage: data_path is on ZFS", "data_path", opts.DataPath, "dataset", fs.source)
			return openZFS(opts, fs)
		}
		if err := mountLoopback(ctx, opts, log); err != nil {
			return nil, err
		}
		return btrfs.New(opts.DataPath)
	default:
		return nil, fmt.Errorf("storage.driver %q is not one of auto, btrfs, zfs", opts.Driver)
	}
}

func openZFS(opts Options, fs filesystem) (storage.Driver, error) {
	dataset := opts.ZFSDataset
	if dataset == "" && fs.kind == "zfs" {
		// The volumes are datasets under this one, mounted under its
		// mount point: a data_path deeper down would not hold them.
		if dir, err := filepath.EvalSymlinks(opts.DataPath); err != nil || filepath.Clean(dir) != filepath.Clean(fs.mountPoint) {
			return nil, fmt.Errorf("data_path %s is a directory inside ZFS dataset %s (mounted at %s): make data_path a dataset of its own (zfs create -o mountpoint=%s %s/sindri) or set storage.zfs_dataset",
				opts.DataPath, fs.source, fs.mountPoint, opts.DataPath, fs.source)
		}
		dataset = fs.source
	}
	if dataset == "" {
		return nil, fmt.Errorf("storage.zfs_dataset is not set and data_path %s is not on a ZFS dataset", opts.DataPath)
	}
	return zfs.New(dataset)
}

// filesystem is what a path is on: kind is "btrfs", "zfs" or the type's
// name; source is the mount's source (the dataset, for ZFS).
type filesystem struct {
	kind       string
	source     string
	mountPoint string
}

func detect(path string) (filesystem, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return filesystem{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	m, err := mountOf(path)
	if err != nil {
		return filesystem{}, err
	}
	switch {
	case st.Type == btrfsMagic:
		m.kind = "btrfs"
	case st.Type == zfsMagic, m.kind == "fuse.zfs": // OpenZFS, or zfs-fuse
		m.kind = "zfs"
	}
	return m, nil
}

// mountOf finds the mount that holds path in /proc/self/mountinfo.
func mountOf(path string) (filesystem, error) {
	path, err := filepath.EvalSymlinks(path)
	if err != nil {
		return filesystem{}, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return filesystem{}, err
	}
	defer f.Close()
	return mountFromInfo(f, path)
}

func mountFromInfo(r io.Reader, path string) (filesystem, error) {
	var best filesystem
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - type source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp != "/" && path != mp && !strings.HasPrefix(path, mp+"/") {
			continue
		}
		if len(mp) >= len(best.mountPoint) {
			best = filesystem{kind: fields[sep+1], source: unescapeMountinfo(fields[sep+2]), mountPoint: mp}
		}
	}
	if err := sc.Err(); err != nil {
		return filesystem{}, err
	}
	if best.mountPoint == "" {
		return filesystem{}, fmt.Errorf("no mount holds %s", path)
	}
	return best, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) that the
// kernel writes into /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountLoopback makes the loopback file and its BTRFS when the file is
// missing, and mounts it on the data path.
func mountLoopback(ctx context.Context, opts Options, log *slog.Logger) error {
	if opts.LoopbackSize <= 0 {
		fs, _ := detect(opts.DataPath)
		return fmt.Errorf("data_path %s is on %s, neither BTRFS nor ZFS: put it on one, or set storage.loopback_size to use a BTRFS filesystem in a file", opts.DataPath, fs.kind)
	}
	file := opts.LoopbackFile
	if file == "" {
		file = filepath.Clean(opts.DataPath) + ".btrfs.img"
	}
	if rel, err := filepath.Rel(opts.DataPath, file); err == nil && !strings.HasPrefix(rel, "..") {
		return fmt.Errorf("storage.loopback_file %s must be outside data_path %s", file, opts.DataPath)
	}
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		if err := refuseNonEmpty(opts.DataPath); err != nil {
			return err
		}
		if err := makeLoopback(ctx, file, opts.LoopbackSize); err != nil {
			return err
		}
		log.Info("storage: made a loopback BTRFS", "file", file, "size_bytes", opts.LoopbackSize)
	} else if err != nil {
		return err
	} else if err := refuseNonEmpty(opts.DataPath); err != nil {
		return err
	}
	// noatime: a read in a clone writes nothing, not even into an image
	// received from another host, whose files do not carry the no-atime
	// flag that Freeze gives an image's files.
	if err := run(ctx, "mount", "-t", "btrfs", "-o", "loop,noatime", file, opts.DataPath); err != nil {
		return fmt.Errorf("mounting the loopback BTRFS %s on %s: %w", file, opts.DataPath, err)
	}
	log.Info("storage: mounted the loopback BTRFS", "file", file, "data_path", opts.DataPath)
	return nil
}

// refuseNonEmpty keeps a mount from hiding files already in the data path.
func refuseNonEmpty(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return fmt.Errorf("data_path %s is not empty and not on BTRFS or ZFS; refusing to mount the loopback BTRFS over %d entries (move them away or choose another data_path)", dir, len(entries))
	}
	return nil
}

func makeLoopback(ctx context.Context, file string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	// Made under a temporary name, so that a crash never leaves a file
	// that looks ready but holds no filesystem.
	tmp := file + ".making"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := run(ctx, "mkfs.btrfs", "-q", "-f", "-L", "sindri", tmp); err != nil {
		return fmt.Errorf("formatting %s: %w", tmp, err)
	}
	return os.Rename(tmp, file)
}

// run runs a command with a deadline; its stderr goes into the error.
func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
