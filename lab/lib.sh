# Shared settings and helpers for the lab scripts (sourced, not run).
# Every path, address and name the lab uses is defined here, once.

# sbin first (dockerd, ip, the criu wrapper); the rest of PATH kept, for the Python in use.
export PATH=/usr/local/sbin:/usr/sbin:/sbin:$PATH

LAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$LAB_ROOT/mirror.sh"
LAB_STATE=/var/lib/hmigrate-lab          # daemons' data roots, registry storage, logs
LAB_RUN=/var/run/hmigrate-lab            # pid files
LAB_CACHE=/var/cache/hmigrate-lab        # downloaded packages, built images: survives `down`
CRIU_PREFIX=/opt/hmigrate-lab/criu       # CRIU 4.x from trixie, with its own libraries
CRIU_WRAPPER=/usr/local/sbin/criu        # first on PATH, so runc finds this CRIU

# Host a: root network namespace.  Host b: its own namespace, reached over a veth pair.
HOST_A_SOCK=/var/run/hmlab-a.sock
HOST_B_SOCK=/var/run/hmlab-b.sock
NETNS_B=hmlab-b
VETH_ROOT=hmlab-a0
VETH_B=hmlab-b0
ADDR_ROOT=10.77.0.1
ADDR_B=10.77.0.2
HOST_B_TCP_PORT=2375
REGISTRY=localhost:5000                  # the same name works on every lab host
REGISTRY_PORT=5000
BASE_IMAGE=hmlab/busybox:latest
BUILDER_IMAGE=hmlab/builder:bookworm     # compilers for both ISAs + the toolchain's Python deps

# Docker contexts the lab creates (documented in the README).
CTX_A=hm-a
CTX_B=hm-b
CTX_B_TCP=hm-b-tcp

DOCKER=/usr/local/bin/docker
[ -x "$DOCKER" ] || DOCKER=/usr/bin/docker

say() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "the lab needs root (it starts Docker daemons and network namespaces): run it with sudo"
}

# pid_alive FILE: true if FILE names a running process that is still the one recorded
# (its start time is kept beside the pid: after a reboot a pid may name another process).
pid_alive() {
  local f=$1 pid start
  [ -s "$f" ] || return 1
  read -r pid start <"$f" || true
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ -z "$start" ] || [ "$start" = "$(proc_start "$pid")" ]
}

proc_start() { # PID: the process's start time, in clock ticks since boot
  awk '{print $22}' "/proc/$1/stat" 2>/dev/null
}

# stop_pidfile FILE [SECONDS]: TERM the process in FILE, KILL it after SECONDS, remove FILE.
stop_pidfile() {
  local f=$1 wait=${2:-20} pid i
  if pid_alive "$f"; then
    read -r pid _ <"$f"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { say "pid $pid did not stop, killing it"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$f"
}

# start_bg PIDFILE LOG CMD...: start CMD detached, record its pid.
start_bg() {
  local pidfile=$1 log=$2
  shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$log")"
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo "$! $(proc_start $!)" >"$pidfile"
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD until it succeeds.
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

docker_a() { "$DOCKER" -H "unix://$HOST_A_SOCK" "$@"; }
docker_b() { "$DOCKER" -H "unix://$HOST_B_SOCK" "$@"; }

# A real sshd on loopback that reaches host a's daemon, as users reach remote daemons:
# `docker --context hm-a-ssh` runs `ssh hmlab-a-ssh docker system dial-stdio`.
SSH_PORT=2222
SSH_ALIAS=hmlab-a-ssh                    # a Host block of ~/.ssh/config (Include'd)
CTX_A_SSH=hm-a-ssh

# Host b behind mutual TLS (lab/tls): socat terminates TLS on the lab's address inside
# host b's namespace and hands the stream to b's socket; clients need the lab CA's cert.
HOST_B_TLS_PORT=2376
CTX_B_TLS=hm-b-tls
