package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// ImageStatus is an image's place in its lifecycle.
type ImageStatus string

// Image statuses.
const (
	ImagePending    ImageStatus = "pending"    // created, data being uploaded
	ImageFinalising ImageStatus = "finalising" // upload done, being made read-only
	ImageReady      ImageStatus = "ready"      // instances can be cloned from it
	ImageFailed     ImageStatus = "failed"     // see Error
	ImageDestroying ImageStatus = "destroying" // being destroyed; the row goes last
)

// Image is an uploaded data directory kept as a read-only image.
type Image struct {
	ID                  int64       `db:"id"`
	Name                string      `db:"name"`
	Status              ImageStatus `db:"status"`
	Error               string      `db:"error"`
	PGVersion           string      `db:"pg_version"`
	SizeBytes           int64       `db:"size_bytes"`
	BackedUpAt          time.Time   `db:"backed_up_at"`
	AnonymisationScript string      `db:"anonymisation_script"`
	HasSourceURL        bool        `db:"has_source_url"`      // a pull's source_url is kept (sealed) until ready: ImageSourceURL
	SourceURLRedacted   string      `db:"source_url_redacted"` // the source_url without its password, for the record
	BackupID            int64       `db:"backup_id"`           // 0: none
	// Anonymised: an anonymisation script ran and the scrub after it
	// finished (set when the image is marked ready).
	Anonymised bool `db:"anonymised"`
	// UserWritten: the data may hold what an instance's user wrote (a
	// restore of an instance's backup, or of a backup of such an image).
	UserWritten bool `db:"user_written"`
	// SourceID is the source whose refresh made the image; 0: none.
	SourceID int64 `db:"source_id"`
	// Owner is set on a branch (an image of an instance's data): only
	// its owner and the upload user see it. "": everybody's.
	Owner string `db:"owner"`
	// FromInstanceID is the instance a branch was made of; 0: none.
	FromInstanceID int64 `db:"from_instance_id"`
	// FromSnapshot: the data is copied from a snapshot taken when the
	// image was recorded (of an instance, or of a source's standby).
	FromSnapshot bool      `db:"from_snapshot"`
	CreatedAt    time.Time `db:"created_at"`
	UpdatedAt    time.Time `db:"updated_at"`
	// Hosts are, in a fleet (a database with hosts), the hosts holding a
	// ready copy of the image, by name; nil on a single host.
	Hosts []string `db:"hosts"`
}

// ImageInput is what CreateImage records; the image starts pending.
type ImageInput struct {
	Name                string
	BackedUpAt          time.Time
	AnonymisationScript string
	SourceURL           string // stored sealed
	SourceURLRedacted   string // SourceURL without its password
	BackupID            int64  // 0: none
	UserWritten         bool
	SourceID            int64 // 0: none
	Owner               string
	FromInstanceID      int64 // 0: none
	FromSnapshot        bool
	// BranchQuota, if above 0, caps the images of Owner (a branch's):
	// they are counted, whatever their status, and the new row written in
	// one transaction under a lock per owner (pg_advisory_xact_lock), so
	// that concurrent branches cannot pass the cap together.
	BranchQuota int
}

const imageColumns = `id, coalesce(name, '') as name, status, coalesce(error, '') as error,
	coalesce(pg_version, '') as pg_version, coalesce(size_bytes, 0) as size_bytes, backed_up_at,
	coalesce(anonymisation_script, '') as anonymisation_script,
	source_url is not null as has_source_url,
	coalesce(source_url_redacted, '') as source_url_redacted, coalesce(backup_id, 0) as backup_id,
	anonymised, user_written, coalesce(source_id, 0) as source_id,
	coalesce(owner, '') as owner, coalesce(from_instance_id, 0) as from_instance_id, from_snapshot, created_at, updated_at,
	case when exists (select 1 from hosts) then coalesce((select array_agg(c.host order by c.host) from image_copies c
		where c.image_id = id and c.status = 'ready'), '{}') end as hosts`

