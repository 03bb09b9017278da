package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sindri-db/sindri/pkg/osuser"
	"github.com/sindri-db/sindri/pkg/safefile"
	"github.com/sindri-db/sindri/pkg/store"
)

// UploadFile is the name of the tarball that PUT /images/{id}/upload
// writes into the image's upload directory; scp may add others.
const UploadFile = "upload.tar"

// UploadTempPrefix starts the name of the file an HTTP upload is received
// into before it becomes UploadFile; one left by a crash is swept.
const UploadTempPrefix = ".upload-"

// UploadImage streams body into the image's upload directory, replacing
// an earlier upload. Only a pending or failed image takes uploads.
func (e *Engine) UploadImage(ctx context.Context, id int64, body io.Reader) (int64, error) {
	if err := e.acceptsUpload(ctx, id); err != nil {
		return 0, err
	}
	if err := e.CheckDiskReserve(ctx, 0, "an upload"); err != nil {
		return 0, err
	}
	dir := e.uploadDir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	// Received without the image's lock (a slow upload must not hold up
	// the image), then checked again and put in place under it.
	tmp, err := os.CreateTemp(dir, UploadTempPrefix+"*")
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	e.uploading[tmp.Name()] = true
	e.mu.Unlock()
	defer func() {
		os.Remove(tmp.Name())
		e.mu.Lock()
		delete(e.uploading, tmp.Name())
		e.mu.Unlock()
	}()
	dst := &writeErr{w: e.guardWriter(ctx, tmp, "an upload")}
	n, err := io.Copy(dst, body)
	if err != nil {
		tmp.Close()
		if dst.err != nil {
			// Our side failed (ENOSPC, EIO…): keep the errno in the
			// chain so that it is classified (no disk space is a 503).
			return n, fmt.Errorf("image %d: writing the upload after %d bytes: %w", id, n, err)
		}
		// The client's side: it went away or sent a broken body.
		return n, fmt.Errorf("%w after %d bytes: %w", ErrUploadInterrupted, n, err)
	}
	if err := tmp.Close(); err != nil {
		return n, err
	}
	unlock := e.imageLocks.Lock(id)
	defer unlock()
	if err := e.acceptsUpload(ctx, id); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, UploadFile)); errors.Is(err, fs.ErrNotExist) {
		// A finalise that ended while this was received removed it with
		// the rest of the upload.
		return 0, fmt.Errorf("%w: image %d was finalised while this upload was received, which removed it; upload again", ErrImageNotPending, id)
	} else if err != nil {
		return n, err
	}
	e.log.Info("engine: image upload received", "image_id", id, "bytes", n)
	return n, nil
}

// writeErr is an io.Writer that remembers its writer's error, so that a
// failed copy can tell a failed write from a failed read.
type writeErr struct {
	w   io.Writer
	err error
}

func (w *writeErr) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

// acceptsUpload tells whether the image takes an upload: pending or failed.
func (e *Engine) acceptsUpload(ctx context.Context, id int64) error {
	img, err := e.getImage(ctx, id)
	if err != nil {
		return err
	}
	if img.Status != store.ImagePending && img.Status != store.ImageFailed {
		return fmt.Errorf("%w: image %d is %s", ErrImageNotPending, id, img.Status)
	}
	return nil
}

// hasUpload tells whether the image's upload directory holds anything.
func (e *Engine) hasUpload(id int64) bool {
	entries, _ := os.ReadDir(e.uploadDir(id))
	return len(entries) > 0
}

// removeUpload removes what the image's upload directory holds: the
// archive, anything else scp put there, unfinished HTTP uploads. The
// directory itself stays, root's and closed unless openUploadDir hands it
// back.
func (e *Engine) removeUpload(id int64) error {
	dir := e.uploadDir(id)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, de.Name())))
	}
	return errors.Join(errs...)
}

