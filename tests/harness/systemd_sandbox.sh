#!/usr/bin/env bash
# Boot a REAL systemd (Debian's /lib/systemd/systemd) as PID 1 of a private
# PID/mount/UTS/IPC/cgroup(/net) namespace, with the host's / as a read-only
# overlay lower layer and a tmpfs upper layer, so a test can run
# systemctl start/reload/stop and journalctl -u NAME -o json for real.
# Nothing is written to the host's files; everything vanishes when PID 1 exits.
# Needs: root (CAP_SYS_ADMIN), overlayfs, util-linux unshare/nsenter, `systemd`
# package installed on the host (its / is the sandbox's /usr, /etc ...).
#
#   systemd_sandbox.sh boot  DIR          # boots, waits for startup, prints host PID of PID 1
#   systemd_sandbox.sh exec  DIR CMD...   # run CMD inside (nsenter -a)
#   systemd_sandbox.sh put   DIR SRC DEST # copy a host file into the sandbox
#   systemd_sandbox.sh shutdown DIR       # systemctl poweroff, KILL fallback, cleanup
#
# Env: SANDBOX_TARGET   unit to boot (default basic.target: no getty/mariadb/...)
#      SANDBOX_BIND     space-separated host paths bind-mounted at the same path
#                       (append :ro for read-only), e.g. "$PWD:ro /tmp/mdb"
#                       (a MariaDB unix socket dir works across the net namespace)
#      SANDBOX_HOSTNET=1 share the host network namespace (default: private, lo only)
#      SANDBOX_MAX_LIFETIME  hard kill after N s (default 1800)
#      SANDBOX_BOOT_TIMEOUT  (default 60)
set -euo pipefail
cmd=${1:?usage: $0 boot|exec|put|shutdown DIR ...}; shift || true

# For every cgroup hierarchy: "<dir of MY current cgroup in it>"  (pure v2, hybrid or v1).
# The sandbox gets a child of each, so it stays inside whatever cgroup accounting the
# caller (CI runner, tool harness) uses, and everything systemd creates is below it.
cg_current_dirs() {
  python3 - <<'PY'
cur = {}
for line in open("/proc/self/cgroup"):
    _, ctrls, path = line.rstrip("\n").split(":", 2)
    cur[ctrls] = path
for line in open("/proc/self/mountinfo"):
    pre, post = line.split(" - ", 1)
    f = pre.split(); fstype, _src, sopts = post.split()[:3]
    root, mnt = f[3], f[4]
    if fstype == "cgroup2":
        key = ""
    elif fstype == "cgroup":
        opts = set(sopts.split(","))
        key = next((k for k in cur if k and set(k.split(",")) <= opts), None)
        if key is None:
            continue
    else:
        continue
    if key not in cur:
        continue
    path = cur[key]
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    print(mnt.rstrip("/") + rel.rstrip("/"))
PY
}
spid() { cat "$1/systemd.pid"; }
in_sb() { local d=$1; shift; nsenter -t "$(spid "$d")" -a "$@"; }

boot() {
  local D=${1:?DIR}; mkdir -p "$D"; D=$(cd "$D" && pwd)
  [ -e "$D/systemd.pid" ] && kill -0 "$(cat "$D/systemd.pid")" 2>/dev/null && { echo "already running" >&2; return 1; }
  local SD; SD=$(readlink -f /lib/systemd/systemd); [ -x "$SD" ] || { echo "install the systemd package" >&2; return 1; }
  mkdir -p "$D/root" "$D/upper"; : >"$D/console.log"
  local NETOPT=--net; [ "${SANDBOX_HOSTNET:-0}" = 1 ] && NETOPT=
  # dedicated host cgroups so the inner systemd's tree is ours and removable
  local CG=() c
  # one sub-cgroup per hierarchy: with --cgroup the inner systemd sees it as its root,
  # so everything it creates stays below it and is removed by `shutdown`.
  for c in $(cg_current_dirs); do
    local n="$c/sandbox-$(basename "$D")"
    mkdir -p "$n" || continue
    if [ -e "$n/cpuset.cpus" ] && [ -z "$(cat "$n/cpuset.cpus")" ]; then   # v1 cpuset needs these
      cat "$c/cpuset.cpus" >"$n/cpuset.cpus"; cat "$c/cpuset.mems" >"$n/cpuset.mems"; fi
    CG+=("$n")
  done
  printf '%s\n' "${CG[@]}" >"$D/cgroups"
  local t0; t0=$(date +%s.%N)
  # shellcheck disable=SC2016
  setsid bash -c '
    for c in "$@"; do echo $$ > "$c/cgroup.procs"; done
    exec timeout -s KILL '"${SANDBOX_MAX_LIFETIME:-1800}"' \
      unshare --pid --fork --kill-child=SIGKILL --mount --uts --ipc --cgroup '"$NETOPT"' --propagation private \
      bash -c "$SANDBOX_INNER"' _ "${CG[@]}" \
    </dev/null >"$D/unshare.log" 2>&1 &
  echo $! >"$D/launcher.pid"
  # wait for PID 1 (grandchild: timeout -> unshare -> systemd)
  local i p1=
  for i in $(seq 1 200); do
    local u; u=$(cat /proc/"$(cat "$D/launcher.pid")"/task/*/children 2>/dev/null | awk '{print $1}')
    [ -n "$u" ] && p1=$(cat /proc/"$u"/task/*/children 2>/dev/null | awk '{print $1}')
    if [ -n "$p1" ] && [ "$(cat /proc/"$p1"/comm 2>/dev/null)" = systemd ]; then break; fi
    p1=; sleep 0.05
  done
  [ -n "$p1" ] || { echo "sandbox PID 1 did not appear" >&2; cat "$D/unshare.log" >&2; return 1; }
  echo "$p1" >"$D/systemd.pid"
  # systemctl fails fast until PID 1 has created /run/systemd/private: retry, bounded.
  local st= deadline=$(( $(date +%s) + ${SANDBOX_BOOT_TIMEOUT:-60} ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    st=$(timeout 30 nsenter -t "$p1" -a systemctl is-system-running --wait 2>/dev/null || true)
    case "$st" in running|degraded|maintenance|stopping|offline) break;; esac
    kill -0 "$p1" 2>/dev/null || break
    sleep 0.05
  done
  echo "$(date +%s.%N) $t0 $st" | awk '{printf "# boot: %.2fs, state=%s, host pid of PID1=%s\n", $1-$2, $3, "'"$p1"'"}' >&2
  case "$st" in running|degraded) ;; *) echo "boot failed (state=$st)" >&2; cat "$D/unshare.log" >&2; return 1;; esac
  echo "$p1"
}

