#!/bin/sh
# /usr/local/bin/bgworkers (installed by deploy/install.sh): the bgworkers command
# line as the daemon runs, for an operator (root) in any directory.
#
# Under systemd each command runs as a short-lived service with the identity and
# the files of bgworkers.service: the same dynamic user `bgworkers` (so MariaDB's
# unix_socket authentication sees the same account, and SQLite files in
# /var/lib/bgworkers keep their owner), the same credentials (the unit's
# LoadCredential= files, as $CREDENTIALS_DIRECTORY), the same state and working
# directory, umask and environment file. stdin/stdout/stderr are the caller's and
# the exit status is the command's. Keep the properties below in step with
# deploy/systemd/bgworkers.service (tests/e2e/test_install.py checks it).
#
# Without a running systemd (a container, a rescue shell) the command runs here,
# as root, with the same settings and credential files.
#
# Env: BGWORKERS_CONFIG  settings file (default /etc/bgworkers/settings.toml)
set -eu

BIN=/opt/bgworkers/venv/bin/bgworkers
ETC=/etc/bgworkers
CONFIG=${BGWORKERS_CONFIG:-$ETC/settings.toml}

# The command runs in /var/lib/bgworkers: make relative paths given to --config absolute.
abs() { case $1 in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
CONFIG=$(abs "$CONFIG")
prev=
for arg in "$@"; do
  shift
  case $prev in --config) arg=$(abs "$arg") ;; esac
  case $arg in --config=*) arg=--config=$(abs "${arg#--config=}") ;; esac
  set -- "$@" "$arg"
  prev=$arg
done

if [ ! -d /run/systemd/system ]; then
  # No systemd: the credential files themselves (their names are the credential names).
  export BGWORKERS_CONFIG="$CONFIG" CREDENTIALS_DIRECTORY="$ETC/credentials"
  exec "$BIN" "$@"
fi

exec systemd-run --quiet --wait --pipe --collect --service-type=exec \
  --description="bgworkers $*" \
  --setenv=BGWORKERS_CONFIG="$CONFIG" \
  -p DynamicUser=yes -p User=bgworkers \
  -p StateDirectory=bgworkers -p StateDirectoryMode=0700 \
  -p WorkingDirectory=/var/lib/bgworkers -p UMask=0077 \
  -p EnvironmentFile=-$ETC/environment \
  -p LoadCredential=db_password:$ETC/credentials/db_password \
  -p 'SetCredential=db_password:\x20' \
  -p LoadCredential=serial_salts:$ETC/credentials/serial_salts \
  -p 'SetCredential=serial_salts:\x20' \
  -- "$BIN" "$@"
