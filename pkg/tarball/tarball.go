// Package tarball writes a directory's tree as a tar stream: the writer of
// sindri's backups (package engine) and of the images that move between
// drivers of different kinds (package storage/portable). Package ingest
// reads them back.
package tarball

import (
	"archive/tar"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Options say what Write leaves out and keeps.
type Options struct {
	// Skip, when set, leaves out the entry at rel (relative to the
	// directory, never "."); a directory left out is left out whole.
	Skip func(rel string, d fs.DirEntry) bool
	// Owners keeps each entry's numeric owner and group; without it they
	// are written as 0. Owner names are never written: they differ
	// between hosts.
	Owners bool
	// Top writes the directory itself first, as "./", so that its mode
	// (and owner) travel too.
	Top bool
}

// Write writes dir's tree as a tar stream: directories, regular files and
// symbolic links, with paths relative to dir and their modes; sockets and
// the like are left out. The files must not change while it runs, as in
// a snapshot: a file's size when its header is written is its length.
func Write(ctx context.Context, w io.Writer, dir string, opts Options) error {
	tw := tar.NewWriter(w)
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if rel == "." && !opts.Top {
			return nil
		}
		if rel != "." && opts.Skip != nil && opts.Skip(rel, d) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		case info.IsDir(), info.Mode().IsRegular():
		default:
			return nil // sockets and the like are not data
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if !opts.Owners {
			hdr.Uid, hdr.Gid = 0, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.CopyBuffer(tw, io.LimitReader(src, hdr.Size), buf)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
