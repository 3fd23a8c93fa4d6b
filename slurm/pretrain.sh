#!/bin/bash
# Pretrain on a SLURM cluster, one task per GPU. Submit from the repository root:
#
#   mkdir -p logs                                            # sbatch does not create the --output directory
#   sbatch slurm/pretrain.sh                                 # the defaults below: 2 nodes x 8 GPUs, 48 h
#   sbatch --nodes=8 --time=24:00:00 slurm/pretrain.sh model=vit_large data=shards data.shards=/data/in1k
#   sbatch --partition=gpu --account=myproject slurm/pretrain.sh optim.lr=2e-4
#   VITFM_TRAINER=ddp sbatch slurm/pretrain.sh               # DDP instead of DeepSpeed ZeRO-2
#
# sbatch flags override the #SBATCH lines below (choose tasks with --ntasks-per-node, one per GPU);
# arguments after the script go to pretrain/run.py as Hydra overrides. A job requeued after the USR1
# warning (the app saves a checkpoint and runs `scontrol requeue`), a preemption or `scontrol requeue`
# keeps its job id, so it reopens runs/pretrain/<job id>, resumes from its last checkpoint and continues
# W&B run slurm-<cluster>-<job id>. See docs/cluster.md.
#SBATCH --job-name=vitfm-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:?submit this script with sbatch}"
[[ -f pretrain/run.py ]] || { echo "error: submit from the repository root, not $PWD" >&2; exit 1; }
source slurm/job_env.sh

# ++ sets logger.run_id whether or not the chosen logger config has one (logger=csv and logger=none do not).
srun --kill-on-bad-exit=1 "${VITFM_PYTHON:-python}" pretrain/run.py \
  trainer="${VITFM_TRAINER:-deepspeed_zero2}" trainer.num_nodes="$NODES" trainer.devices="$DEVICES_PER_NODE" \
  run_dir="runs/pretrain/$SLURM_JOB_ID" resume=auto \
  ++logger.run_id="slurm-$SLURM_CLUSTER_NAME-$SLURM_JOB_ID" "$@"
