#!/bin/sh
# postinstall of the sindri package. Does not start (nor enable) sindrid:
# there is no configuration yet.
set -e

install -d -m 0750 -o root -g root /etc/sindri
chmod 0750 /etc/sindri

# Tolerate systems without systemd (containers, chroots).
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi

if [ ! -e /etc/sindri/config.toml ]; then
	cat <<'MSG'
sindri is installed but sindrid is not configured, so it was not started.
  1. cp /etc/sindri/config.toml.example /etc/sindri/config.toml
     and set data_path and shared_secret (openssl rand -hex 32);
     chmod 0600 /etc/sindri/config.toml
  2. optional, for scp uploads: /usr/share/sindri/setup-upload-account
  3. systemctl enable --now sindrid
MSG
fi
exit 0
