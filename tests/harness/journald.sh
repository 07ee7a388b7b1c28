#!/usr/bin/env bash
# Run CMD next to a private systemd-journald, without systemd as PID 1.
#
#   tests/harness/journald.sh CMD...
#   e.g. tests/harness/journald.sh bash -c 'python emit.py && journalctl -o json JOB=serial_outbox'
#
# Needs root, unshare(1) and /lib/systemd/systemd-journald (package systemd).
# A private mount namespace gets tmpfs on /run and /var/log/journal (the host's
# journal and sockets are untouched), journald is started by hand, then CMD runs
# in the same namespace, so /run/systemd/journal/socket is ours and journalctl
# reads our journal.  Everything disappears when CMD exits; CMD's status is ours.
set -euo pipefail
[ $# -gt 0 ] || set -- bash
JOURNALD=${JOURNALD:-/lib/systemd/systemd-journald}
[ -x "$JOURNALD" ] || { echo "journald.sh: $JOURNALD not found (install systemd)" >&2; exit 2; }
exec unshare --mount --propagation private bash -c '
  set -euo pipefail
  mount -t tmpfs -o mode=755 tmpfs /run
  mkdir -p /var/log/journal && mount -t tmpfs -o mode=2755 tmpfs /var/log/journal
  mkdir -p /run/systemd/journal /run/log/journal
  "$0" >/run/journald.out 2>&1 &
  JPID=$!
  for _ in $(seq 1 250); do [ -S /run/systemd/journal/socket ] && break; sleep 0.02; done
  [ -S /run/systemd/journal/socket ] || { echo "journald did not start:" >&2; cat /run/journald.out >&2; exit 1; }
  export JOURNALD_PID=$JPID
  rc=0; "$@" || rc=$?
  kill -TERM "$JPID"; wait "$JPID" 2>/dev/null || true
  exit $rc
' "$JOURNALD" "$@"
