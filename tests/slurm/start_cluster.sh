#!/usr/bin/env bash
# Start a two-node SLURM cluster on this machine, for the tests marked `slurm` and for CI.
#
#   tests/slurm/start_cluster.sh    # as root: install slurm + munge if missing, create the nodes' network
#                                   # namespaces, start munged, slurmctld and one slurmd per node
#   tests/slurm/stop_cluster.sh     # stop what this script started, remove the namespaces
#
# Each slurmd runs in a network namespace of its own, with its own address (cluster_lib.sh), so a job on both
# nodes talks over a real link between them. Made for Debian 12 containers run as root without an init system:
# the daemons are started by hand, without cgroups. Idempotent: with the cluster up, a second run only prints the
# summary. Takes ~10-20 s on a fresh machine, most of it apt. State and logs: $VITFM_SLURM_DIR
# (default /var/lib/vitfm-slurm).
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
  for tool in slurmctld slurmd sbatch munged ip nsenter; do
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
    slurmctld slurmd slurm-client munge iproute2 util-linux >>"$STATE_DIR/apt.log" 2>&1 ||
    { tail -n 30 "$STATE_DIR/apt.log" >&2; die "apt-get install of slurm and munge failed"; }
}

# create_network: the two namespaces, their links and routes, and the nodes' names in /etc/hosts.
create_network() {
  local i other
  if ip netns list | grep -q "^$(node_namespace 1)\b" && ip netns list | grep -q "^$(node_namespace 2)\b" &&
    ip link show vitfm-c1 >/dev/null 2>&1 && ip link show vitfm-c2 >/dev/null 2>&1; then
    return
  fi
  remove_network
  for i in 1 2; do
    local ns
    ns=$(node_namespace "$i")
    ip netns add "$ns"
    ip link add "vitfm-c$i" type veth peer name "vitfm-e$i"
    ip link set "vitfm-e$i" netns "$ns"
    ip -n "$ns" link set "vitfm-e$i" name eth0
    ip addr add "10.213.$i.1/24" dev "vitfm-c$i"
    ip link set "vitfm-c$i" up
    ip -n "$ns" addr add "10.213.$i.2/24" dev eth0
    ip -n "$ns" addr add "$(node_addr "$i")/32" dev lo
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip route add "$(node_addr "$i")/32" via "10.213.$i.2" dev "vitfm-c$i"
  done
  ip link add vitfm-p1 type veth peer name vitfm-p2
  for i in 1 2; do
    other=$((3 - i))
    ip link set "vitfm-p$i" netns "$(node_namespace "$i")"
    ip -n "$(node_namespace "$i")" link set "vitfm-p$i" name eth1
    ip -n "$(node_namespace "$i")" addr add "10.213.3.$i/24" dev eth1
    ip -n "$(node_namespace "$i")" link set eth1 up
    ip -n "$(node_namespace "$i")" route add "$(node_addr "$other")/32" via "10.213.3.$other" dev eth1
  done
  ip -n "$(node_namespace 2)" route add "$CONTROLLER_ADDR/32" via 10.213.2.1 dev eth0
  for i in 1 2; do
    echo "$(node_addr "$i") ${NODES[$((i - 1))]} $HOSTS_MARKER" >>/etc/hosts
  done
}

write_config() {
  if [[ -f $CONF ]] && ! grep -q "$CONF_MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a real cluster's config"
  fi
  # slurmd -C prints this machine's NodeName line. A node reporting less memory than configured is drained,
  # so configure 95% of it: container memory readings move a little between runs.
  # Both nodes share the machine, so each is given all of its cores and 95% of its memory (nothing is enforced).
  local node_line node_lines="" i
  node_line=$(slurmd -C | head -n 1 |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) $i = "RealMemory=" int(substr($i, 12) * 0.95); print }')
  for i in 1 2; do
    node_lines+=$(echo "$node_line" | sed -e "s|^NodeName=[^ ]*|NodeName=${NODES[$((i - 1))]} NodeAddr=$(node_addr "$i")|")
    node_lines+='\n'
  done
  mkdir -p "$(dirname "$CONF")"
  sed -e "s|@HOST@|$(hostname -s)|" -e "s|@CONTROLLER_ADDR@|$CONTROLLER_ADDR|" -e "s|@STATE_DIR@|$STATE_DIR|g" \
    -e "s|@NODE_LINES@|$node_lines|" "$TEMPLATE" >"$CONF.tmp"
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

# start_daemon NAME PIDFILE [COMMAND...]: run COMMAND (default NAME) unless PIDFILE names a live NAME; the daemon
# writes its own PID file.
start_daemon() {
  local name=$1 pidfile=$2
  shift 2
  if is_running "$name" "$pidfile"; then
    return
  fi
  rm -f "$pidfile"
  "${@:-$name}" || { print_daemon_logs; die "$name failed to start"; }
  wait_for 10 "$name to write $pidfile" is_running "$name" "$pidfile"
}

start_nodes() {
  local i
  for i in 1 2; do
    local node=${NODES[$((i - 1))]}
    mkdir -p "$STATE_DIR/slurmd-$node"
    # nsenter switches only the network namespace (ip netns exec would also remount /sys, hiding the cgroup mounts).
    start_daemon slurmd "$STATE_DIR/slurmd-$node.pid" nsenter --net="/run/netns/$(node_namespace "$i")" slurmd -N "$node"
  done
}

all_running() {
  local node
  is_running slurmctld "$STATE_DIR/slurmctld.pid" || return 1
  for node in "${NODES[@]}"; do
    is_running slurmd "$STATE_DIR/slurmd-$node.pid" || return 1
  done
}

summary() {
  local nodes
  nodes=$(sinfo -h -N -o '%N (%c CPUs, %m MB, %T)' | paste -sd ' ')
  echo "slurm $1: nodes $nodes; config $CONF; logs $STATE_DIR"
}

[[ $EUID -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
mkdir -p "$STATE_DIR/slurmctld"

if all_running && munge_works && nodes_are_up; then
  summary "already up"
  exit 0
fi

install_packages
create_network
write_config
start_munged
start_daemon slurmctld "$STATE_DIR/slurmctld.pid"
start_nodes
wait_for "$TIMEOUT_S" "both nodes to come up in sinfo" nodes_are_up
summary "up in $SECONDS s"
