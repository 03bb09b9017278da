-- The host whose disk holds a backup's archive; null on a single host. A
-- backup's download and deletion are served by that host, whichever host
-- is asked.
alter table backups add column host text references hosts (name);
create index backups_host_idx on backups (host);
