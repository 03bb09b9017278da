package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// PullTimeout bounds one pg_basebackup from an image's source server.
const PullTimeout = 4 * time.Hour

// RedactSourceURL is a source_url without its password, or "" if it is
// not a connection string: the form kept for the record once the pull is
// over.
func RedactSourceURL(s string) string {
	src, err := parseSource(s)
	if err != nil {
		return ""
	}
	return src.ConnString
}

// parseSource checks a source_url: a postgres:// or postgresql:// URL, or
// a key=value connection string. The error never repeats the text, which
// may hold a password.
func parseSource(s string) (postgres.Source, error) {
	src, err := postgres.ParseSource(s)
	if err != nil {
		return src, fmt.Errorf("%w: source_url is not a PostgreSQL connection string; give a URL such as postgres://user:password@host:5432/postgres, or key=value settings such as host=db.example.com user=replicator", ErrInvalid)
	}
	return src, nil
}

// pullBaseBackup fills the empty data directory dir with a base backup of
// the image's source server, taken by the newest installed major's
// pg_basebackup (it reads older servers too), within PullTimeout. The
// password is kept out of every message.
func (e *Engine) pullBaseBackup(ctx context.Context, imageID int64, sourceURL, dir string) error {
	return e.pullInto(ctx, ImageVolume(imageID), sourceURL, dir)
}

// pullInto is pullBaseBackup into volume's directory dir, the operation
// named after volume (an image's, or a source's standby).
func (e *Engine) pullInto(ctx context.Context, volume, sourceURL, dir string) error {
	src, err := parseSource(sourceURL)
	if err != nil {
		return err
	}
	major, err := postgres.NewestMajor(e.opts.BinPattern)
	if err != nil {
		return err
	}
	c := &postgres.Cluster{DataDir: dir, Owner: e.opts.Owner}
	if c.BinDir, err = postgres.BinDir(e.opts.BinPattern, major); err != nil {
		return err
	}
	name, err := e.operationName(ctx, "pull", volume)
	if err != nil {
		return err
	}
	started := time.Now()
	e.log.Info("engine: pulling a base backup", "volume", volume, "source", src.ConnString)
	if err := c.BaseBackup(ctx, src, PullTimeout, name); err != nil {
		return err
	}
	e.log.Info("engine: base backup pulled", "source", src.ConnString, "duration_ms", time.Since(started).Milliseconds())
	return nil
}
