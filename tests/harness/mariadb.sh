#!/usr/bin/env bash
# A throwaway MariaDB server for the test suite: temp datadir, unix socket and
# a free 127.0.0.1 port, root with an empty password over TCP.  No systemd, no
# /etc/mysql configuration, nothing outside DIR is touched.
#
#   URL=$(tests/harness/mariadb.sh start DIR | tail -1)  # mysql+mysqldb://root@127.0.0.1:PORT
#   ... run tests against "$URL/<db>?charset=utf8mb4" ...
#   tests/harness/mariadb.sh stop DIR                   # stops the server, deletes DIR
#
# `start` prints the SQLAlchemy server URL (no database) as the LAST line of
# stdout, progress on stderr, and writes shell-sourceable variables to DIR/env.
# `stop DIR --keep` leaves DIR (datadir, error.log) in place for inspection.
#
# Env knobs:
#   MARIADB_PORT       fixed port (default: a free one, retried on a bind race)
#   MARIADB_WAIT       seconds to wait for readiness (default 30)
#   MARIADB_DRIVER     SQLAlchemy driver in the URL (default mysqldb)
#   MARIADB_OWNER_PID  if set, a watcher stops the server and deletes DIR when
#                      that process dies (so a killed test run leaks nothing)
# Needs the Debian package mariadb-server (mariadbd, mariadb-install-db, mariadb-admin).
set -euo pipefail

usage() { echo "usage: $0 start DIR | stop DIR [--keep]" >&2; exit 2; }
cmd=${1:-}; BASE=${2:-}
[ -n "$cmd" ] && [ -n "$BASE" ] || usage

