#!/bin/sh
# postremove of the sindri package. Leaves data_path, the configuration
# (unless purged) and any running instances alone.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "$1" = purge ] && [ -d /etc/sindri ]; then
	# The administrator's config.toml, keys and certificates stay.
	rmdir --ignore-fail-on-non-empty /etc/sindri
fi
exit 0
