-- A listing of instances first asks whether any row changed since the
-- last listing (store.ListInstanceSummaries): a digest of every row's id
-- under its xmin. Read from instances, whose rows carry certificates and
-- sealed keys, that digest scanned 167 pages for 1,000 instances, 642
-- once each had been updated four times: half of a listing's time, and
-- most of its slowest.
--
-- instance_versions is a narrow mirror of the rows' ids and owners. The
-- trigger changes its row in the same transaction as every insert, update
-- and delete of an instance, whatever statement makes it, so the
-- mirror's row gets a new xmin exactly when the instance's does.
create table instance_versions (
	id    bigint primary key,
	owner text not null
);
create index instance_versions_owner_idx on instance_versions (owner);
insert into instance_versions (id, owner) select id, owner from instances;

create function follow_instance_versions() returns trigger language plpgsql as $$
begin
	if tg_op = 'TRUNCATE' then
		truncate instance_versions;
	elsif tg_op = 'DELETE' then
		delete from instance_versions where id = old.id;
	elsif tg_op = 'INSERT' then
		insert into instance_versions (id, owner) values (new.id, new.owner);
	else
		update instance_versions set id = new.id, owner = new.owner where id = old.id;
	end if;
	return null;
end;
$$;

create trigger instances_versions after insert or update or delete on instances
	for each row execute function follow_instance_versions();
create trigger instances_versions_truncate after truncate on instances
	for each statement execute function follow_instance_versions();
