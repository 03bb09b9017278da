package engine

import (
	"path/filepath"
	"strconv"
	"strings"
)

// ImageVolume and InstanceVolume name an image's and an instance's entry
// in storage; names come from ids, never from user input.
func ImageVolume(id int64) string    { return "image-" + strconv.FormatInt(id, 10) }
func InstanceVolume(id int64) string { return "instance-" + strconv.FormatInt(id, 10) }

// UploadVolume names the writable volume an image's data is prepared in
// before it is frozen.
func UploadVolume(id int64) string { return "upload-" + strconv.FormatInt(id, 10) }

// BackupVolume names the read-only snapshot a backup is read from while
// it is written.
func BackupVolume(id int64) string { return "backup-" + strconv.FormatInt(id, 10) }

func instanceIDOf(volume string) (int64, bool) {
	s, ok := strings.CutPrefix(volume, "instance-")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(s, 10, 64)
	return id, err == nil && id > 0
}

func backupIDOf(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, "backup-")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	return id, err == nil && id > 0
}

// BackupFile is the name of a finished backup's archive in BackupsDir.
func BackupFile(id int64) string { return strconv.FormatInt(id, 10) + ".tar.zst" }

// socketDir is kept short: a unix socket's path has at most 107 bytes.
func (e *Engine) socketDir(id int64) string {
	return filepath.Join(e.opts.RunDir, strconv.FormatInt(id, 10))
}

func (e *Engine) uploadDir(id int64) string {
	return filepath.Join(e.opts.UploadsDir, strconv.FormatInt(id, 10))
}

func (e *Engine) backupPath(id int64) string {
	return filepath.Join(e.opts.BackupsDir, BackupFile(id))
}

func (e *Engine) backupTempPath(id int64) string {
	return filepath.Join(e.opts.BackupsDir, "."+BackupFile(id)+".partial")
}
