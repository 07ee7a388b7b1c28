#!/usr/bin/env bash
# Install the Debian packages the build and the test suite need, only if any
# is missing (idempotent: `dpkg -s` first; `apt-get update` once, and only
# when something must be installed).  Needs root to install; run by `make test`.
#
#   mariadb-server         the throwaway MariaDB of the integration tests
#   libmariadb-dev pkg-config build-essential   to compile mysqlclient (no Linux wheel)
#   systemd                the real systemd of the end-to-end tests
#   python3 python3-venv python3-dev            `python3 -m venv` and Python.h on Debian
#
# Extra packages can be passed as arguments.
set -euo pipefail

PACKAGES=(mariadb-server libmariadb-dev pkg-config build-essential systemd
          python3 python3-venv python3-dev "$@")

if ! command -v dpkg >/dev/null 2>&1; then
  echo "install-system-deps: no dpkg here (not Debian?); install by hand: ${PACKAGES[*]}" >&2
  exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
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
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
