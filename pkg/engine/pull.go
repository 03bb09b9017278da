package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sindri-db/sindri/pkg/postgres"
)

// PullTimeout bounds one pg_basebackup from an image's source server.
const PullTimeout = 4 * time.Hour

// source is a parsed source_url: the connection string handed to
// pg_basebackup, without its password, which goes in PGPASSWORD instead
// (so that it shows in no process list), and is kept out of every message.
type source struct {
	connString string
	password   string
}

// redact removes the source's password from a message, whatever quoted it.
func (s source) redact(msg string) string {
	if s.password == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, s.password, "********")
	if esc := url.QueryEscape(s.password); esc != s.password {
		msg = strings.ReplaceAll(msg, esc, "********")
	}
	if esc := url.PathEscape(s.password); esc != s.password {
		msg = strings.ReplaceAll(msg, esc, "********")
	}
	return msg
}

// RedactSourceURL is a source_url without its password, or "" if it is
// not a connection string: the form kept for the record once the pull is
// over.
func RedactSourceURL(s string) string {
	src, err := parseSource(s)
	if err != nil {
		return ""
	}
	return src.connString
}

// passwordSetting is a password=... setting of a key=value connection
// string: a value unquoted or in single quotes with backslash escapes.
var (
	passwordSetting = regexp.MustCompile(`(^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)`)
	backslashEscape = regexp.MustCompile(`\\(.)`)
)

// parseSource checks a source_url: a postgres:// or postgresql:// URL, or
// a key=value connection string. The error never repeats the text, which
// may hold a password.
func parseSource(s string) (source, error) {
	invalid := fmt.Errorf("%w: source_url is not a PostgreSQL connection string; give a URL such as postgres://user:password@host:5432/postgres, or key=value settings such as host=db.example.com user=replicator", ErrInvalid)
	var src source
	switch {
	case strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://"):
		u, err := url.Parse(s)
		if err != nil {
			return src, invalid
		}
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				src.password = pw
				u.User = url.User(u.User.Username())
			}
		}
		if q := u.Query(); q.Has("password") {
			src.password = q.Get("password")
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		src.connString = u.String()
	case strings.Contains(s, "="):
		for _, m := range passwordSetting.FindAllStringSubmatch(s, -1) {
			v := m[2]
			if strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") && len(v) >= 2 {
				v = v[1 : len(v)-1]
			}
			src.password = backslashEscape.ReplaceAllString(v, "$1")
		}
		src.connString = strings.TrimSpace(passwordSetting.ReplaceAllString(s, "$1"))
	default:
		return src, invalid
	}
	if _, err := pgconn.ParseConfig(s); err != nil {
		return src, invalid
	}
	return src, nil
}

// pullBaseBackup fills the empty data directory dir with pg_basebackup
// (the newest installed major: it reads older servers too) from the
// image's source server, as the postgres OS user, streaming the WAL the
// backup needs so that the private start recovers to consistency.
func (e *Engine) pullBaseBackup(ctx context.Context, imageID int64, sourceURL, dir string) error {
	src, err := parseSource(sourceURL)
	if err != nil {
		return err
	}
	major, err := postgres.NewestMajor(e.opts.BinPattern)
	if err != nil {
		return err
	}
	binDir, err := postgres.BinDir(e.opts.BinPattern, major)
	if err != nil {
		return err
	}
	if err := e.opts.Owner.Chown(dir, false); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, PullTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_basebackup"),
		"-d", src.connString, "-D", dir, "-X", "stream", "--checkpoint=fast", "--no-password")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PGPASSFILE=/dev/null", "PGSERVICEFILE=/dev/null"}
	if src.password != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+src.password)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: e.opts.Owner.UID, Gid: e.opts.Owner.GID}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := time.Now()
	e.log.Info("engine: pulling a base backup", "image_id", imageID, "source", src.connString)
	if err := runOperation(cmd, "pull "+ImageVolume(imageID)); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 4096 {
			msg = "..." + msg[len(msg)-4096:]
		}
		if msg == "" {
			msg = err.Error()
		}
		if ctx.Err() == context.DeadlineExceeded {
			msg = fmt.Sprintf("gave up after %s: %s", PullTimeout, msg)
		}
		return errors.New(src.redact(fmt.Sprintf("pg_basebackup from %s failed: %s", src.connString, msg)))
	}
	e.log.Info("engine: base backup pulled", "source", src.connString, "duration_ms", time.Since(started).Milliseconds())
	return nil
}
