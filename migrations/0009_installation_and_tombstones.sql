-- Which sindri installation this metadata database belongs to. Every
-- volume records it (and the instance or image it holds) in a small file
-- of its own, so that reconcile never touches a volume that another
-- database describes: a wrong database_url, a fresh database or another
-- installation's dump has another id.
create table installation (
	id         uuid primary key default gen_random_uuid(),
	created_at timestamptz not null default now(),
	-- one row only
	singleton  boolean not null default true unique check (singleton)
);
insert into installation default values;

-- A tombstone per instance whose record went (destroyed, or its creation
-- undone): reconcile removes an unreferenced volume only when its
-- instance has one, never merely because the store does not list it.
-- created_at is the instance's, which the volume's own record repeats.
create table instance_tombstones (
	instance_id bigint primary key,
	created_at  timestamptz not null,
	deleted_at  timestamptz not null default now()
);
