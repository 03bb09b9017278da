package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"time"
)

// sslRequestCode is the SSLRequest message's code (protocol 1234.5679).
const sslRequestCode = 80877103

// ErrNoAnswer: a postmaster's socket stayed silent until the deadline.
var ErrNoAnswer = errors.New("no answer")

// answers tells whether the postmaster on the unix socket of port in
// socketDir answers a connection before ctx ends: it sends an SSLRequest,
// which the child the postmaster forks for the connection answers with one
// byte (N on a unix socket) before any login, and hangs up. A stopped or
// wedged postmaster accepts nothing, so the socket stays silent
// (ErrNoAnswer); yet the probe costs a fork, not a login with its
// authentication and catalog reads, which, times a thousand idle
// instances, was a large part of a dense host's idle load. Any other
// error came at once (no socket, a refused or full queue).
func answers(ctx context.Context, socketDir string, port int) error {
	path := filepath.Join(socketDir, fmt.Sprintf(".s.PGSQL.%d", port))
	silent := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("postgres on %s: %w within the deadline: %w", path, ErrNoAnswer, err)
		}
		return fmt.Errorf("postgres on %s: %w", path, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return silent(err)
	}
	defer conn.Close()
	// The deadline is set once ctx is done, so that ctx.Err() tells a
	// timeout from an error of the connection.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], sslRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		return silent(err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return silent(err)
	}
	return nil
}
