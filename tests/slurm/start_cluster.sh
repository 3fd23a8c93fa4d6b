#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for the tests marked `slurm` and for CI.
#
#   tests/slurm/start_cluster.sh    # as root: install slurm + munge if missing, start munged, slurmctld, slurmd
#   tests/slurm/stop_cluster.sh     # stop what this script started
#
# Made for Debian 12 containers run as root without an init system: the daemons are started by hand, without
# cgroups. Idempotent: with the cluster up, a second run only prints the summary line. Takes ~10-20 s on a
# fresh machine, most of it apt. Daemon state and logs: $VITFM_SLURM_DIR (default /var/lib/vitfm-slurm).
set -euo pipefail
# shellcheck source=tests/slurm/cluster_lib.sh
source "$(dirname "$0")/cluster_lib.sh"

# The config goes where sbatch, srun and sinfo find it without any environment variable.
CONF=/etc/slurm/slurm.conf
CONF_MARKER="written by tests/slurm/start_cluster.sh"
TEMPLATE=$(dirname "$0")/slurm.conf.in
TIMEOUT_S=${VITFM_SLURM_TIMEOUT:-60}

install_packages() {
  local tool missing=""
  for tool in slurmctld slurmd sbatch munged; do
    command -v "$tool" >/dev/null || missing+=" $tool"
  done
  if [[ -z $missing ]]; then
    return
  fi
  local policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    # Keep the packages' postinst scripts from starting daemons: they are started by hand below.
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  if ! apt-cache policy slurmctld | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq >"$STATE_DIR/apt.log" 2>&1 || { cat "$STATE_DIR/apt.log" >&2; die "apt-get update failed"; }
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >>"$STATE_DIR/apt.log" 2>&1 ||
    { tail -n 30 "$STATE_DIR/apt.log" >&2; die "apt-get install of slurm and munge failed"; }
}

write_config() {
  if [[ -f $CONF ]] && ! grep -q "$CONF_MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a real cluster's config"
  fi
  # slurmd -C prints this machine's NodeName line. A node reporting less memory than configured is drained,
  # so configure 95% of it: container memory readings move a little between runs.
  local node_line
  node_line=$(slurmd -C | head -n 1 |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) $i = "RealMemory=" int(substr($i, 12) * 0.95); print }')
  mkdir -p "$(dirname "$CONF")"
  sed -e "s|@HOST@|$(hostname -s)|" -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@NODE_LINE@|$node_line|" \
    "$TEMPLATE" >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

start_munged() {
  if munge_works; then # ours from an earlier run, or the machine's own
    return
  fi
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged || { print_daemon_logs; die "munged failed to start"; }
  wait_for 10 "munged to answer (munge -n | unmunge)" munge_works
  cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
}

# start_daemon NAME: start slurmctld or slurmd unless its recorded PID is alive; it writes its own PID file.
start_daemon() {
  local name=$1
  if is_running "$name" "$STATE_DIR/$name.pid"; then
    return
  fi
  rm -f "$STATE_DIR/$name.pid"
  "$name" || { print_daemon_logs; die "$name failed to start"; }
  wait_for 10 "$name to write $STATE_DIR/$name.pid" is_running "$name" "$STATE_DIR/$name.pid"
}

summary() {
  local node
  node=$(sinfo -h -N -o '%N, %c CPUs, %m MB memory, state %T, partition %P' | head -n 1)
  echo "slurm $1: node $node; config $CONF; logs $STATE_DIR"
}

[[ $EUID -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
mkdir -p "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"

if is_running slurmctld "$STATE_DIR/slurmctld.pid" && is_running slurmd "$STATE_DIR/slurmd.pid" &&
  munge_works && node_is_up; then
  summary "already up"
  exit 0
fi

install_packages
write_config
start_munged
start_daemon slurmctld
start_daemon slurmd
wait_for "$TIMEOUT_S" "the node to come up in sinfo" node_is_up
summary "up in $SECONDS s"
