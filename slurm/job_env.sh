# shellcheck shell=bash
# Sourced by slurm/pretrain.sh and slurm/finetune.sh inside a job, and by the sweep jobs of
# conf/hydra/launcher/slurm.yaml. Derives the layout from the allocation
# (never hard-coded) and prints it; inside each srun task Lightning's SLURMEnvironment reads its own rank
# from SLURM_PROCID, SLURM_LOCALID and SLURM_NODEID.
NODES=${SLURM_JOB_NUM_NODES:-$SLURM_NNODES}
DEVICES_PER_NODE=${SLURM_NTASKS_PER_NODE:-$((SLURM_NTASKS / NODES))}
if ((NODES * DEVICES_PER_NODE != SLURM_NTASKS)); then
  echo "error: $SLURM_NTASKS tasks on $NODES nodes is not $DEVICES_PER_NODE per node;" \
    "choose tasks with --ntasks-per-node (one per GPU), not --ntasks" >&2
  exit 1
fi
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# Keyed by job id: a requeued job gets the same port, two jobs sharing a node almost never the same one.
# 10000-29999 stays below Linux's ephemeral ports.
MASTER_PORT=$((10000 + SLURM_JOB_ID % 20000))
# Slurm 22.05's srun no longer reads SLURM_CPUS_PER_TASK: without this each task is bound to one CPU
# on clusters with task/affinity, starving the data loader workers.
SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
export MASTER_ADDR MASTER_PORT SRUN_CPUS_PER_TASK PYTHONUNBUFFERED=1
echo "$(date '+%F %T') job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST:" \
  "$NODES nodes x $DEVICES_PER_NODE devices = $SLURM_NTASKS processes, master $MASTER_ADDR:$MASTER_PORT"
