package store

import (
	"context"
	"time"
)

// SourceMode is how a source is refreshed.
type SourceMode string

// Source modes.
const (
	// SourceBasebackup: each refresh pulls a new base backup.
	SourceBasebackup SourceMode = "basebackup"
	// SourceReplica: a standby kept in sync; a refresh snapshots it.
	SourceReplica SourceMode = "replica"
)

// SourceStatus is where a source's refreshes stand.
type SourceStatus string

// Source statuses.
const (
	SourceIdle       SourceStatus = "idle"       // waiting for its next refresh
	SourceRefreshing SourceStatus = "refreshing" // a refresh is making an image (RefreshingImageID)
	SourceStreaming  SourceStatus = "streaming"  // replica mode: the standby follows the source
	SourceFailed     SourceStatus = "failed"     // the last refresh failed (Error); it is retried
)

// Source is a server that sindri makes images of, on a schedule. Its url
// is sealed in the store: URLRedacted is it without its password, and
// SourceURL reads the whole.
type Source struct {
	ID                  int64        `db:"id"`
	Name                string       `db:"name"`
	URLRedacted         string       `db:"url_redacted"`
	Mode                SourceMode   `db:"mode"`
	Schedule            string       `db:"schedule"` // "": refreshed only when asked
	AnonymisationScript string       `db:"anonymisation_script"`
	Keep                int          `db:"keep"`
	Status              SourceStatus `db:"status"`
	Error               string       `db:"error"`
	RefreshingImageID   int64        `db:"refreshing_image_id"` // 0: no refresh under way
	Failures            int          `db:"failures"`            // failed refreshes in a row
	LastRefreshAt       *time.Time   `db:"last_refresh_at"`
	NextRefreshAt       *time.Time   `db:"next_refresh_at"` // nil: none scheduled
	LastImageID         int64        `db:"last_image_id"`
	LagBytes            *int64       `db:"lag_bytes"`
	LagSeconds          *float64     `db:"lag_seconds"`
	// Host is the fleet host that keeps its standby and runs its
	// scheduled refreshes; "" on a single host.
	Host      string    `db:"host"`
	CreatedAt time.Time `db:"created_at"`
	UpdatedAt time.Time `db:"updated_at"`
}

// SourceInput is what CreateSource records and UpdateSource changes.
type SourceInput struct {
	Name                string
	URL                 string // stored sealed; UpdateSource keeps the old one when ""
	URLRedacted         string // URL without its password
	Mode                SourceMode
	Schedule            string
	AnonymisationScript string
	Keep                int
	NextRefreshAt       *time.Time
}

const sourceColumns = `id, name, url_redacted, mode, coalesce(schedule, '') as schedule,
	coalesce(anonymisation_script, '') as anonymisation_script, keep, status,
	coalesce(error, '') as error, coalesce(refreshing_image_id, 0) as refreshing_image_id, failures,
	last_refresh_at, next_refresh_at, coalesce(last_image_id, 0) as last_image_id,
	lag_bytes, lag_seconds, coalesce(host, '') as host, created_at, updated_at`

// CreateSource records a new idle source, its url sealed; ErrConflict
// when the name is taken. In a fleet (SetFleetHost) it is this host's.
func (s *Store) CreateSource(ctx context.Context, in SourceInput) (Source, error) {
	// The sealed url is bound to the row's id, taken first.
	var id int64
	if err := s.pool.QueryRow(ctx, `select nextval(pg_get_serial_sequence('sources', 'id'))`).Scan(&id); err != nil {
		return Source{}, wrap(err, "create source")
	}
	url, err := s.seal("sources", "url", id, in.URL)
	if err != nil {
		return Source{}, err
	}
	src, err := get[Source](ctx, s, `insert into sources
		(id, name, url, url_redacted, mode, schedule, anonymisation_script, keep, next_refresh_at, host)
		values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		returning `+sourceColumns,
		id, in.Name, url, in.URLRedacted, in.Mode, nullText(in.Schedule), nullText(in.AnonymisationScript),
		in.Keep, utc(in.NextRefreshAt), nullText(s.FleetHost()))
	return src, wrap(err, "create source")
}

// UpdateSource changes what a source is (its name, url, mode, schedule,
// script, keep and next refresh), not where its refreshes stand.
func (s *Store) UpdateSource(ctx context.Context, id int64, in SourceInput) (Source, error) {
	var url *string
	if in.URL != "" {
		var err error
		if url, err = s.seal("sources", "url", id, in.URL); err != nil {
			return Source{}, err
		}
	}
	src, err := get[Source](ctx, s, `update sources set name = $2, url = coalesce($3, url),
		url_redacted = case when $3::text is null then url_redacted else $4 end,
		mode = $5, schedule = $6, anonymisation_script = $7, keep = $8, next_refresh_at = $9
		where id = $1 returning `+sourceColumns,
		id, in.Name, url, in.URLRedacted, in.Mode, nullText(in.Schedule), nullText(in.AnonymisationScript),
		in.Keep, utc(in.NextRefreshAt))
	return src, wrap(err, "update source %d", id)
}

