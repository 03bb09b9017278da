-- Secrets are sealed at rest: instances' passwords and private keys, and
-- an image's source_url while its pull is pending, are stored encrypted
-- with a key kept outside the database (see pkg/secrets). The checks
-- refuse any clear value written from now on; they are NOT VALID because
-- rows written before this migration are sealed by sindrid at its next
-- start (store.SealSecrets), which then validates them.
alter table instances add constraint instances_password_sealed
	check (password is null or password like 'sindri:v1:%') not valid;
alter table instances add constraint instances_server_key_sealed
	check (server_key is null or server_key like 'sindri:v1:%') not valid;
alter table instances add constraint instances_client_key_sealed
	check (client_key is null or client_key like 'sindri:v1:%') not valid;
alter table images add constraint images_source_url_sealed
	check (source_url is null or source_url like 'sindri:v1:%') not valid;

-- The source_url without its password, kept for the record once the pull
-- is done and source_url itself is cleared.
alter table images add column source_url_redacted text;
