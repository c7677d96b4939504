# shellcheck shell=bash
# Shared helpers for the control-plane harness scripts (sourced, not executed).

CP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KDPS_CACHE="${KDPS_CACHE:-$HOME/.cache/kdps}"

# Never let the go command fetch a different toolchain: downloads are not available on every
# machine, and the build must use the Go that is installed.
export GOTOOLCHAIN=local

cp_log() { printf 'control-plane: %s\n' "$*" >&2; }
cp_die() { printf 'control-plane: error: %s\n' "$*" >&2; exit 1; }

# Finds the go command (PATH first, then the usual install location) or fails loudly: the
# harness builds kube-apiserver, etcd, kubectl and helm from Go modules and cannot run without Go.
cp_require_go() {
  if ! command -v go >/dev/null 2>&1; then
    if [[ -x /usr/local/go/bin/go ]]; then
      export PATH="/usr/local/go/bin:$PATH"
    else
      cp_die "Go is not installed (no 'go' on PATH and no /usr/local/go/bin/go). The control-plane harness builds kube-apiserver, etcd, kubectl and helm from Go modules and needs Go >= $(cp_go_line). Install it from https://go.dev/dl/ and re-run."
    fi
  fi
  local have need
  have="$(go env GOVERSION)"            # e.g. go1.26.8
  need="$(cp_go_line)"                  # e.g. 1.26.0
  if ! cp_version_ge "${have#go}" "$need"; then
    cp_die "go.mod needs Go >= $need but $(command -v go) is $have (GOTOOLCHAIN=local: no toolchain download). Install a newer Go."
  fi
}

# The `go` line of the helper module.
cp_go_line() {
  if [[ -f "$CP_DIR/go.mod" ]]; then sed -n 's/^go \([0-9.]*\)$/\1/p' "$CP_DIR/go.mod"; else echo 1.0; fi
}

# cp_version_ge A B: true when dotted version A >= B.
cp_version_ge() {
  [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]
}

# --- run directory shared by up, down and smoke ---------------------------------------------

CP_RUN="$(realpath -m -- "${KDPS_CP_DIR:-$KDPS_CACHE/cp-run}")"
# Stop order; start order is the reverse.
# shellcheck disable=SC2034 # used by up, down and smoke
CP_PROCS=(kube-controller-manager kube-apiserver etcd)

# cp_pid NAME: prints the PID of this run dir's NAME process when it is alive, else fails.
# A PID only counts when the process is the expected program AND its command line names this
# run dir, so a recycled PID is never mistaken for (or killed as) one of ours.
cp_pid() {
  local name="$1" pidfile="$CP_RUN/pids/$1.pid" pid argv0
  [[ -f "$pidfile" ]] || return 1
  pid="$(<"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cp_alive "$pid" || return 1
  IFS= read -r -d '' argv0 <"/proc/$pid/cmdline" || return 1
  [[ "$(basename -- "$argv0")" == "$name" ]] || return 1
  grep -aqF -- "$CP_RUN/" "/proc/$pid/cmdline" || return 1
  echo "$pid"
}

# cp_alive PID: the process exists and is not a zombie waiting to be reaped.
cp_alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# cp_stop NAME: SIGTERM, wait up to 30 s for a graceful exit, then SIGKILL. No-op when not running.
cp_stop() {
  local name="$1" pid i
  if pid="$(cp_pid "$name")"; then
    cp_log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      cp_alive "$pid" || break
      sleep 0.1
    done
    if cp_alive "$pid"; then
      cp_log "$name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do cp_alive "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$CP_RUN/pids/$name.pid"
}

# Installs the openssl CLI (used for the test PKI) through apt when it is missing, as on a fresh
# CI machine; fails with a clear message where that is not possible.
cp_require_openssl() {
  command -v openssl >/dev/null 2>&1 && return 0
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo -n)
  if command -v apt-get >/dev/null 2>&1; then
    cp_log "installing the openssl CLI (apt-get install openssl)"
    if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq openssl; } >&2; then
      cp_die "could not install openssl with apt-get; install the openssl CLI and re-run"
    fi
  else
    cp_die "the openssl CLI is missing and there is no apt-get to install it; install openssl and re-run"
  fi
}
