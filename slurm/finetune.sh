#!/bin/bash
# Fine-tune, linear-probe or kNN-evaluate a pretrained backbone on a SLURM cluster, one task per GPU.
# Submit from the repository root:
#
#   mkdir -p logs                                            # sbatch does not create the --output directory
#   sbatch slurm/finetune.sh task=cifar100 ckpt=runs/pretrain/123456/backbone.safetensors
#   sbatch --nodes=4 --time=12:00:00 slurm/finetune.sh task=shards task.train='/data/in1k/train-{000000..001023}.tar' task.test='/data/in1k/val-{000000..000063}.tar' mode=finetune ckpt=...
#   VITFM_TRAINER=deepspeed_zero2 sbatch slurm/finetune.sh task=... # DeepSpeed instead of DDP
#
# sbatch flags override the #SBATCH lines below (choose tasks with --ntasks-per-node, one per GPU);
# arguments after the script go to finetune/run.py as Hydra overrides. Requeue and resume work as for
# slurm/pretrain.sh, in runs/finetune/<job id>. See docs/cluster.md.
#SBATCH --job-name=vitfm-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:?submit this script with sbatch}"
[[ -f finetune/run.py ]] || { echo "error: submit from the repository root, not $PWD" >&2; exit 1; }
source slurm/job_env.sh

# ++ sets logger.run_id whether or not the chosen logger config has one (logger=csv and logger=none do not).
srun --kill-on-bad-exit=1 "${VITFM_PYTHON:-python}" finetune/run.py \
  trainer="${VITFM_TRAINER:-ddp}" trainer.num_nodes="$NODES" trainer.devices="$DEVICES_PER_NODE" \
  run_dir="runs/finetune/$SLURM_JOB_ID" resume=auto \
  ++logger.run_id="slurm-$SLURM_CLUSTER_NAME-$SLURM_JOB_ID" "$@"
