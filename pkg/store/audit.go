package store

import (
	"context"
	"time"
)

// AuditEntry is one line of the audit log: who did what to which object,
// and how it went.
type AuditEntry struct {
	ID         int64     `db:"id"`
	At         time.Time `db:"at"` // zero in Audit: now
	Actor      string    `db:"actor"`
	Action     string    `db:"action"`
	TargetType string    `db:"target_type"` // e.g. "image", "instance"
	TargetID   int64     `db:"target_id"`   // 0: none
	Outcome    string    `db:"outcome"`     // e.g. "ok", "denied", "failed"
	Detail     string    `db:"detail"`
}

const auditColumns = `id, at, actor, action, coalesce(target_type, '') as target_type,
	coalesce(target_id, 0) as target_id, outcome, coalesce(detail, '') as detail`

// Audit appends e to the audit log (its ID is ignored).
func (s *Store) Audit(ctx context.Context, e AuditEntry) error {
	var at *time.Time
	if !e.At.IsZero() {
		at = utc(&e.At)
	}
	_, err := s.pool.Exec(ctx, `insert into audit_log
		(at, actor, action, target_type, target_id, outcome, detail)
		values (coalesce($1, now()), $2, $3, $4, $5, $6, $7)`,
		at, e.Actor, e.Action, nullText(e.TargetType), nullInt(e.TargetID), e.Outcome, nullText(e.Detail))
	return wrap(err, "audit %s %s", e.Actor, e.Action)
}

// AuditLog reads the latest limit entries (all of them if limit <= 0),
// newest first, in the order they were appended.
func (s *Store) AuditLog(ctx context.Context, limit int) ([]AuditEntry, error) {
	var n *int
	if limit > 0 {
		n = &limit
	}
	entries, err := list[AuditEntry](ctx, s, `select `+auditColumns+` from audit_log
		order by id desc limit $1`, n)
	return entries, wrap(err, "audit log")
}