// GetSource reads one source.
func (s *Store) GetSource(ctx context.Context, id int64) (Source, error) {
	src, err := get[Source](ctx, s, `select `+sourceColumns+` from sources where id = $1`, id)
	return src, wrap(err, "get source %d", id)
}

// GetSourceByName reads the source of that name.
func (s *Store) GetSourceByName(ctx context.Context, name string) (Source, error) {
	src, err := get[Source](ctx, s, `select `+sourceColumns+` from sources where name = $1`, name)
	return src, wrap(err, "get source %q", name)
}

// ListSources reads every source, by id.
func (s *Store) ListSources(ctx context.Context) ([]Source, error) {
	srcs, err := list[Source](ctx, s, `select `+sourceColumns+` from sources order by id`)
	return srcs, wrap(err, "list sources")
}

// SourceURL reads a source's url, opened.
func (s *Store) SourceURL(ctx context.Context, id int64) (string, error) {
	var sealed string
	if err := s.pool.QueryRow(ctx, `select url from sources where id = $1`, id).Scan(&sealed); err != nil {
		return "", wrap(err, "get the url of source %d", id)
	}
	url, err := s.open("sources", "url", id, sealed)
	return url, wrap(err, "get the url of source %d", id)
}

// DeleteSource deletes a source's row; its images stay, without a source.
func (s *Store) DeleteSource(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `delete from sources where id = $1`, id)
	return affected(tag, err, "delete source %d", id)
}

// BeginSourceRefresh records that a refresh of the source is making
// image imageID.
func (s *Store) BeginSourceRefresh(ctx context.Context, id, imageID int64) error {
	tag, err := s.pool.Exec(ctx, `update sources set status = 'refreshing', refreshing_image_id = $2, error = null
		where id = $1`, id, imageID)
	return affected(tag, err, "begin a refresh of source %d", id)
}

// FinishSourceRefresh records a refresh that made ready image imageID at
// at, and the next one's time (nil: none).
func (s *Store) FinishSourceRefresh(ctx context.Context, id, imageID int64, at time.Time, next *time.Time) error {
	tag, err := s.pool.Exec(ctx, `update sources set status = case when mode = 'replica' then 'streaming' else 'idle' end,
		refreshing_image_id = null, error = null, failures = 0,
		last_refresh_at = $3, last_image_id = $2, next_refresh_at = $4
		where id = $1`, id, imageID, at.UTC(), utc(next))
	return affected(tag, err, "finish a refresh of source %d", id)
}

// FailSourceRefresh records a refresh that failed, why, and when it is
// tried again (nil: not).
func (s *Store) FailSourceRefresh(ctx context.Context, id int64, errText string, next *time.Time) error {
	tag, err := s.pool.Exec(ctx, `update sources set status = 'failed', refreshing_image_id = null,
		error = $2, failures = failures + 1, next_refresh_at = $3
		where id = $1`, id, nullText(errText), utc(next))
	return affected(tag, err, "fail a refresh of source %d", id)
}

// ScheduleSourceRefresh sets when the source is next refreshed, leaving
// a refresh under way alone.
func (s *Store) ScheduleSourceRefresh(ctx context.Context, id int64, next *time.Time) error {
	tag, err := s.pool.Exec(ctx, `update sources set next_refresh_at = $2 where id = $1`, id, utc(next))
	return affected(tag, err, "schedule source %d", id)
}

// DueSources reads the sources whose next refresh is at or before now
// and that are not refreshing, the longest due first.
func (s *Store) DueSources(ctx context.Context, now time.Time) ([]Source, error) {
	srcs, err := list[Source](ctx, s, `select `+sourceColumns+` from sources
		where next_refresh_at <= $1 and status <> 'refreshing' order by next_refresh_at, id`, now.UTC())
	return srcs, wrap(err, "list due sources")
}

// ListImagesOfSource reads the images a source made, newest first.
func (s *Store) ListImagesOfSource(ctx context.Context, sourceID int64) ([]Image, error) {
	imgs, err := list[Image](ctx, s, `select `+imageColumns+` from images where source_id = $1 order by id desc`, sourceID)
	return imgs, wrap(err, "list the images of source %d", sourceID)
}

// SetSourceStream records how a replica-mode source's standby streams:
// its lag (nil: unknown) and its status, streaming or failed with why.
// A refresh under way, and a refresh's failure (failures > 0), keep the
// status and error they set.
func (s *Store) SetSourceStream(ctx context.Context, id int64, status SourceStatus, errText string, lagBytes *int64, lagSeconds *float64) error {
	tag, err := s.pool.Exec(ctx, `update sources set lag_bytes = $2, lag_seconds = $3,
		error = case when status = 'refreshing' or (status = 'failed' and failures > 0) then error else $5 end,
		status = case when status = 'refreshing' or (status = 'failed' and failures > 0) then status else $4 end
		where id = $1`, id, lagBytes, lagSeconds, status, nullText(errText))
	return affected(tag, err, "record the stream of source %d", id)
}
