-- Sources: servers that sindri pulls images from on a schedule. The url
-- (which may hold the password) is stored sealed only; url_redacted is
-- the same without its password, what the API shows.
create table sources (
	id                   bigserial primary key,
	name                 text not null unique
	                     check (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
	url                  text not null check (url like 'sindri:v1:%'),
	url_redacted         text not null,
	mode                 text not null check (mode in ('basebackup', 'replica')),
	-- an interval ("6h"), a five-field cron expression in UTC, or null:
	-- refreshed only when asked
	schedule             text,
	anonymisation_script text,
	keep                 integer not null check (keep between 1 and 1000),
	status               text not null default 'idle'
	                     check (status in ('idle', 'refreshing', 'streaming', 'failed')),
	error                text,
	-- the image a refresh under way is making: a crash leaves it here for
	-- the next start to finish or undo
	refreshing_image_id  bigint,
	-- refreshes that failed in a row, for the retry's backoff
	failures             integer not null default 0,
	last_refresh_at      timestamptz,
	next_refresh_at      timestamptz,
	last_image_id        bigint,
	lag_bytes            bigint,
	lag_seconds          double precision,
	created_at           timestamptz not null default now(),
	updated_at           timestamptz not null default now()
);

create trigger sources_updated_at before update on sources
	for each row execute function set_updated_at();

-- The source an image was refreshed from; its images stay, as plain
-- images, when a source is deleted.
alter table images add column source_id bigint references sources (id) on delete set null;
create index images_source_id_idx on images (source_id);

-- Branches: an image made of an instance's data carries its owner (the
-- instance's), who alone sees it besides the upload user, and the
-- instance it was made of (no foreign key: the instance may go first).
-- Images without an owner are everybody's to see.
alter table images add column owner text;
alter table images add column from_instance_id bigint;
-- The image's data is copied from a snapshot (branch-ID) taken when it was
-- recorded: of an instance (a branch) or of a source's standby (a
-- replica-mode refresh).
alter table images add column from_snapshot boolean not null default false;
