package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// AllocatePort gives an instance the lowest port in [min, max) that no
// other instance holds and for which isFree (the caller's bind check; nil
// means always free) returns true, and returns it. The unique index on
// instances.port settles races: a port another allocator took in the
// meantime fails the update and the next one is tried. ErrPortsExhausted
// when none is left; ErrNotFound if the instance does not exist. A port
// the instance already holds is given up for the new one.
func (s *Store) AllocatePort(ctx context.Context, instanceID int64, min, max int, isFree func(port int) bool) (int, error) {
	rows, _ := s.pool.Query(ctx, `select port from instances
		where port >= $1 and port < $2 and id <> $3`, min, max, instanceID)
	taken, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return 0, wrap(err, "allocate port for instance %d", instanceID)
	}
	held := make(map[int]bool, len(taken))
	for _, p := range taken {
		held[p] = true
	}
	for p := min; p < max; p++ {
		if held[p] || (isFree != nil && !isFree(p)) {
			continue
		}
		tag, err := s.pool.Exec(ctx, `update instances set port = $2 where id = $1`, instanceID, p)
		if pgCode(err) == "23505" { // taken since we looked
			continue
		}
		if err := affected(tag, err, "allocate port %d for instance %d", p, instanceID); err != nil {
			return 0, err
		}
		return p, nil
	}
	return 0, fmt.Errorf("store: allocate port for instance %d in [%d, %d): %w", instanceID, min, max, ErrPortsExhausted)
}

// ReleasePort clears an instance's port.
func (s *Store) ReleasePort(ctx context.Context, instanceID int64) error {
	tag, err := s.pool.Exec(ctx, `update instances set port = null where id = $1`, instanceID)
	return affected(tag, err, "release port of instance %d", instanceID)
}
