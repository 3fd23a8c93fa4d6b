# shellcheck shell=bash
# Shared by start_cluster.sh and stop_cluster.sh (sourced, not run).

# Daemon state, PID files and logs of the test cluster.
STATE_DIR=${VITFM_SLURM_DIR:-/var/lib/vitfm-slurm}

# Two compute nodes, each slurmd in a network namespace of its own. Every address below exists only on the veth
# ends this project creates (or on a namespace's own loopback) and is used only between these namespaces:
#   root <-> node i   veth vitfm-ci (root end, 10.213.i.1/24) and eth0 in vitfm-ni (10.213.i.2/24)
#   node 1 <-> node 2 eth1 in both (10.213.3.1/24, 10.213.3.2/24): the link the job's ranks talk over
#   node i's address  10.213.0.i/32 on its loopback, routed to from the root namespace and from the other node,
#                     so that one name in /etc/hosts works from everywhere; no namespace forwards packets
#   the controller    10.213.1.1 (root end of the link to node 1; node 2 routes to it over its own link)
NODES=(vitfm-node1 vitfm-node2)
CONTROLLER_ADDR=10.213.1.1
HOSTS_MARKER="# vitfm test cluster (tests/slurm)"
node_namespace() { echo "vitfm-n$1"; }
node_addr() { echo "10.213.0.$1"; }

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

# nodes_are_up: both nodes answer and take jobs (a node recovering jobs after a restart may be busy, not idle).
nodes_are_up() {
  local states
  states=$(sinfo -h -N -o '%T' 2>/dev/null | grep -cE '^(idle|mixed|allocated|completing)$')
  [[ $states -eq ${#NODES[@]} ]]
}

print_daemon_logs() {
  local log
  for log in /var/log/munge/munged.log "$STATE_DIR/slurmctld.log" "$STATE_DIR"/slurmd-*.log; do
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

# remove_network: the namespaces (their veth ends go with them), the root ends, the routes and the hosts lines.
remove_network() {
  local i
  for i in 1 2; do
    ip netns del "$(node_namespace "$i")" 2>/dev/null || true
    ip link del "vitfm-c$i" 2>/dev/null || true
    ip route del "$(node_addr "$i")/32" 2>/dev/null || true
  done
  if grep -q "$HOSTS_MARKER" /etc/hosts; then
    grep -v "$HOSTS_MARKER" /etc/hosts >/etc/hosts.vitfm-tmp
    cat /etc/hosts.vitfm-tmp >/etc/hosts # in place: /etc/hosts may be a bind mount
    rm -f /etc/hosts.vitfm-tmp
  fi
}
