-- An instance being reset (its volume thrown away and cloned again, same
-- id, port and credentials) says so, so that a reset cut short by a crash
-- is finished by reconcile rather than mistaken for a lost volume.
alter table instances drop constraint instances_status_check;
alter table instances add constraint instances_status_check
	check (status in ('creating', 'running', 'stopped', 'failed', 'destroying', 'resetting'));
