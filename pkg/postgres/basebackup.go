package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sindri-db/sindri/pkg/operation"
)

// ErrNotConnString: the text is not a PostgreSQL connection string.
var ErrNotConnString = errors.New("not a PostgreSQL connection string")

// Source is a server to pull a base backup from: the connection string
// handed to pg_basebackup, without its password, which goes in PGPASSWORD
// instead (so that it shows in no process list), and is kept out of every
// message.
type Source struct {
	// ConnString is the connection string without its password.
	ConnString string
	password   string
}

// Redact removes the source's password from a message, whatever quoted
// it.
func (s Source) Redact(msg string) string {
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

// passwordSetting is a password=... setting of a key=value connection
// string: a value unquoted or in single quotes with backslash escapes.
var (
	passwordSetting = regexp.MustCompile(`(^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)`)
	backslashEscape = regexp.MustCompile(`\\(.)`)
)

// ParseSource reads a connection string: a postgres:// or postgresql://
// URL, or key=value settings. Anything else is ErrNotConnString, whose
// message never repeats the text, which may hold a password.
func ParseSource(s string) (Source, error) {
	var src Source
	switch {
	case strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://"):
		u, err := url.Parse(s)
		if err != nil {
			return src, ErrNotConnString
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
		src.ConnString = u.String()
	case strings.Contains(s, "="):
		for _, m := range passwordSetting.FindAllStringSubmatch(s, -1) {
			v := m[2]
			if strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") && len(v) >= 2 {
				v = v[1 : len(v)-1]
			}
			src.password = backslashEscape.ReplaceAllString(v, "$1")
		}
		src.ConnString = strings.TrimSpace(passwordSetting.ReplaceAllString(s, "$1"))
	default:
		return src, ErrNotConnString
	}
	if _, err := pgconn.ParseConfig(s); err != nil {
		return src, ErrNotConnString
	}
	return src, nil
}

// BaseBackup fills the empty DataDir with pg_basebackup from src, as
// Owner, streaming the WAL the backup needs so that a start recovers to
// consistency. BinDir may be the newest installed major's: it reads older
// servers too. It runs as an operation child named name (see
// pkg/operation), for at most timeout; its error quotes pg_basebackup,
// with src's password taken out.
func (c *Cluster) BaseBackup(ctx context.Context, src Source, timeout time.Duration, name string) error {
	if err := c.Owner.Chown(c.DataDir, false); err != nil {
		return err
	}
	if err := os.Chmod(c.DataDir, 0o700); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	env := append([]string{}, clientEnv...)
	if src.password != "" {
		env = append(env, "PGPASSWORD="+src.password)
	}
	cmd := c.Command(ctx, "pg_basebackup", env,
		"-d", src.ConnString, "-D", c.DataDir, "-X", "stream", "--checkpoint=fast", "--no-password")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := operation.Run(cmd, name); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 4096 {
			msg = "..." + msg[len(msg)-4096:]
		}
		if msg == "" {
			msg = err.Error()
		}
		if ctx.Err() == context.DeadlineExceeded {
			msg = fmt.Sprintf("gave up after %s: %s", timeout, msg)
		}
		return errors.New(src.Redact(fmt.Sprintf("pg_basebackup from %s failed: %s", src.ConnString, msg)))
	}
	return nil
}
