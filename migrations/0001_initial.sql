-- sindri's metadata: images, the instances cloned from them, backups,
-- API/OAuth tokens and the audit log.

-- updated_at follows every UPDATE, whatever statement makes it.
create function set_updated_at() returns trigger language plpgsql as $$
begin
	new.updated_at := now();
	return new;
end;
$$;

create table images (
	id                   bigserial primary key,
	name                 text,
	status               text not null default 'pending'
	                     check (status in ('pending', 'finalising', 'ready', 'failed')),
	error                text,
	pg_version           text,
	size_bytes           bigint,
	backed_up_at         timestamptz not null,
	anonymisation_script text,
	source_url           text,
	-- the backup the image was restored from; no foreign key, a backup's
	-- row may go before the image's.
	backup_id            bigint,
	created_at           timestamptz not null default now(),
	updated_at           timestamptz not null default now()
);

create trigger images_updated_at before update on images
	for each row execute function set_updated_at();

create table instances (
	id                 bigserial primary key,
	image_id           bigint not null references images (id),
	-- an e-mail, or 'upload' for the shared-secret user
	owner              text not null,
	status             text not null default 'creating'
	                   check (status in ('creating', 'running', 'stopped', 'failed', 'destroying')),
	-- null until allocated; unique among the rows (a destroyed instance's
	-- row is deleted), nulls never conflict.
	port               integer check (port between 1 and 65535),
	username           text,
	password           text,
	ca_certificate     text,
	server_certificate text,
	server_key         text,
	client_certificate text,
	client_key         text,
	error              text,
	pid                integer,
	expires_at         timestamptz,
	protected          boolean not null default false,
	created_at         timestamptz not null default now(),
	updated_at         timestamptz not null default now()
);

create unique index instances_port_key on instances (port);
create index instances_image_id_idx on instances (image_id);
create index instances_owner_idx on instances (owner);
create index instances_expires_at_idx on instances (expires_at);

create trigger instances_updated_at before update on instances
	for each row execute function set_updated_at();

-- A backup outlives its instance (and image): no foreign keys.
create table backups (
	id          bigserial primary key,
	instance_id bigint,
	image_id    bigint,
	status      text not null default 'running'
	            check (status in ('running', 'done', 'failed')),
	error       text,
	path        text,
	size_bytes  bigint,
	sha256      text,
	created_at  timestamptz not null default now(),
	updated_at  timestamptz not null default now(),
	check (num_nonnulls(instance_id, image_id) = 1)
);

create index backups_instance_id_idx on backups (instance_id);
create index backups_image_id_idx on backups (image_id);

create trigger backups_updated_at before update on backups
	for each row execute function set_updated_at();

create table tokens (
	id           bigserial primary key,
	kind         text not null check (kind in ('oauth', 'api')),
	-- an API token's name
	name         text,
	email        text,
	-- a hash of the secret; the secret itself is never stored
	token_hash   bytea not null unique,
	created_at   timestamptz not null default now(),
	last_used_at timestamptz,
	expires_at   timestamptz,
	revoked_at   timestamptz
);

create unique index tokens_api_name_key on tokens (name)
	where kind = 'api' and revoked_at is null;

create table audit_log (
	id          bigserial primary key,
	at          timestamptz not null default now(),
	actor       text not null,
	action      text not null,
	target_type text,
	target_id   bigint,
	outcome     text not null,
	detail      text
);
