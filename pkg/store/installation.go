package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// InstallationID is the id this metadata database was given when it was
// made (migration 0009): every volume sindri makes records it, so that a
// volume is never taken for one of another database.
func (s *Store) InstallationID(ctx context.Context) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, `select id::text from installation`).Scan(&id)
	return id, wrap(err, "installation id")
}

// InstanceTombstones reads the tombstones of those of ids whose instance
// record went (see DeleteInstance): each instance's creation time.
func (s *Store) InstanceTombstones(ctx context.Context, ids []int64) (map[int64]time.Time, error) {
	out := map[int64]time.Time{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, _ := s.pool.Query(ctx, `select instance_id, created_at from instance_tombstones
		where instance_id = any($1)`, ids)
	var id int64
	var created time.Time
	_, err := pgx.ForEachRow(rows, []any{&id, &created}, func() error {
		out[id] = created
		return nil
	})
	return out, wrap(err, "read instance tombstones")
}

// PruneTombstones deletes the tombstones older than before, except those
// of keep (instances whose volume is still there), and returns how many.
// In a fleet (SetFleetHost) it prunes this host's only: keep names the
// volumes on this host's disk, not another's.
func (s *Store) PruneTombstones(ctx context.Context, before time.Time, keep []int64) (int64, error) {
	if keep == nil {
		keep = []int64{}
	}
	tag, err := s.pool.Exec(ctx, `delete from instance_tombstones
		where deleted_at < $1 and instance_id <> all($2) and ($3 = '' or host = $3)`, before.UTC(), keep, s.FleetHost())
	return tag.RowsAffected(), wrap(err, "prune instance tombstones")
}

// IDFloors are the highest ids of each kind that exist outside the
// database (volumes, archives); 0 means none.
type IDFloors struct {
	Images, Instances, Backups int64
}

// AdvanceIDs makes sure that no id up to the floors is handed out again:
// a database restored from an older dump would otherwise give a new
// instance the id, and so the volume name, of one made after the dump.
// It returns the kinds whose sequence it moved.
func (s *Store) AdvanceIDs(ctx context.Context, f IDFloors) ([]string, error) {
	var moved []string
	for _, t := range []struct {
		table string
		floor int64
	}{{"images", f.Images}, {"instances", f.Instances}, {"backups", f.Backups}} {
		if t.floor <= 0 {
			continue
		}
		// Only forward: the last id handed out (none yet when the
		// sequence was never called) must be below the floor. The table
		// name is one of the three above.
		rows, _ := s.pool.Query(ctx, fmt.Sprintf(`select setval(pg_get_serial_sequence('%[1]s', 'id'), $1, true)
			from %[1]s_id_seq
			where $1 > case when is_called then last_value else last_value - 1 end`, t.table), t.floor)
		set, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return moved, wrap(err, "advance %s ids", t.table)
		}
		if len(set) > 0 {
			moved = append(moved, t.table)
		}
	}
	return moved, nil
}
