-- A creation's insert can commit while its answer is lost: a failover
-- that ends the session between the commit and its reply (a synchronous
-- standby's wait cancelled by a fast shutdown) leaves the row written and
-- sindrid without its id. Each creation carries a random token so that it
-- can find its row once the store answers again and undo it, rather than
-- leave it "creating" until reconcile gives up on it minutes later.
alter table instances add column creation_token text;
create unique index instances_creation_token_idx on instances (creation_token) where creation_token is not null;
