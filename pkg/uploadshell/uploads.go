// Package uploadshell is sindri-upload-shell: what sshd runs for the
// upload account, which takes files into the upload directories of
// pending images over SFTP (scp's default since OpenSSH 9.0, and sftp) or
// the legacy SCP protocol (scp -O), and nothing else.
//
// Every file operation goes through an os.Root opened on the uploads
// directory, which the user sees as "/": no path, ".." or symbolic link
// resolves outside it. On top of that, nothing is created, changed or
// removed except inside an image's directory (/<id>/...), no symbolic link
// is followed on the way there, and files are never read (downloads are
// refused). Unix permissions still apply: the process is the upload
// account, and sindrid makes only a pending image's directory writable by
// it, so writing anywhere else fails with "permission denied".
package uploadshell

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/pkg/sftp"

	"github.com/sindri-db/sindri/pkg/writeback"
)

// Modes of what uploads create. sindrid reads them as root; the modes the
// client asks for are ignored.
const (
	fileMode = 0o640
	dirMode  = 0o750
)

// Uploads is the uploads directory, confined by an os.Root.
type Uploads struct {
	root *os.Root
	dir  string
	// reserve is the disk reserve in bytes (0: none) that sindrid keeps
	// in DiskReserveFile: no upload starts, and none goes on, below it.
	reserve int64
}

// DiskReserveFile, in the uploads directory, holds sindrid's disk reserve
// (limits.disk_reserve) in bytes; sindrid writes it (engine.DiskReserveFile).
const DiskReserveFile = ".disk_reserve"

// OpenUploads opens the uploads directory dir.
func OpenUploads(dir string) (*Uploads, error) {
	if !path.IsAbs(dir) {
		return nil, fmt.Errorf("the uploads directory %q is not an absolute path", dir)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("cannot open the uploads directory: %w", err)
	}
	u := &Uploads{root: r, dir: dir}
	// Without the file (or with one that is not a number) there is no
	// reserve here; sindrid's finalise still refuses below it.
	if f, err := r.Open(DiskReserveFile); err == nil {
		data, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil && n > 0 {
			u.reserve = n
		}
	}
	return u, nil
}

// noSpace is an upload refused or stopped at the disk reserve. Over SFTP
// it is SSH_FX_FAILURE, as sftp-server answers ENOSPC.
type noSpace struct{ msg string }

func (e *noSpace) Error() string { return e.msg }
func (e *noSpace) Unwrap() error { return sftp.ErrSSHFxFailure }

// checkSpace refuses when the filesystem's free space is under the disk
// reserve. Near it, the page cache is written back first: BTRFS counts
// data not yet written as free.
func (u *Uploads) checkSpace(rel, what string) error {
	if u.reserve <= 0 {
		return nil
	}
	free, total, err := u.space()
	if err == nil && free-u.reserve < writeback.Pending() {
		syscall.Sync()
		free, total, err = u.space()
	}
	if err != nil || free >= u.reserve {
		return nil // a filesystem that cannot be read is left to the writes
	}
	return &noSpace{msg: fmt.Sprintf("%s: %s: only %s of %s is free, under sindri's disk reserve (limits.disk_reserve) of %s; upload once space is freed",
		shown(rel), what, humanize.IBytes(uint64(max(free, 0))), humanize.IBytes(uint64(total)), humanize.IBytes(uint64(u.reserve)))}
}

func (u *Uploads) space() (free, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(u.dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}

// spaceCheckBytes is how much an upload writes between two looks at the
// free space.
const spaceCheckBytes = 32 << 20

// uploadFile is a file being uploaded: its writes stop at the disk
// reserve.
type uploadFile struct {
	*os.File
	u       *Uploads
	rel     string
	written int64
}

func (f *uploadFile) check(n int) error {
	if f.written += int64(n); f.written < spaceCheckBytes {
		return nil
	}
	f.written = 0
	return f.u.checkSpace(f.rel, "upload stopped")
}

func (f *uploadFile) Write(p []byte) (int, error) {
	if err := f.check(len(p)); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *uploadFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.check(len(p)); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

// Close closes the uploads directory.
func (u *Uploads) Close() error { return u.root.Close() }

// refusal is an operation the upload shell does not allow. Over SFTP it is
// "permission denied", with the message.
type refusal struct{ msg string }

func (e *refusal) Error() string { return e.msg }

// Unwrap lets pkg/sftp answer SSH_FX_PERMISSION_DENIED.
func (e *refusal) Unwrap() error { return sftp.ErrSSHFxPermissionDenied }

func refuse(format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...)}
}

// Shown, in messages, for the path the user sees.
func shown(rel string) string {
	if rel == "." {
		return "/"
	}
	return "/" + rel
}

// clean turns a path as the user sees it (absolute from the uploads
// directory, "/", or relative to it) into a path relative to the root, "."
// for the root itself. A ".." anywhere is refused rather than resolved.
func clean(p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", refuse("%q: a NUL byte in a path", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", refuse("%s: \"..\" is not allowed: uploads go into /<image id>/", p)
		}
	}
	c := path.Clean("/" + p)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

