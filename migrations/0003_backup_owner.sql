-- A backup belongs to whoever took it, as an instance does to its creator:
-- users see and download their own backups; the upload user sees all.
alter table backups add column owner text not null default 'upload';
create index backups_owner_idx on backups (owner);
