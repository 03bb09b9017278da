package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// SecretsLock is the shared secrets lock as a running sindrid holds it
// (HoldSecretsLock), so that a key rotation (LockSecrets, exclusive) cannot
// run meanwhile.
//
// An advisory lock belongs to a session on one server. When the metadata
// database's leader changes (a switchover or a failover), the session and
// its lock are gone, and a rotation could take the lock on the new leader.
// So the lock is held on a connection of its own that is always waiting
// for the server, which notices the loss as soon as the server goes. From
// then on nothing is sealed (ErrUnavailable) until the lock is taken again
// on a new connection; the key file is then read again before sealing
// resumes, so that a rotation that ran in between (every secret sealed
// again with a new key, the old key dropped from the file) is taken up,
// never undone.
type SecretsLock struct {
	store   *Store
	keyPath string
	log     *slog.Logger
	held    atomic.Bool
	cancel  context.CancelFunc
	done    chan struct{}
	once    sync.Once
}

// The waits between attempts to take the secrets lock again.
const (
	secretsRetryFirst = 200 * time.Millisecond
	secretsRetryMax   = 5 * time.Second
)

// HoldSecretsLock takes the shared secrets lock and holds it until Release
// (or Close), taking it again whenever its connection is lost; keyPath is
// the key file to read again then. ErrLocked when a key rotation holds it
// now.
func (s *Store) HoldSecretsLock(ctx context.Context, keyPath string, log *slog.Logger) (*SecretsLock, error) {
	conn, err := s.lockSecretsShared(ctx)
	if err != nil {
		return nil, err
	}
	keepCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &SecretsLock{store: s, keyPath: keyPath, log: log, cancel: cancel, done: make(chan struct{})}
	l.held.Store(true)
	s.secretsLock.Store(l)
	go l.keep(keepCtx, conn)
	return l, nil
}

// Held tells whether the lock is held now.
func (l *SecretsLock) Held() bool { return l.held.Load() }

// Release releases the lock, closes its connection and stops taking it
// again. Nothing is sealed by the store afterwards.
func (l *SecretsLock) Release() {
	l.once.Do(func() {
		l.cancel()
		<-l.done
		l.held.Store(false)
	})
}

// lockSecretsShared opens a connection of its own (to the host that takes
// writes, like the pool's) and takes the shared lock on it.
func (s *Store) lockSecretsShared(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig)
	if err != nil {
		return nil, wrap(err, "lock secrets")
	}
	var got bool
	if err := conn.QueryRow(ctx, "select pg_try_advisory_lock_shared($1)", secretsLockKey).Scan(&got); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, wrap(err, "lock secrets")
	}
	if !got {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("store: lock secrets: %w", ErrLocked)
	}
	return conn, nil
}

// keep waits on the lock's connection, which the server never writes to
// unasked: the wait ends only when the connection is lost, or at Release.
func (l *SecretsLock) keep(ctx context.Context, conn *pgx.Conn) {
	defer close(l.done)
	for {
		err := conn.PgConn().WaitForNotification(ctx)
		if ctx.Err() != nil {
			// Released before the connection closes, so that a rotation
			// started right after Release finds the lock free.
			unlockCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn.Exec(unlockCtx, "select pg_advisory_unlock_shared($1)", secretsLockKey)
			conn.Close(unlockCtx) // which releases it in any case
			cancel()
			return
		}
		if err == nil {
			continue
		}
		l.held.Store(false)
		conn.Close(context.Background())
		l.log.Warn("store: the secrets lock's connection to the metadata database is lost (its leader changing?); nothing is sealed until the lock is taken again",
			"err", err)
		if conn = l.retake(ctx); conn == nil {
			return
		}
	}
}

// retake takes the lock again on a new connection, then reads the key
// file again; nil once ctx ends.
func (l *SecretsLock) retake(ctx context.Context) *pgx.Conn {
	wait := secretsRetryFirst
	for attempt := 1; ; attempt++ {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(wait*2, secretsRetryMax)
		conn, err := l.store.lockSecretsShared(ctx)
		if err != nil {
			if ctx.Err() == nil {
				l.log.Warn("store: taking the secrets lock again", "attempt", attempt, "err", err)
			}
			continue
		}
		if _, err := l.store.LoadKeyring(ctx, l.keyPath, false); err != nil {
			conn.Close(context.Background())
			if ctx.Err() == nil {
				l.log.Error("store: reading the secrets key file again after taking the lock again", "attempt", attempt, "err", err)
			}
			continue
		}
		l.held.Store(true)
		l.log.Info("store: the secrets lock is held again and the key file read again", "key_id", l.store.Keyring().Current())
		return conn
	}
}
