-- An image being destroyed says so before anything of it goes, so that a
-- destroy cut short by a crash is finished by reconcile, and no instance
-- is cloned from an image on its way out.
alter table images drop constraint images_status_check;
alter table images add constraint images_status_check
	check (status in ('pending', 'finalising', 'ready', 'failed', 'destroying'));
