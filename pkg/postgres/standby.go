package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StandbyConnInfo is primary_conninfo for a standby of s: its connection
// string (no password) naming passfile and appName. The password, if s
// has one, is written into passfile (mode 0600, owner's), which the
// caller keeps off disk (a run directory in memory): it never shows on a
// command line.
func (s Source) StandbyConnInfo(passfile, appName string, owner OSUser) (string, error) {
	esc := strings.NewReplacer(`\`, `\\`, ":", `\:`).Replace(s.password)
	f, err := os.OpenFile(passfile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	_, werr := f.WriteString("*:*:*:*:" + esc + "\n")
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		return "", werr
	}
	if err := owner.Chown(passfile, false); err != nil {
		return "", err
	}
	if u, err := url.Parse(s.ConnString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("passfile", passfile)
		q.Set("application_name", appName)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return fmt.Sprintf("%s passfile=%s application_name=%s", s.ConnString, confQuote(passfile), confQuote(appName)), nil
}

// StandbyLag is how a standby streams: Receiver is its WAL receiver's
// status ("streaming", "stopped", ...); LagBytes runs from the end of WAL
// the primary last reported to what the standby has replayed, LagSeconds
// since the last transaction it replayed (0 when it has replayed all it
// received); nil when unknown.
type StandbyLag struct {
	Receiver   string
	LagBytes   *int64
	LagSeconds *float64
}

// StandbyLag asks the running standby how it streams.
func (c *Cluster) StandbyLag(ctx context.Context) (StandbyLag, error) {
	var lag StandbyLag
	conn, err := c.connect(ctx, "")
	if err != nil {
		return lag, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = conn.QueryRow(ctx, `select coalesce((select status from pg_stat_wal_receiver), 'stopped'),
		pg_wal_lsn_diff((select latest_end_lsn from pg_stat_wal_receiver), pg_last_wal_replay_lsn())::bigint,
		case when pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0
		else extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 end`).Scan(&lag.Receiver, &lag.LagBytes, &lag.LagSeconds)
	if lag.LagBytes != nil && *lag.LagBytes < 0 {
		*lag.LagBytes = 0
	}
	return lag, err
}

// CopyDataDir copies the data directory from into the empty directory
// to, owners and modes kept, sharing blocks (reflinks) where the
// filesystem can: a snapshot of a running cluster becomes a volume of its
// own, with no tie to the snapshot.
func CopyDataDir(ctx context.Context, from, to string) error {
	cmd := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", "--", from+"/.", to)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// CatchUp waits until the standby has replayed the WAL its primary had
// written when it was called (the end the primary last reported), or
// until ctx ends; it tells whether it caught up.
func (c *Cluster) CatchUp(ctx context.Context) (bool, error) {
	conn, err := c.connect(ctx, "")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var target *string
	if err := conn.QueryRow(ctx, `select latest_end_lsn::text from pg_stat_wal_receiver`).Scan(&target); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return false, err
	}
	if target == nil {
		return false, nil // not streaming: nothing to wait for
	}
	for {
		var done bool
		if err := conn.QueryRow(ctx, `select pg_last_wal_replay_lsn() >= $1::pg_lsn`, *target).Scan(&done); err != nil {
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		}
		if done {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}
