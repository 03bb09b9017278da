-- Each host of a fleet reconciles and expires only what it holds: an
-- instance's tombstone and a backup's archive live on one host, named
-- here (null on a single host, as instances.host). Neither references
-- hosts: both outlive what they describe.
alter table instance_tombstones add column host text;
create index instance_tombstones_host_idx on instance_tombstones (host);

alter table backups add column host text;
create index backups_host_idx on backups (host);
