package engine

import (
	"context"
	"errors"

	"github.com/sindri-db/sindri/pkg/store"
)

// audit records an operation; a failure to record is logged, not fatal.
func (e *Engine) audit(ctx context.Context, action, targetType string, targetID int64, outcome, detail string) {
	err := e.opts.Store.Audit(ctx, store.AuditEntry{
		Actor: actorFrom(ctx), Action: action, TargetType: targetType, TargetID: targetID,
		Outcome: outcome, Detail: detail,
	})
	if err != nil {
		e.log.Error("engine: audit", "action", action, "err", err)
	}
}

// auditFailure records an operation that did not happen: "refused" when
// the engine said no (the state forbids it), "failed" when it went wrong.
func (e *Engine) auditFailure(ctx context.Context, action, targetType string, targetID int64, err error) {
	outcome := "failed"
	if errors.Is(err, ErrImageHasInstances) || errors.Is(err, ErrBackupRunning) || errors.Is(err, ErrInvalid) ||
		errors.Is(err, ErrQuotaExceeded) || errors.Is(err, ErrNoDiskSpace) {
		outcome = "refused"
	}
	e.audit(context.WithoutCancel(ctx), action, targetType, targetID, outcome, err.Error())
}

type actorKey struct{}

// WithActor names who acts for the audit log.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "sindrid"
}
