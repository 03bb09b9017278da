#!/bin/sh
# preremove of the sindri package: stops sindrid (only sindrid: with
# KillMode=process the instances' postmasters keep running) before its
# binary goes. An upgrade ("upgrade") leaves it running; restart it then.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl disable sindrid.service >/dev/null 2>&1 || true
	systemctl stop sindrid.service || true
fi
exit 0
