-- An image says whether an anonymisation script ran on it and the scrub
-- after it finished: what finalised before this column existed was not
-- scrubbed, so it is false for every image already there.
alter table images add column anonymised boolean not null default false;

-- Whether an image's or a backup's data may hold what an instance's user
-- wrote (triggers, functions, operators as well as rows): a backup of an
-- instance, an image restored from one, a backup of such an image. An
-- anonymisation script, run as superuser, is refused on a restore of such
-- a backup. For the rows already there: an image restored from anything
-- but a known backup of an image is taken as user-written (its backup may
-- be gone), and so is a backup of an image that is gone or user-written.
alter table images add column user_written boolean not null default false;
alter table backups add column user_written boolean not null default false;
update backups set user_written = true where instance_id is not null;
update images i set user_written = true
	where i.backup_id is not null
	  and not exists (select from backups b where b.id = i.backup_id and b.image_id is not null);
update backups b set user_written = true
	where b.image_id is not null
	  and not exists (select from images i where i.id = b.image_id and not i.user_written);
update images i set user_written = true
	where i.backup_id is not null
	  and exists (select from backups b where b.id = i.backup_id and b.user_written);
