# shellcheck shell=bash
# Shared by start_cluster.sh and stop_cluster.sh (sourced, not run).

# Daemon state, PID files and logs of the test cluster.
STATE_DIR=${VITFM_SLURM_DIR:-/var/lib/vitfm-slurm}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

# is_running NAME PIDFILE: the PID recorded in PIDFILE is a live process named NAME (not a recycled PID).
is_running() {
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

munge_works() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

# node_is_up: the node answers and takes jobs (a node recovering jobs after a restart may be busy, not idle).
node_is_up() {
  [[ $(sinfo -h -N -o '%T' 2>/dev/null | head -n 1) =~ ^(idle|mixed|allocated|completing)$ ]]
}

print_daemon_logs() {
  local log
  for log in /var/log/munge/munged.log "$STATE_DIR/slurmctld.log" "$STATE_DIR/slurmd.log"; do
    if [[ -f $log ]]; then
      echo "---- last lines of $log" >&2
      tail -n 30 "$log" >&2
    fi
  done
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s; fail with the daemon logs after SECONDS.
wait_for() {
  local seconds=$1 description=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      print_daemon_logs
      die "timed out after $seconds s waiting for $description"
    fi
    sleep 0.2
  done
}
