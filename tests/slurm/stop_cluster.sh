#!/usr/bin/env bash
# Stop the two-node SLURM cluster started by tests/slurm/start_cluster.sh: cancel its jobs, stop both slurmd,
# slurmctld and (if start_cluster.sh started it) munged, and remove the nodes' network namespaces, links and
# /etc/hosts lines. Controller state is kept, so a later start recovers the job id counter. Safe to run when
# nothing is up.
set -euo pipefail
# shellcheck source=tests/slurm/cluster_lib.sh
source "$(dirname "$0")/cluster_lib.sh"

no_job_left() {
  [[ -z $(squeue -h -o '%A' 2>/dev/null) ]]
}

# stop_daemon NAME [PIDFILE]: SIGTERM the PID recorded in PIDFILE (default $STATE_DIR/NAME.pid), SIGKILL it
# after 10 s.
stop_daemon() {
  local name=$1 pidfile=${2:-$STATE_DIR/$1.pid}
  if is_running "$name" "$pidfile"; then
    local pid deadline=$((SECONDS + 10))
    pid=$(cat "$pidfile")
    kill "$pid"
    while is_running "$name" "$pidfile" && ((SECONDS < deadline)); do
      sleep 0.2
    done
    if is_running "$name" "$pidfile"; then
      kill -KILL "$pid"
    fi
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

[[ $EUID -eq 0 ]] || die "must run as root"

# Job processes outlive slurmd (they belong to slurmstepd), so end the jobs while the daemons still run.
if is_running slurmctld "$STATE_DIR/slurmctld.pid"; then
  squeue -h -o '%A' | xargs -r scancel
  deadline=$((SECONDS + 30))
  until no_job_left || ((SECONDS >= deadline)); do
    sleep 0.5
  done
  no_job_left || echo "warning: jobs still listed after 30 s: $(squeue -h -o '%A %T' | tr '\n' ' ')" >&2
fi

for node in "${NODES[@]}"; do
  stop_daemon slurmd "$STATE_DIR/slurmd-$node.pid"
done
stop_daemon slurmctld
stop_daemon munged
remove_network
echo "slurm stopped"
