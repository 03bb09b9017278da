package uploadshell

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/pkg/sftp"
)

// ServeSFTP serves the SFTP protocol on in and out until the client goes
// away: what scp (its default mode since OpenSSH 9.0) and sftp need to
// upload, confined to the uploads directory.
//
//   - realpath, stat, lstat and directory listings: anywhere in the
//     uploads directory;
//   - open for writing (create, truncate, exclusive, resume), write,
//     close; setstat (times are set, a size truncates, permissions are
//     accepted and ignored, owners refused); mkdir, rmdir, remove and
//     rename: only inside an image's directory (/<id>/...);
//   - reading a file (a download), symlink, hard link and readlink:
//     refused ("permission denied").
func ServeSFTP(u *Uploads, in io.Reader, out io.WriteCloser) error {
	h := &sftpHandler{u: u}
	s := sftp.NewRequestServer(stdio{in, out}, sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h})
	err := s.Serve()
	s.Close()
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

type stdio struct {
	io.Reader
	io.WriteCloser
}

type sftpHandler struct{ u *Uploads }

var (
	_ sftp.LstatFileLister      = (*sftpHandler)(nil)
	_ sftp.PosixRenameFileCmder = (*sftpHandler)(nil)
	_ sftp.ReadlinkFileLister   = (*sftpHandler)(nil)
	_ sftp.FileReader           = (*sftpHandler)(nil)
	_ sftp.FileWriter           = (*sftpHandler)(nil)
)

var (
	errDownloadsRefused = refuse("downloads are refused: this account only uploads")
	errLinksRefused     = refuse("symbolic and hard links are refused: upload the files themselves")
	errOwnersRefused    = refuse("changing owners is refused")
	errUnsupported      = error(sftp.ErrSSHFxOpUnsupported)
)

// Fileread refuses downloads.
func (h *sftpHandler) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	return nil, errDownloadsRefused
}

// Filewrite opens a file for writing. A handle opened for reading too is
// refused: pkg/sftp would route its reads to WriteAt.
func (h *sftpHandler) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	fl := r.Pflags()
	if fl.Read {
		return nil, errDownloadsRefused
	}
	rel, err := clean(r.Filepath)
	if err != nil {
		return nil, err
	}
	f, err := h.u.create(rel, fl.Trunc, fl.Excl && fl.Creat, !fl.Creat)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Filecmd makes, removes and renames things, and sets attributes.
func (h *sftpHandler) Filecmd(r *sftp.Request) error {
	rel, err := clean(r.Filepath)
	if err != nil {
		return err
	}
	switch r.Method {
	case "Setstat":
		return h.setstat(rel, r)
	case "Mkdir":
		return h.u.mkdir(rel, false)
	case "Rmdir", "Remove":
		return h.u.remove(rel)
	case "Rename":
		return h.rename(rel, r.Target, false)
	case "Symlink", "Link":
		return errLinksRefused
	}
	return errUnsupported
}

// PosixRename renames, replacing the target.
func (h *sftpHandler) PosixRename(r *sftp.Request) error {
	rel, err := clean(r.Filepath)
	if err != nil {
		return err
	}
	return h.rename(rel, r.Target, true)
}

func (h *sftpHandler) rename(from, target string, replace bool) error {
	to, err := clean(target)
	if err != nil {
		return err
	}
	return h.u.rename(from, to, replace)
}

func (h *sftpHandler) setstat(rel string, r *sftp.Request) error {
	flags, attrs := r.AttrFlags(), r.Attributes()
	if flags.UidGid {
		return errOwnersRefused
	}
	if err := h.u.inImage(rel); err != nil {
		return err
	}
	if flags.Size {
		if err := h.u.truncate(rel, int64(attrs.Size)); err != nil {
			return err
		}
	}
	if flags.Acmodtime {
		if err := h.u.chtimes(rel, time.Unix(int64(attrs.Atime), 0), time.Unix(int64(attrs.Mtime), 0)); err != nil {
			return err
		}
	}
	// flags.Permissions: ignored; sindrid reads the files as root.
	return nil
}

// Filelist lists a directory or stats a path (following symbolic links
// only within the uploads directory).
func (h *sftpHandler) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	rel, err := clean(r.Filepath)
	if err != nil {
		return nil, err
	}
	switch r.Method {
	case "Stat":
		fi, err := h.u.root.Stat(rel)
		if err != nil {
			return nil, err
		}
		return lister{fi}, nil
	case "List":
		d, err := h.u.root.Open(rel)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		fis, err := d.Readdir(-1)
		if err != nil {
			return nil, err
		}
		return lister(fis), nil
	case "Readlink":
		return nil, errLinksRefused
	}
	return nil, errUnsupported
}

// Lstat stats a path without following a final symbolic link.
func (h *sftpHandler) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	rel, err := clean(r.Filepath)
	if err != nil {
		return nil, err
	}
	fi, err := h.u.lstat(rel)
	if err != nil {
		return nil, err
	}
	return lister{fi}, nil
}

// Readlink is refused: links are not followed nor made.
func (h *sftpHandler) Readlink(string) (string, error) { return "", errLinksRefused }

type lister []fs.FileInfo

func (l lister) ListAt(dst []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if n < len(dst) || off+int64(n) == int64(len(l)) {
		return n, io.EOF
	}
	return n, nil
}
