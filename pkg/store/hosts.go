package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// HostState is a fleet host's state as the API shows it. Active and
// draining are stored (set by drain and undrain); down is derived from the
// age of the host's last heartbeat, whatever was stored.
type HostState string

// Host states.
const (
	HostActive   HostState = "active"   // instances are placed on it
	HostDraining HostState = "draining" // its instances run on, no new one is placed on it
	HostDown     HostState = "down"     // no heartbeat within the down timeout
)

// Host is one sindrid host of a fleet, as its last heartbeat described it.
type Host struct {
	Name                 string    `db:"name"`
	PeerURL              string    `db:"peer_url"`
	PublicHostname       string    `db:"public_hostname"`
	StorageDriver        string    `db:"storage_driver"`
	TotalBytes           int64     `db:"total_bytes"`
	FreeBytes            int64     `db:"free_bytes"`
	ReserveBytes         int64     `db:"reserve_bytes"`
	RunningInstances     int       `db:"running_instances"` // postmasters running at the last heartbeat
	Instances            int       `db:"instances"`         // instances placed on it, whatever their status
	MaxInstances         int       `db:"max_instances"`     // 0: no cap
	MemoryTotalBytes     int64     `db:"memory_total_bytes"`
	MemoryAvailableBytes int64     `db:"memory_available_bytes"`
	ImageCopies          int       `db:"image_copies"` // images it holds a copy of, in any status
	State                HostState `db:"state"`
	HeartbeatAt          time.Time `db:"heartbeat_at"`
	CreatedAt            time.Time `db:"created_at"`
	UpdatedAt            time.Time `db:"updated_at"`
}

// Heartbeat is what a host records of itself each heartbeat.
type Heartbeat struct {
	Name, PeerURL, PublicHostname, StorageDriver string
	TotalBytes, FreeBytes, ReserveBytes          int64
	MaxInstances                                 int
	MemoryTotalBytes, MemoryAvailableBytes       int64
}

// hostColumns reads a host with its state as seen now: down when its
// heartbeat is older than $1 seconds. The database's clock decides, so
// hosts' clocks need not agree.
const hostColumns = `name, peer_url, public_hostname, storage_driver,
	total_bytes, free_bytes, reserve_bytes, running_instances, instances, max_instances,
	memory_total_bytes, memory_available_bytes,
	(select count(*) from image_copies c where c.host = name)::int as image_copies,
	case when heartbeat_at < now() - $1::float8 * interval '1 second' then 'down' else state end as state,
	heartbeat_at, created_at, updated_at`

// SetFleetHost names this host in a fleet: from then on the instances
// this store creates are the host's, and ports are allocated among its
// instances. "" (the default) is a single host.
func (s *Store) SetFleetHost(name string) { s.fleetHost.Store(&name) }

// FleetHost is the name SetFleetHost gave, or "".
func (s *Store) FleetHost() string {
	if p := s.fleetHost.Load(); p != nil {
		return *p
	}
	return ""
}

// RecordHeartbeat registers a host or refreshes its row: its figures, the
// instances running on it, and the time, which is the database's. A
// host's state (active or draining) is kept across its restarts. A live
// host of the same name at another peer URL is ErrConflict: two hosts
// were given one name. downAfter is the down timeout that decides
// whether that other host is alive.
func (s *Store) RecordHeartbeat(ctx context.Context, hb Heartbeat, downAfter time.Duration) (Host, error) {
	h, err := get[Host](ctx, s, `insert into hosts as h (name, peer_url, public_hostname, storage_driver,
			total_bytes, free_bytes, reserve_bytes, max_instances, memory_total_bytes, memory_available_bytes,
			running_instances)
		values ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
			(select count(*) from instances where host = $2 and status = 'running'))
		on conflict (name) do update set
			peer_url = excluded.peer_url, public_hostname = excluded.public_hostname,
			storage_driver = excluded.storage_driver, total_bytes = excluded.total_bytes,
			free_bytes = excluded.free_bytes, reserve_bytes = excluded.reserve_bytes,
			max_instances = excluded.max_instances, memory_total_bytes = excluded.memory_total_bytes,
			memory_available_bytes = excluded.memory_available_bytes,
			running_instances = excluded.running_instances, heartbeat_at = now()
		where h.peer_url = excluded.peer_url
			or h.heartbeat_at < now() - $1::float8 * interval '1 second'
		returning `+hostColumns,
		downAfter.Seconds(), hb.Name, hb.PeerURL, hb.PublicHostname, hb.StorageDriver,
		max(hb.TotalBytes, 0), max(hb.FreeBytes, 0), max(hb.ReserveBytes, 0), hb.MaxInstances,
		max(hb.MemoryTotalBytes, 0), max(hb.MemoryAvailableBytes, 0))
	if errors.Is(err, pgx.ErrNoRows) {
		return Host{}, fmt.Errorf("store: heartbeat of host %q: another host of that name, at a different peer_url, is alive: %w", hb.Name, ErrConflict)
	}
	return h, wrap(err, "heartbeat of host %q", hb.Name)
}

