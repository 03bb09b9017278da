-- Each host of a fleet reconciles and expires only what it holds: an
-- instance's tombstone and a backup's archive live on one host, and a
-- source's standby and scheduled refreshes run on one, named here (null
-- on a single host, as instances.host). None references hosts: each
-- outlives its host's row, were it deleted.
alter table instance_tombstones add column host text;
create index instance_tombstones_host_idx on instance_tombstones (host);

alter table backups add column host text;
create index backups_host_idx on backups (host);

alter table sources add column host text;