# Runs inside the new namespaces as (future) PID 1. $D and $SANDBOX_* come via env.
export SANDBOX_INNER='
  set -e
  R=$D/root
  mount -t tmpfs -o mode=755 tmpfs "$D/upper"          # tmpfs lives only in this mount ns
  mkdir -p "$D/upper/u" "$D/upper/w"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper/u,workdir=$D/upper/w" "$R"
  mount -t proc proc "$R/proc"
  mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
  mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
  for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
  mkdir -p "$R/dev/pts" "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"; ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
  ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
  touch "$R/dev/console"; mount --bind "$D/console.log" "$R/dev/console"
  mount -t tmpfs -o mode=755 tmpfs "$R/run"; mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
  for b in ${SANDBOX_BIND:-}; do
    src=${b%:ro}; mkdir -p "$R$src"; mount --rbind "$src" "$R$src"
    [ "$b" != "$src" ] && mount -o remount,bind,ro "$R$src"
  done
  # keep boot small & clean: no gettys, no host services pulled by multi-user.target
  for u in console-getty.service getty@tty1.service systemd-timesyncd.service \
           sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
           dev-hugepages.mount proc-sys-fs-binfmt_misc.automount systemd-modules-load.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$u"; done
  echo sandbox > "$R/etc/hostname"; hostname sandbox
  cd "$R"; mkdir -p .oldroot; pivot_root . .oldroot; umount -l /.oldroot; rmdir /.oldroot || true
  # systemd makes / shared only when it is not in a container; do it here, or the
  # mounts it prepares for a service in a helper namespace (the credentials of
  # LoadCredential=/SetCredential=) never reach the service. Peers stay inside the sandbox.
  mount --make-rshared /
  # container=... makes systemd skip udev/modules/etc (ConditionVirtualization=!container);
  # drop caps PID 1 never needs (keep CAP_SYS_BOOT: poweroff = reboot() in a PID ns).
  exec env -i container=unshare PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
       setpriv --bounding-set -sys_module,-sys_time,-sys_rawio,-wake_alarm \
       /lib/systemd/systemd --system --unit="${SANDBOX_TARGET:-basic.target}"
'

shutdown_sb() {
  local D=${1:?DIR}; D=$(cd "$D" && pwd)
  local p1; p1=$(cat "$D/systemd.pid" 2>/dev/null || true)
  local t0; t0=$(date +%s.%N)
  if [ -n "$p1" ] && kill -0 "$p1" 2>/dev/null; then
    timeout 10 nsenter -t "$p1" -a systemctl poweroff --no-block >/dev/null 2>&1 || true
    for _ in $(seq 1 150); do kill -0 "$p1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p1" 2>/dev/null && { echo "PID1 $p1 still alive; SIGKILL" >&2; kill -KILL "$p1"; sleep 0.2; }
  fi
  local lp; lp=$(cat "$D/launcher.pid" 2>/dev/null || true)
  for _ in $(seq 1 50); do [ -n "$lp" ] && kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done
  # remove the (now empty) cgroups the inner systemd left behind
  while read -r c; do [ -n "$c" ] && [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true; done <"$D/cgroups"
  echo "$(date +%s.%N) $t0" | awk '{printf "# shutdown: %.2fs\n", $1-$2}' >&2
  rm -f "$D/systemd.pid"
}

case "$cmd" in
  boot) D=${1:?DIR}; mkdir -p "$D"; D=$(cd "$D" && pwd); export D; boot "$D" ;;
  exec) D=${1:?DIR}; shift; in_sb "$D" "$@" ;;
  put)  D=${1:?DIR}; in_sb "$D" sh -c 'mkdir -p "$(dirname "$1")" && cat > "$1"' _ "$3" <"$2" ;;
  shutdown) shutdown_sb "${1:?DIR}" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
