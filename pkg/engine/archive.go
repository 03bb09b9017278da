package engine

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sindri-db/sindri/pkg/iocount"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/safefile"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/tarball"
)

// writeBackup archives the snapshot, records the outcome and destroys the
// snapshot.
func (e *Engine) writeBackup(ctx context.Context, id int64, snap storage.Entry) {
	started := time.Now()
	size, sum, err := e.archive(ctx, id, snap.Path)
	if derr := e.opts.Storage.Destroy(context.WithoutCancel(ctx), snap.Name); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
		e.log.Error("engine: destroying a backup's snapshot; reconcile retries", "backup_id", id, "err", derr)
	}
	if ctx.Err() != nil {
		return // deleted while being written
	}
	if err != nil {
		e.failBackup(ctx, id, err.Error())
		return
	}
	if err := e.opts.Store.SetBackupDone(ctx, id, e.backupPath(id), size, sum); err != nil {
		e.log.Error("engine: recording a finished backup", "backup_id", id, "err", err)
		return
	}
	e.log.Info("engine: backup done", "backup_id", id, "size_bytes", size,
		"duration_ms", time.Since(started).Milliseconds())
	e.audit(ctx, "create_backup", "backup", id, "ok", "")
}

// Not part of a backup: the postmaster's lock files, the instance's own
// TLS key and log (the restore and each clone make theirs), and what
// Postgres clears at start anyway.
var backupSkips = map[string]bool{
	"postmaster.pid": true, "postmaster.opts": true, VolumeRecordFile: true,
	postgres.ServerKeyFile: true, postgres.LogFile: true, postgres.LogFile + ".1": true,
}

var backupEmptied = map[string]bool{"pg_stat_tmp": true, "pg_dynshmem": true}

// archive writes the data directory at dir as tar.zst into BackupsDir and
// returns the archive's size and SHA-256 (hex). It writes a partial file
// and renames it into place once synced.
func (e *Engine) archive(ctx context.Context, id int64, dir string) (int64, string, error) {
	tmp := e.backupTempPath(id)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, "", err
	}
	defer os.Remove(tmp)
	defer f.Close()
	hash := sha256.New()
	counted := &iocount.Writer{W: io.MultiWriter(e.guardWriter(ctx, f, "a backup"), hash)}
	zw, err := zstd.NewWriter(counted, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return 0, "", err
	}
	if err := writeTar(ctx, zw, dir); err != nil {
		zw.Close()
		return 0, "", fmt.Errorf("writing the backup: %w", err)
	}
	if err := zw.Close(); err != nil {
		return 0, "", fmt.Errorf("writing the backup: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, "", err
	}
	if err := f.Close(); err != nil {
		return 0, "", err
	}
	if err := os.Rename(tmp, e.backupPath(id)); err != nil {
		return 0, "", err
	}
	if err := safefile.SyncDir(e.opts.BackupsDir); err != nil {
		return 0, "", err
	}
	return counted.N, hex.EncodeToString(hash.Sum(nil)), nil
}

// writeTar writes dir's tree as a tar stream, less what a backup leaves
// out: directories, regular files and symbolic links, with paths relative
// to dir, owners left out.
func writeTar(ctx context.Context, w io.Writer, dir string) error {
	return tarball.Write(ctx, w, dir, tarball.Options{Skip: backupSkip})
}

// backupSkip tells what a backup leaves out: backupSkips at the top,
// what is in backupEmptied, and Postgres's temporary files.
func backupSkip(rel string, d fs.DirEntry) bool {
	parent := filepath.Dir(rel)
	return (parent == "." && backupSkips[rel]) || backupEmptied[parent] || strings.HasPrefix(d.Name(), "pgsql_tmp")
}

// checkArchive reads a backup's archive through: it must be a whole
// tar.zst. It returns the archive's size and SHA-256 (hex).
func checkArchive(path string) (int64, string, error) {
	f, err := openRegular(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	hash := sha256.New()
	counted := &iocount.Writer{W: hash}
	zr, err := zstd.NewReader(io.TeeReader(f, counted))
	if err != nil {
		return 0, "", err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, "", err
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return 0, "", err
		}
	}
	// What follows the tar's end (its padding) is the archive's too.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return 0, "", err
	}
	if _, err := io.Copy(counted, f); err != nil {
		return 0, "", err
	}
	return counted.N, hex.EncodeToString(hash.Sum(nil)), nil
}