// findArchive opens the upload: the HTTP upload, or else the single file
// that scp put into the upload directory. The upload account can write
// that directory, so nothing in it is trusted: a symbolic link (which
// could point at a file only root may read) is never followed, and only a
// regular file is taken.
func (e *Engine) findArchive(id int64) (*os.File, error) {
	dir := e.uploadDir(id)
	if fi, err := os.Lstat(filepath.Join(dir, UploadFile)); err == nil && fi.Mode().IsRegular() {
		return openRegular(filepath.Join(dir, UploadFile))
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var files, ignored []string
	for _, de := range entries {
		switch {
		case strings.HasPrefix(de.Name(), "."):
		case de.Type().IsRegular():
			files = append(files, de.Name())
		case de.Type()&os.ModeSymlink != 0:
			ignored = append(ignored, de.Name()+" (a symbolic link)")
		case de.IsDir():
			ignored = append(ignored, de.Name()+" (a directory)")
		default:
			ignored = append(ignored, de.Name()+" (not a regular file)")
		}
	}
	switch len(files) {
	case 0:
		if len(ignored) > 0 {
			return nil, fmt.Errorf("image %d has no uploaded tarball: only %s, which is not taken; upload the tarball itself as a regular file", id, strings.Join(ignored, ", "))
		}
		return nil, fmt.Errorf("nothing was uploaded for image %d (PUT /images/%d/upload, or scp a tarball into %s)", id, id, dir)
	case 1:
		return openRegular(filepath.Join(dir, files[0]))
	}
	return nil, fmt.Errorf("image %d has %d uploaded files (%s); leave exactly one tarball", id, len(files), strings.Join(files, ", "))
}

// openRegular opens path for reading without following a final symbolic
// link or blocking on a FIFO, and refuses anything but a regular file
// (safefile.OpenRegular), saying what to upload instead.
func openRegular(path string) (*os.File, error) {
	f, err := safefile.OpenRegular(path)
	var notRegular *safefile.NotRegularError
	switch {
	case errors.Is(err, safefile.ErrSymlink):
		return nil, fmt.Errorf("the upload %s is a symbolic link, which is not followed; upload the tarball itself", filepath.Base(path))
	case errors.As(err, &notRegular):
		return nil, fmt.Errorf("the upload %s is not a regular file (%s); upload the tarball itself", filepath.Base(path), notRegular.Type)
	}
	return f, err
}

// UploadAccount is the OS account that uploads with scp through sshd,
// which runs sindri-upload-shell for it, confined to the uploads directory.
type UploadAccount = osuser.User

// SetUploadAccount turns scp uploads on: from now on a pending or failed
// image's upload directory is root:<account's group> 0770, writable by the
// account but not its to chmod, and a finalising or ready image's is
// root:root 0750. The uploads directory itself is made root's, mode 0755.
// Every directory above it must be root's, not writable by group or
// others (or another user could put a directory of their own in its
// place) and searchable by others (or the account cannot reach it): what
// is not is returned as a warning.
func (e *Engine) SetUploadAccount(a UploadAccount) (warning string, err error) {
	if a.UID == 0 {
		return "", fmt.Errorf("upload account %q is root", a.Name)
	}
	dir := e.opts.UploadsDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Lchown(dir, 0, 0); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	e.mu.Lock()
	e.uploadAcct = &a
	e.mu.Unlock()
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		if uid, _, ok := osuser.Owner(fi); ok && uid != 0 || fi.Mode().Perm()&0o022 != 0 {
			warning = fmt.Sprintf("%s is not root's or is writable by group or others (%s): another user could swap the uploads directory %s for their own", p, fi.Mode().Perm(), dir)
			break
		}
		if fi.Mode().Perm()&0o001 == 0 {
			warning = fmt.Sprintf("%s is not searchable by others (%s): the upload account cannot reach %s", p, fi.Mode().Perm(), dir)
			break
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	return warning, nil
}

// uploadAccount is the account set by SetUploadAccount; none means scp
// uploads are off and upload directories stay root's.
func (e *Engine) uploadAccount() (UploadAccount, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.uploadAcct == nil {
		return UploadAccount{}, false
	}
	return *e.uploadAcct, true
}

// openUploadDir lets the upload account write the image's upload
// directory (pending, or failed and to be uploaded again).
func (e *Engine) openUploadDir(id int64) error {
	a, ok := e.uploadAccount()
	if !ok {
		return nil
	}
	dir := e.uploadDir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if err := os.Lchown(dir, 0, int(a.GID)); err != nil {
		return err
	}
	return os.Chmod(dir, 0o770)
}

// closeUploadDir takes the image's upload directory back from the upload
// account: root:root 0750, so that nothing more can be written into it
// while it is finalised or once it is ready.
func (e *Engine) closeUploadDir(id int64) error {
	if _, ok := e.uploadAccount(); !ok {
		return nil
	}
	dir := e.uploadDir(id)
	if err := os.Lchown(dir, 0, 0); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Chmod(dir, 0o750); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}