// CreateImage records a new pending image, its source_url sealed; a
// *QuotaError (ErrQuotaExceeded) if in.BranchQuota refuses it.
func (s *Store) CreateImage(ctx context.Context, in ImageInput) (Image, error) {
	// A sealed source_url is bound to the row's id, taken first.
	var id *int64
	var sourceURL *string
	if in.SourceURL != "" {
		var next int64
		if err := s.pool.QueryRow(ctx, `select nextval(pg_get_serial_sequence('images', 'id'))`).Scan(&next); err != nil {
			return Image{}, wrap(err, "create image")
		}
		var err error
		if sourceURL, err = s.seal("images", "source_url", next, in.SourceURL); err != nil {
			return Image{}, err
		}
		id = &next
	}
	const insert = `insert into images
		(id, name, backed_up_at, anonymisation_script, source_url, source_url_redacted, backup_id, user_written, source_id, owner, from_instance_id, from_snapshot)
		values (coalesce($1, nextval(pg_get_serial_sequence('images', 'id'))), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
		returning ` + imageColumns
	args := []any{id, nullText(in.Name), in.BackedUpAt.UTC(), nullText(in.AnonymisationScript),
		sourceURL, nullText(in.SourceURLRedacted), nullInt(in.BackupID), in.UserWritten, nullInt(in.SourceID),
		nullText(in.Owner), nullInt(in.FromInstanceID), in.FromSnapshot}
	if in.BranchQuota <= 0 || in.Owner == "" {
		img, err := get[Image](ctx, s, insert, args...)
		return img, wrap(err, "create image")
	}
	var img Image
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockOwnerBranches(ctx, tx, in.Owner); err != nil {
			return err
		}
		if err := checkBranchQuota(ctx, tx, in.Owner, in.BranchQuota); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, insert, args...)
		var err error
		img, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Image])
		return err
	})
	var qerr *QuotaError
	if errors.As(err, &qerr) {
		return img, qerr
	}
	return img, wrap(err, "create image")
}

// ImageSourceURL reads an image's source_url, opened; "" once the image
// is ready (or when it has none).
func (s *Store) ImageSourceURL(ctx context.Context, id int64) (string, error) {
	var sealed string
	err := s.pool.QueryRow(ctx, `select coalesce(source_url, '') from images where id = $1`, id).Scan(&sealed)
	if err != nil {
		return "", wrap(err, "get the source_url of image %d", id)
	}
	url, err := s.open("images", "source_url", id, sealed)
	return url, wrap(err, "get the source_url of image %d", id)
}

// CountImagesByStatus counts the images by status; it reads no secret
// column.
func (s *Store) CountImagesByStatus(ctx context.Context) (map[ImageStatus]int, error) {
	return countByStatus[ImageStatus](ctx, s, "images")
}

// CountImagesByOwner counts the images of each owner (branches), whatever
// their status, as ImageInput.BranchQuota counts them; images without an
// owner are left out.
func (s *Store) CountImagesByOwner(ctx context.Context) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `select owner, count(*) from images where owner is not null group by owner`)
	if err != nil {
		return nil, wrap(err, "count images by owner")
	}
	counts := map[string]int64{}
	var owner string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&owner, &n}, func() error {
		counts[owner] = n
		return nil
	})
	return counts, wrap(err, "count images by owner")
}

// GetImage reads one image.
func (s *Store) GetImage(ctx context.Context, id int64) (Image, error) {
	img, err := get[Image](ctx, s, `select `+imageColumns+` from images where id = $1`, id)
	return img, wrap(err, "get image %d", id)
}

// ListImages reads every image, newest first.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	imgs, err := list[Image](ctx, s, `select `+imageColumns+` from images order by id desc`)
	return imgs, wrap(err, "list images")
}

// SetImageStatus sets an image's status and error ("" clears it).
func (s *Store) SetImageStatus(ctx context.Context, id int64, status ImageStatus, errText string) error {
	tag, err := s.pool.Exec(ctx, `update images set status = $2, error = $3 where id = $1`,
		id, status, nullText(errText))
	return affected(tag, err, "set image %d status", id)
}

// MarkImageReady records a finalised image: ready, its PostgreSQL version
// and size, whether it was anonymised, no error, and no source_url any
// more (the pull is over; its redacted form stays). In a fleet
// (SetFleetHost), the same statement records this host's copy of the
// image ready: the host that made an image holds its first copy.
func (s *Store) MarkImageReady(ctx context.Context, id int64, pgVersion string, sizeBytes int64, anonymised bool) error {
	const update = `update images
		set status = 'ready', error = null, pg_version = $2, size_bytes = $3, anonymised = $4, source_url = null
		where id = $1`
	args := []any{id, nullText(pgVersion), sizeBytes, anonymised}
	query := update
	if host := s.FleetHost(); host != "" {
		query = `with ready as (` + update + ` returning id)
			insert into image_copies (image_id, host, status) select id, $5, 'ready' from ready
			on conflict (image_id, host) do update set status = 'ready', error = null`
		args = append(args, host)
	}
	tag, err := s.pool.Exec(ctx, query, args...)
	return affected(tag, err, "mark image %d ready", id)
}

// DeleteImage deletes an image's row; ErrInUse while instances reference it.
func (s *Store) DeleteImage(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `delete from images where id = $1`, id)
	return affected(tag, err, "delete image %d", id)
}