find_bin() {  # first of the names found in PATH or the sbin directories
  local name
  for name in "$@"; do
    command -v "$name" 2>/dev/null && return 0
    for dir in /usr/sbin /usr/local/sbin /usr/bin; do
      [ -x "$dir/$name" ] && { echo "$dir/$name"; return 0; }
    done
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_server() {  # stop_server BASE: SIGTERM (clean shutdown), bounded, then SIGKILL
  local base=$1 pid
  pid=$(cat "$base/mysqld.pid" 2>/dev/null || cat "$base/launcher.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
    echo "mariadbd $pid still running 15s after SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  fi
  return 0
}

fail_start() {  # fail_start MESSAGE: report with the error log tail, clean up, exit 1
  echo "mariadb.sh: $1" >&2
  if [ -s "$BASE/error.log" ]; then
    echo "--- last lines of $BASE/error.log:" >&2; tail -n 40 "$BASE/error.log" >&2
  fi
  if [ -s "$BASE/stdout.log" ]; then
    echo "--- $BASE/stdout.log:" >&2; tail -n 20 "$BASE/stdout.log" >&2
  fi
  stop_server "$BASE"
  exit 1
}

start() {
  local MARIADBD INSTALL_DB ADMIN WAIT DRIVER SOCK PORT USEROPT=() attempt
  MARIADBD=$(find_bin mariadbd mysqld) || { echo "mariadb.sh: mariadbd not found (apt-get install mariadb-server)" >&2; exit 1; }
  INSTALL_DB=$(find_bin mariadb-install-db mysql_install_db) || { echo "mariadb.sh: mariadb-install-db not found" >&2; exit 1; }
  ADMIN=$(find_bin mariadb-admin mysqladmin) || { echo "mariadb.sh: mariadb-admin not found" >&2; exit 1; }
  WAIT=${MARIADB_WAIT:-30}
  DRIVER=${MARIADB_DRIVER:-mysqldb}

  mkdir -p "$BASE"
  BASE=$(cd "$BASE" && pwd)
  SOCK="$BASE/mysqld.sock"
  if [ ${#SOCK} -gt 100 ]; then
    echo "mariadb.sh: socket path too long for AF_UNIX (${#SOCK} chars): use a shorter DIR" >&2; exit 1
  fi
  if [ -e "$BASE/mysqld.pid" ] && kill -0 "$(cat "$BASE/mysqld.pid")" 2>/dev/null; then
    echo "mariadb.sh: a server is already running in $BASE" >&2; exit 1
  fi
  if [ "$(id -u)" = 0 ]; then USEROPT=(--user=root); fi  # mariadbd refuses root otherwise

  if [ ! -d "$BASE/data/mysql" ]; then
    # normal auth: root@localhost/127.0.0.1/::1 with an EMPTY password, so TCP works
    # (the default is unix_socket auth only).
    timeout 120 "$INSTALL_DB" --no-defaults --datadir="$BASE/data" "${USEROPT[@]}" \
        --auth-root-authentication-method=normal --skip-test-db \
        >"$BASE/install.log" 2>&1 \
      || { echo "mariadb.sh: mariadb-install-db failed:" >&2; tail -n 40 "$BASE/install.log" >&2; exit 1; }
  fi

  mkdir -p "$BASE/tmp"  # its own: nothing that cleans /tmp removes a live temp table
  for attempt in 1 2 3; do
    PORT=${MARIADB_PORT:-$(free_port)}
    : >"$BASE/error.log"
    rm -f "$BASE/mysqld.pid"
    # setsid: its own session and process group, so stopping it (or a CI
    # cleanup) never touches the caller.
    setsid "$MARIADBD" --no-defaults \
        --datadir="$BASE/data" --tmpdir="$BASE/tmp" --socket="$SOCK" \
        --port="$PORT" --bind-address=127.0.0.1 \
        "${USEROPT[@]}" \
        --pid-file="$BASE/mysqld.pid" --log-error="$BASE/error.log" \
        --skip-name-resolve --skip-log-bin --skip-external-locking \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
        --max-connections=300 \
        --innodb-buffer-pool-size=256M \
        --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 \
        --innodb-doublewrite=0 --innodb-flush-method=nosync \
        </dev/null >"$BASE/stdout.log" 2>&1 &
    echo $! >"$BASE/launcher.pid"

    local deadline=$(( $(date +%s) + WAIT )) died=
    until "$ADMIN" --no-defaults -uroot --socket="$SOCK" --connect-timeout=2 ping >/dev/null 2>&1; do
      if ! kill -0 "$(cat "$BASE/launcher.pid")" 2>/dev/null; then died=1; break; fi
      if [ "$(date +%s)" -ge "$deadline" ]; then
        fail_start "mariadbd not ready after ${WAIT}s (datadir $BASE/data)"
      fi
      sleep 0.05
    done
    if [ -z "$died" ]; then break; fi
    # Another process may have taken the free port between our probe and the bind.
    if [ -z "${MARIADB_PORT:-}" ] && [ "$attempt" -lt 3 ] \
        && grep -q -i -E "bind on tcp/ip port|address already in use" "$BASE/error.log"; then
      echo "# port $PORT was taken, retrying with another one" >&2
      continue
    fi
    fail_start "mariadbd exited during startup"
  done

  # The server must also accept root over TCP, which is what the tests use.
  "$ADMIN" --no-defaults -uroot --protocol=TCP -h127.0.0.1 -P"$PORT" --connect-timeout=5 ping \
      >/dev/null 2>&1 || fail_start "server is up but root cannot log in over TCP on 127.0.0.1:$PORT"

  local PID URL
  PID=$(cat "$BASE/mysqld.pid" 2>/dev/null || cat "$BASE/launcher.pid")
  URL="mysql+${DRIVER}://root@127.0.0.1:${PORT}"
  # single-quoted values so the file is safe to `source`
  cat >"$BASE/env" <<EOF
MARIADB_BASE='$BASE'
MARIADB_PID='$PID'
MARIADB_SOCKET='$SOCK'
MARIADB_PORT='$PORT'
MARIADB_URL='$URL'
EOF

  if [ -n "${MARIADB_OWNER_PID:-}" ]; then
    # Watcher: when the owner dies without calling `stop`, stop and delete.
    setsid bash -c '
      owner=$1 self=$2 base=$3
      while kill -0 "$owner" 2>/dev/null && [ -d "$base" ]; do sleep 1; done
      [ -d "$base" ] && exec "$self" stop "$base"
    ' _ "$MARIADB_OWNER_PID" "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")" "$BASE" \
      </dev/null >/dev/null 2>&1 &
    echo $! >"$BASE/watcher.pid"
  fi

  echo "# mariadb: base=$BASE pid=$PID socket=$SOCK port=$PORT" >&2
  echo "$URL"
}

stop() {
  local keep=${1:-}
  [ -d "$BASE" ] || { echo "mariadb.sh: no such dir $BASE (already stopped?)" >&2; return 0; }
  BASE=$(cd "$BASE" && pwd)
  local wpid
  wpid=$(cat "$BASE/watcher.pid" 2>/dev/null || true)
  if [ -n "$wpid" ] && [ "$wpid" != "$$" ]; then kill "$wpid" 2>/dev/null || true; fi
  stop_server "$BASE"
  if [ "$keep" != "--keep" ]; then
    rm -rf "$BASE"
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop "${3:-}" ;;
  *) usage ;;
esac
