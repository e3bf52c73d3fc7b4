#!/bin/sh
# promtool from Debian's prometheus package, installed only when missing, without leaving a
# Prometheus server running: services are kept from starting while it installs (a policy-rc.d of
# our own when none exists, removed afterwards), and on a systemd host the unit is stopped and
# disabled.
set -eu
command -v promtool >/dev/null && exit 0
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	own_policy=1
fi
trap '[ -z "$own_policy" ] || rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
if [ -d /run/systemd/system ]; then
	systemctl disable --now prometheus || true
fi
command -v promtool >/dev/null
