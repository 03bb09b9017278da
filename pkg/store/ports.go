package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// AllocatePort gives an instance a port in [min, max) that no other
// instance holds and for which isFree (the caller's bind check; nil means
// always free) returns true, and returns it: the first such port after the
// one it gave last, wrapping around to min. The unique index on
// instances.port settles races: a port another allocator took in the
// meantime fails the update and the next one is tried. ErrPortsExhausted
// when none is left; ErrNotFound if the instance does not exist. A port
// the instance already holds is given up for the new one.
//
// The first free port is found in the index on port (firstFreePort),
// rather than by reading every port held, and the search starts after the
// port given last rather than at min: on a host of a thousand instances
// holding the lowest ports, a create reads one row, not a thousand.
//
// Ports are per host: in a fleet (SetFleetHost), among the instances of
// this host; on a single host, among those of no host.
func (s *Store) AllocatePort(ctx context.Context, instanceID int64, min, max int, isFree func(port int) bool) (int, error) {
	start := int(s.nextPort.Load())
	if start <= min || start >= max {
		start = min
	}
	for _, r := range [][2]int{{start, max}, {min, start}} {
		p, err := s.allocatePortIn(ctx, instanceID, r[0], r[1], isFree)
		if errors.Is(err, ErrPortsExhausted) {
			continue
		}
		if err == nil {
			s.nextPort.Store(int64(p) + 1)
		}
		return p, err
	}
	return 0, fmt.Errorf("store: allocate port for instance %d in [%d, %d): %w", instanceID, min, max, ErrPortsExhausted)
}

// allocatePortIn is AllocatePort's search of [min, max).
func (s *Store) allocatePortIn(ctx context.Context, instanceID int64, min, max int, isFree func(port int) bool) (int, error) {
	query, args := firstFreePort, []any{0, max, instanceID}
	if host := s.FleetHost(); host != "" {
		query, args = firstFreePortOfHost, append(args, host)
	}
	for from := min; from < max; {
		var p int
		args[0] = from
		err := s.pool.QueryRow(ctx, query, args...).Scan(&p)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			return 0, wrap(err, "allocate port for instance %d", instanceID)
		}
		from = p + 1
		if isFree != nil && !isFree(p) {
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
	return 0, ErrPortsExhausted
}

// firstFreePort is the lowest port in [$1, $2) that no instance but $3
// holds: $1 itself, or else the port after the first held one (walking
// the index on port upwards from $1) whose successor nobody holds. Its
// cost is the run of held ports from $1, read in the index, never a
// row per instance sent back.
const firstFreePort = `(select $1::int as port
	where not exists (select 1 from instances where port = $1 and id <> $3 and host is null))
union all
(select i.port + 1 from instances i
	where i.port >= $1 and i.port < $2::int - 1 and i.id <> $3 and i.host is null
	and not exists (select 1 from instances j where j.port = i.port + 1 and j.id <> $3 and j.host is null)
	order by i.port
	limit 1)
limit 1`

// firstFreePortOfHost is firstFreePort among the instances of host $4.
const firstFreePortOfHost = `(select $1::int as port
	where not exists (select 1 from instances where port = $1 and id <> $3 and host = $4))
union all
(select i.port + 1 from instances i
	where i.port >= $1 and i.port < $2::int - 1 and i.id <> $3 and i.host = $4
	and not exists (select 1 from instances j where j.port = i.port + 1 and j.id <> $3 and j.host = $4)
	order by i.port
	limit 1)
limit 1`

// ReleasePort clears an instance's port.
func (s *Store) ReleasePort(ctx context.Context, instanceID int64) error {
	tag, err := s.pool.Exec(ctx, `update instances set port = null where id = $1`, instanceID)
	return affected(tag, err, "release port of instance %d", instanceID)
}