// ListHosts reads every host, by name, down when its heartbeat is older
// than downAfter.
func (s *Store) ListHosts(ctx context.Context, downAfter time.Duration) ([]Host, error) {
	hosts, err := list[Host](ctx, s, `select `+hostColumns+` from hosts order by name`, downAfter.Seconds())
	return hosts, wrap(err, "list hosts")
}

// GetHost reads one host; ErrNotFound if no host has that name.
func (s *Store) GetHost(ctx context.Context, name string, downAfter time.Duration) (Host, error) {
	h, err := get[Host](ctx, s, `select `+hostColumns+` from hosts where name = $2`, downAfter.Seconds(), name)
	return h, wrap(err, "get host %q", name)
}

// AdoptSingleHostRecords makes the records of a single host, made before
// the fleet, this host's when it is the first host of the fleet (no other
// host is registered): its instances, their tombstones, its backups and
// its sources (their host was null), and a ready copy of every ready image that has
// none. A host that joins a fleet already under way adopts nothing: the
// records of no host are the first host's, whose disk holds them. Call
// it after the host's first heartbeat, before its engine starts. It
// returns how many instances and images it adopted.
func (s *Store) AdoptSingleHostRecords(ctx context.Context, host string) (instances, images int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Two hosts registering at once take turns here: the second sees
		// the first.
		if _, err := tx.Exec(ctx, `lock table hosts in share row exclusive mode`); err != nil {
			return err
		}
		var others bool
		if err := tx.QueryRow(ctx, `select exists (select 1 from hosts where name <> $1)`, host).Scan(&others); err != nil || others {
			return err
		}
		tag, err := tx.Exec(ctx, `update instances set host = $1 where host is null`, host)
		if err != nil {
			return err
		}
		instances = tag.RowsAffected()
		for _, table := range []string{"instance_tombstones", "backups", "sources"} {
			if _, err := tx.Exec(ctx, `update `+table+` set host = $1 where host is null`, host); err != nil {
				return err
			}
		}
		tag, err = tx.Exec(ctx, `insert into image_copies (image_id, host, status)
			select id, $1, 'ready' from images i
			where status = 'ready' and not exists (select 1 from image_copies c where c.image_id = i.id)`, host)
		images = tag.RowsAffected()
		return err
	})
	return instances, images, wrap(err, "adopt the single host's records as host %q's", host)
}

// HostImageCopies reads the status of each copy of an image that host
// holds, by image id.
func (s *Store) HostImageCopies(ctx context.Context, host string) (map[int64]ImageCopyStatus, error) {
	rows, _ := s.pool.Query(ctx, `select image_id, status from image_copies where host = $1`, host)
	out := map[int64]ImageCopyStatus{}
	var id int64
	var status ImageCopyStatus
	_, err := pgx.ForEachRow(rows, []any{&id, &status}, func() error {
		out[id] = status
		return nil
	})
	return out, wrap(err, "image copies of host %q", host)
}

// SetHostState drains a host (HostDraining: nothing new is placed on it)
// or makes it active again; ErrNotFound if no host has that name,
// ErrInvalid for another state.
func (s *Store) SetHostState(ctx context.Context, name string, state HostState) error {
	if state != HostActive && state != HostDraining {
		return fmt.Errorf("store: set state of host %q to %q: %w", name, state, ErrInvalid)
	}
	tag, err := s.pool.Exec(ctx, `update hosts set state = $2 where name = $1`, name, state)
	return affected(tag, err, "set state of host %q", name)
}

// ImageCopyStatus is the state of an image's copy on one host.
type ImageCopyStatus string

// Image copy statuses.
const (
	CopyReceiving ImageCopyStatus = "receiving" // its stream is being received, or made here
	CopyReady     ImageCopyStatus = "ready"     // checked: instances may be cloned from it here
	CopyFailed    ImageCopyStatus = "failed"    // see the error; tried again later
)

// SetImageCopy records the state of an image's copy on a host, adding
// the record if there is none; ErrNotFound if the image or host is gone.
func (s *Store) SetImageCopy(ctx context.Context, imageID int64, host string, status ImageCopyStatus, errText string) error {
	_, err := s.pool.Exec(ctx, `insert into image_copies (image_id, host, status, error) values ($1, $2, $3, $4)
		on conflict (image_id, host) do update set status = excluded.status, error = excluded.error`,
		imageID, host, status, nullText(errText))
	if pgCode(err) == "23503" {
		return fmt.Errorf("store: record copy of image %d on host %q: %w: %w", imageID, host, ErrNotFound, err)
	}
	return wrap(err, "record copy of image %d on host %q", imageID, host)
}

