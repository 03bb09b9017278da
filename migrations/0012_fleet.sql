-- The fleet: sindrid hosts sharing this database. Each host registers
-- itself and refreshes its row every heartbeat; a host whose heartbeat is
-- older than the reader's down timeout is down (derived, never stored).
-- Single-host sindrid never writes here: its instances' host is null.
create table hosts (
	name              text primary key
	                  check (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
	peer_url          text not null,
	public_hostname   text not null,
	storage_driver    text not null,
	total_bytes       bigint not null default 0 check (total_bytes >= 0),
	free_bytes        bigint not null default 0 check (free_bytes >= 0),
	-- free space the host keeps (limits.disk_reserve): nothing is placed
	-- on a host with no more free than this
	reserve_bytes     bigint not null default 0 check (reserve_bytes >= 0),
	-- instances whose postmaster runs, at the last heartbeat
	running_instances integer not null default 0 check (running_instances >= 0),
	-- instances placed on the host, whatever their status: kept by the
	-- trigger below in the placing transaction, so that placement reads
	-- it from the row it locks
	instances         integer not null default 0 check (instances >= 0),
	-- 0: no cap beyond the ports and the disk
	max_instances     integer not null default 0 check (max_instances >= 0),
	memory_total_bytes     bigint not null default 0 check (memory_total_bytes >= 0),
	memory_available_bytes bigint not null default 0 check (memory_available_bytes >= 0),
	state             text not null default 'active' check (state in ('active', 'draining')),
	heartbeat_at      timestamptz not null default now(),
	created_at        timestamptz not null default now(),
	updated_at        timestamptz not null default now()
);

create trigger hosts_updated_at before update on hosts
	for each row execute function set_updated_at();

-- The host an instance lives on; null on a single host.
alter table instances add column host text references hosts (name);
create index instances_host_idx on instances (host);

-- Ports are per host: unique among a host's instances (and among a single
-- host's, whose host is null). Queries name the host, or "host is null",
-- so that each uses its index.
drop index instances_port_key;
create unique index instances_port_key on instances (port) where host is null;
create unique index instances_host_port_key on instances (host, port) where host is not null;

create function count_host_instances() returns trigger language plpgsql as $$
begin
	if tg_op in ('UPDATE', 'DELETE') and old.host is not null
	   and (tg_op = 'DELETE' or new.host is distinct from old.host) then
		update hosts set instances = instances - 1 where name = old.host;
	end if;
	if tg_op in ('UPDATE', 'INSERT') and new.host is not null
	   and (tg_op = 'INSERT' or new.host is distinct from old.host) then
		update hosts set instances = instances + 1 where name = new.host;
	end if;
	return null;
end;
$$;

create trigger instances_count_host after insert or delete or update of host on instances
	for each row execute function count_host_instances();

-- Where each image has a copy. The host that makes an image holds the
-- first; the others receive theirs by a send stream and mark it ready
-- once checked. A copy's row goes with its image: each host's reconcile
-- removes the volumes of images it no longer has a row for.
create table image_copies (
	image_id   bigint not null references images (id) on delete cascade,
	host       text not null references hosts (name) on delete cascade,
	status     text not null default 'receiving'
	           check (status in ('receiving', 'ready', 'failed')),
	error      text,
	created_at timestamptz not null default now(),
	updated_at timestamptz not null default now(),
	primary key (image_id, host)
);

create index image_copies_host_idx on image_copies (host);

create trigger image_copies_updated_at before update on image_copies
	for each row execute function set_updated_at();
