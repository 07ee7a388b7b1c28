#!/usr/bin/env bash
# Install the Debian packages the build and the test suite need, only if any
# is missing (idempotent: `dpkg -s` first; `apt-get update` once, and only
# when something must be installed).  Needs root to install; run by `make test`.
#
#   mariadb-server         the throwaway MariaDB of the integration tests
#   libmariadb-dev pkg-config build-essential   to compile mysqlclient (no Linux wheel)
#   systemd                the real systemd of the end-to-end tests
#   python3 python3-venv python3-dev            `python3 -m venv` and Python.h on Debian
#   prometheus             promtool: checks and unit tests of deploy/prometheus and of a
#                          real scrape (the server in the package is never started here)
#
# Extra packages can be passed as arguments.
set -euo pipefail

PACKAGES=(mariadb-server libmariadb-dev pkg-config build-essential systemd
          python3 python3-venv python3-dev prometheus "$@")

if ! command -v dpkg >/dev/null 2>&1; then
  echo "install-system-deps: no dpkg here (not Debian?); install by hand: ${PACKAGES[*]}" >&2
  exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  # (not `dpkg -s | grep -q`: grep stopping early breaks dpkg's pipe, which
  # pipefail reports as missing for packages with a long status, e.g. prometheus)
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present (${PACKAGES[*]})"
  exit 0
fi

echo "system packages missing: ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The prometheus package starts its server on install where an init system
# runs (in a container without one the attempt does nothing and the install
# succeeds).  Only promtool is needed: a policy-rc.d refuses to start the
# server during this install, unless the machine has a policy of its own, and
# the unit is disabled afterwards.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# bgworkers install-system-deps: no prometheus server\n[ "$1" = prometheus ] && exit 101\nexit 0\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
  systemctl --root=/ --quiet disable prometheus.service >/dev/null 2>&1 || true  # nor at boot
fi