// ImageReadyHosts reads the hosts that hold a ready copy of an image, by
// name.
func (s *Store) ImageReadyHosts(ctx context.Context, imageID int64) ([]string, error) {
	rows, _ := s.pool.Query(ctx, `select host from image_copies where image_id = $1 and status = 'ready' order by host`, imageID)
	hosts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if hosts == nil {
		hosts = []string{}
	}
	return hosts, wrap(err, "hosts of image %d", imageID)
}

// ErrNoHost: no host of the fleet can take an instance of the image now:
// none that is active, alive, holds a ready copy of the image, has free
// disk above its reserve and is under its max_instances.
var ErrNoHost = errors.New("no host available")

// placeInstance chooses a host and records the instance on it, in one
// statement. It locks every candidate host's row (active, alive, holding
// a ready copy of the image, with free disk above its reserve), in order
// of name so that concurrent placements never deadlock; a placement that
// waited for a lock reads the row as the other placement left it. Among
// the locked rows it takes the one with the most headroom: fewest
// instances placed, then most free disk above the reserve, and under its
// max_instances. Since hosts.instances is counted by a trigger in the
// placing transaction, placements from any hosts never put more than
// max_instances on one host. The locks are held until the instance's row
// commits: placements across the fleet take turns, each a few
// milliseconds.
const placeInstance = `with candidates as (
	select h.name, h.instances, h.free_bytes - h.reserve_bytes as headroom, h.max_instances
	from hosts h
	where h.state = 'active'
		and h.heartbeat_at >= now() - $5::float8 * interval '1 second'
		and h.free_bytes > h.reserve_bytes
		and exists (select 1 from image_copies c
			where c.image_id = $1 and c.host = h.name and c.status = 'ready')
	order by h.name
	for update of h
), chosen as (
	select name from candidates
	where max_instances = 0 or instances < max_instances
	order by instances, headroom desc, name
	limit 1
)
insert into instances (image_id, owner, expires_at, protected, host, creation_token)
	select $1, $2, $3, $4, chosen.name, $6 from chosen
	returning ` + instanceColumns

// PlaceInstance records a new instance of an image on the fleet's host
// with the most headroom (see placeInstance), which then creates it; the
// instance's Host names it. ErrNoHost if no host can take it, ErrNotFound
// if the image does not exist, a *QuotaError if in.Quota refuses it.
// downAfter is the down timeout: a host whose heartbeat is older is not
// chosen.
func (s *Store) PlaceInstance(ctx context.Context, in InstanceInput, downAfter time.Duration) (Instance, error) {
	args := []any{in.ImageID, in.Owner, utc(in.ExpiresAt), in.Protected, downAfter.Seconds(), nullText(in.CreationToken)}
	var inst Instance
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The image is not marked destroying until this instance
		// commits: a destroy, on any host, marks it only after, and then
		// sees the instance; a placement after the mark finds none.
		var destroying bool
		if err := tx.QueryRow(ctx, `select status = 'destroying' from images where id = $1 for share`, in.ImageID).Scan(&destroying); err != nil {
			return err
		}
		if destroying {
			return pgx.ErrNoRows
		}
		if in.Quota != (InstanceQuota{}) {
			if err := lockOwnerInstances(ctx, tx, in.Owner); err != nil {
				return err
			}
			if err := checkInstanceQuota(ctx, tx, in.Owner, in.Protected, 0, in.Quota); err != nil {
				return err
			}
		}
		rows, _ := tx.Query(ctx, placeInstance, args...)
		var err error
		inst, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Instance])
		return err
	})
	var qerr *QuotaError
	if errors.As(err, &qerr) {
		return Instance{}, qerr
	}
	if errors.Is(err, pgx.ErrNoRows) {
		if _, gerr := s.GetImage(ctx, in.ImageID); errors.Is(gerr, ErrNotFound) {
			return Instance{}, fmt.Errorf("store: place instance of image %d: %w", in.ImageID, ErrNotFound)
		}
		return Instance{}, fmt.Errorf("store: place instance of image %d: no active host with a ready copy of it, free disk above its reserve and room under its max_instances: %w", in.ImageID, ErrNoHost)
	}
	if err == nil {
		err = s.openCredentials(&inst)
	}
	return inst, wrap(err, "place instance of image %d", in.ImageID)
}

// ImageCopy is one host's copy of an image.
type ImageCopy struct {
	ImageID   int64           `db:"image_id"`
	Host      string          `db:"host"`
	Status    ImageCopyStatus `db:"status"`
	Error     string          `db:"error"`
	UpdatedAt time.Time       `db:"updated_at"`
}

// ListImageCopies reads every image's copies, by image and host.
func (s *Store) ListImageCopies(ctx context.Context) ([]ImageCopy, error) {
	copies, err := list[ImageCopy](ctx, s, `select image_id, host, status, coalesce(error, '') as error, updated_at
		from image_copies order by image_id, host`)
	return copies, wrap(err, "list image copies")
}
