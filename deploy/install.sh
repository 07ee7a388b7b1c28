#!/usr/bin/env bash
# Install, upgrade or remove bgworkers on a Debian machine (as root); run by
# `make install` / `make uninstall` from a clone or an unpacked release, whose
# tree may be read-only (the package is built in a temporary copy).
#
#   deploy/install.sh install     Debian packages to build it, /opt/bgworkers/venv
#                                 with the package, the unit, /etc/bgworkers,
#                                 /usr/local/bin/bgworkers; a second run upgrades
#                                 in place and keeps settings and credentials
#   deploy/install.sh uninstall   stops and removes all of that but /etc/bgworkers
#                                 and /var/lib/bgworkers (settings, secrets, data)
#
# Env: BGWORKERS_PYTHON  interpreter of the venv (default /usr/bin/python3: the unit
#                        hides /home and /root, so not one from there)
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${BGWORKERS_PYTHON:-/usr/bin/python3}
OPT=/opt/bgworkers
VENV=$OPT/venv
ETC=/etc/bgworkers
CREDS=$ETC/credentials
UNIT=/etc/systemd/system/bgworkers.service
WRAPPER=/usr/local/bin/bgworkers
STATE=/var/lib/bgworkers
# What mysqlclient needs to compile (no Linux wheel) and python3 -m venv on Debian.
PACKAGES=(python3 python3-venv python3-dev libmariadb-dev pkg-config build-essential)

say() { echo "bgworkers install: $*"; }
die() { echo "bgworkers install: $*" >&2; exit 1; }
systemd_running() { [ -d /run/systemd/system ]; }

system_packages() {
  command -v dpkg >/dev/null 2>&1 || { say "no dpkg (not Debian?): make sure these are installed: ${PACKAGES[*]}"; return 0; }
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "Debian packages: all present"; return 0; fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

venv() {
  [ -x "$PYTHON" ] || die "$PYTHON not found (set BGWORKERS_PYTHON to a Python 3.11)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not Python 3.11 (bgworkers requires >=3.11,<3.12)"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "creating $VENV with $PYTHON"
    install -d -m 755 "$OPT"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tar -C "$SRC" --exclude=__pycache__ -cf - pyproject.toml README.md bgworkers | tar -C "$tmp" -xf -
  say "installing the package into $VENV (mysqlclient may compile: a minute)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$tmp"
  rm -rf "$tmp"
  trap - EXIT
  say "$("$VENV/bin/bgworkers" --version) in $VENV"
}

files() {
  install -m 644 "$SRC/deploy/systemd/bgworkers.service" "$UNIT"
  install -m 755 "$SRC/deploy/bgworkers-cli.sh" "$WRAPPER"
  install -d -m 755 "$ETC"
  if [ -e "$ETC/settings.toml" ]; then
    say "$ETC/settings.toml kept (compare with $SRC/settings.toml for new keys)"
  else
    # The shipped file with the demo databases in the service's state directory.
    local tmp
    tmp=$(mktemp)
    sed "s#\"sqlite:///demo-data/#\"sqlite:///$STATE/demo-data/#" "$SRC/settings.toml" >"$tmp"
    grep -q "sqlite:///$STATE/demo-data/core.db" "$tmp" || { rm -f "$tmp"; die "settings.toml: core_url not found"; }
    install -m 644 "$tmp" "$ETC/settings.toml"
    rm -f "$tmp"
    say "$ETC/settings.toml created (the SQLite demo; edit the database URLs)"
  fi
  install -d -m 700 "$CREDS"
  local name
  for name in db_password serial_salts; do
    if [ -e "$CREDS/$name" ]; then
      continue
    elif [ -e "$ETC/$name" ]; then  # where earlier versions of the unit read it
      install -m 600 "$ETC/$name" "$CREDS/$name"
      say "$CREDS/$name copied from $ETC/$name (remove the old file)"
    else
      install -m 600 /dev/null "$CREDS/$name"
      say "$CREDS/$name created empty (root only)"
    fi
  done
  if systemd_running; then systemctl daemon-reload; fi
}

do_install() {
  [ "$(id -u)" = 0 ] || die "run as root"
  system_packages
  venv
  files
  say "done: $VENV, $UNIT, $ETC, $WRAPPER"
  if systemd_running && systemctl -q is-active bgworkers.service; then
    say "the service runs the previous version until: bgworkers db upgrade && systemctl restart bgworkers"
  else
    say "next: edit $ETC/settings.toml (and $CREDS/db_password), then see README, Install"
  fi
}

do_uninstall() {
  [ "$(id -u)" = 0 ] || die "run as root"
  if systemd_running; then
    systemctl disable --now bgworkers.service 2>/dev/null || true
  fi
  rm -f "$UNIT" "$WRAPPER"
  rm -rf "$VENV"
  rmdir "$OPT" 2>/dev/null || true
  if systemd_running; then systemctl daemon-reload; systemctl reset-failed bgworkers.service 2>/dev/null || true; fi
  say "removed $VENV, $UNIT, $WRAPPER; kept $ETC and $STATE (settings, credentials, data)"
}

case "${1:-}" in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) echo "usage: $0 install|uninstall" >&2; exit 2 ;;
esac