func isImageID(s string) bool {
	if s == "" || len(s) > 19 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// inImage checks that rel is something an upload may create, change or
// remove: an entry inside an image's directory (<id>/...), reached
// through real directories, not symbolic links.
func (u *Uploads) inImage(rel string) error {
	parts := strings.Split(rel, "/")
	if rel == "." || len(parts) < 2 {
		return refuse("%s: uploads go into the directory of a pending image, /<image id>/, not the top directory", shown(rel))
	}
	if !isImageID(parts[0]) {
		return refuse("%s: /%s is not an image's upload directory (/<image id>/)", shown(rel), parts[0])
	}
	for i := 1; i < len(parts); i++ {
		dir := strings.Join(parts[:i], "/")
		fi, err := u.root.Lstat(dir)
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return refuse("%s: %s is a symbolic link, which is not followed", shown(rel), shown(dir))
		}
		if !fi.IsDir() {
			return &fs.PathError{Op: "open", Path: shown(rel), Err: syscall.ENOTDIR}
		}
	}
	return nil
}

// lstat is Lstat of a path relative to the root.
func (u *Uploads) lstat(rel string) (fs.FileInfo, error) { return u.root.Lstat(rel) }

// isDir tells whether rel is a directory itself (not a symbolic link to
// one).
func (u *Uploads) isDir(rel string) bool {
	fi, err := u.root.Lstat(rel)
	return err == nil && fi.IsDir()
}

// create opens rel for writing, creating it (unless mustExist) and
// truncating it if asked. Only a regular file is opened: an existing
// symbolic link, directory, FIFO ... is refused; so is any, below the disk
// reserve.
func (u *Uploads) create(rel string, trunc, excl, mustExist bool) (*uploadFile, error) {
	if err := u.inImage(rel); err != nil {
		return nil, err
	}
	if err := u.checkSpace(rel, "upload refused"); err != nil {
		return nil, err
	}
	if fi, err := u.root.Lstat(rel); err == nil {
		if excl {
			return nil, &fs.PathError{Op: "open", Path: shown(rel), Err: fs.ErrExist}
		}
		if !fi.Mode().IsRegular() {
			return nil, refuse("%s: not a regular file (%s); only regular files are written", shown(rel), typeName(fi.Mode()))
		}
	}
	flag := os.O_WRONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK
	if !mustExist {
		flag |= os.O_CREATE
	}
	if trunc {
		flag |= os.O_TRUNC
	}
	if excl {
		flag |= os.O_EXCL
	}
	f, err := u.root.OpenFile(rel, flag, fileMode)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = refuse("%s: not a regular file", shown(rel))
		}
		return nil, err
	}
	return &uploadFile{File: f, u: u, rel: rel}, nil
}

// mkdir makes the directory rel inside an image's directory; an existing
// directory is fine when existOK.
func (u *Uploads) mkdir(rel string, existOK bool) error {
	if err := u.inImage(rel); err != nil {
		return err
	}
	err := u.root.Mkdir(rel, dirMode)
	if errors.Is(err, fs.ErrExist) && existOK {
		if fi, lerr := u.root.Lstat(rel); lerr == nil && fi.IsDir() {
			return nil
		}
		return &fs.PathError{Op: "mkdir", Path: shown(rel), Err: syscall.ENOTDIR}
	}
	return err
}

// remove removes a file, a symbolic link (not what it points to) or an
// empty directory inside an image's directory.
func (u *Uploads) remove(rel string) error {
	if err := u.inImage(rel); err != nil {
		return err
	}
	return u.root.Remove(rel)
}

// rename moves from to to, both inside images' directories; unless
// replace, an existing to is an error (SFTP's plain rename).
func (u *Uploads) rename(from, to string, replace bool) error {
	if err := u.inImage(from); err != nil {
		return err
	}
	if err := u.inImage(to); err != nil {
		return err
	}
	if _, err := u.root.Lstat(to); err == nil && !replace {
		return &fs.PathError{Op: "rename", Path: shown(to), Err: fs.ErrExist}
	}
	return u.root.Rename(from, to)
}

// chtimes sets the times of rel, itself not a symbolic link, inside an
// image's directory.
func (u *Uploads) chtimes(rel string, atime, mtime time.Time) error {
	if err := u.inImage(rel); err != nil {
		return err
	}
	if fi, err := u.root.Lstat(rel); err != nil {
		return err
	} else if fi.Mode()&fs.ModeSymlink != 0 {
		return refuse("%s: a symbolic link, which is not followed", shown(rel))
	}
	return u.root.Chtimes(rel, atime, mtime)
}

// truncate sets the size of the regular file rel.
func (u *Uploads) truncate(rel string, size int64) error {
	f, err := u.create(rel, false, false, true)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return m.Type().String()
}

// describe is the message for an error about rel, as scp prints it:
// "/<path>: <reason>".
func describe(rel string, err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.msg
	}
	var ns *noSpace
	if errors.As(err, &ns) {
		return ns.msg
	}
	var errno syscall.Errno
	switch {
	case errors.Is(err, fs.ErrPermission):
		return shown(rel) + ": Permission denied (only the directory of a pending image, /<image id>/, takes uploads)"
	case errors.As(err, &errno):
		msg := errno.Error()
		return shown(rel) + ": " + strings.ToUpper(msg[:1]) + msg[1:]
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return shown(rel) + ": " + pe.Err.Error()
	}
	return shown(rel) + ": " + err.Error()
}
