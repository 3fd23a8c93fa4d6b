#!/usr/bin/env bash
# The GPU check: one script, one table, at most 8 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default outputs/gpu_check; the table also goes to OUT_DIR/table.md
#
# With CUDA:
#   1. bf16 MAE ViT-B/16 train step, batch 128: ours vs the timm-block MAE vs HF ViTMAE (bench/model_step.py),
#      with achieved TFLOP/s and MFU;
#   2. the pretraining app (Lightning, real PNG shards, logging, checkpoints; bench/train_loop.py) for 200 steps
#      under DeepSpeed ZeRO-2 bf16, the same with trainer.compile=true, and Lightning's bf16-mixed without DeepSpeed
#      (one GPU: DDP's single-device form): images/s, MFU, peak
#      memory, host synchronisations per step, and the ratio to a bare loop of the same model;
#   3. the loader at 224 px on photo-like JPEGs (bench/loader.py, 8 workers): torchvision's ImageFolder, our stream
#      decoding in the workers (uint8 and float batches), on shards resized on write, and decoding on the GPU
#      (data.decode=gpu, nvJPEG): images/s.
# Without CUDA (CI) the same steps run in a few seconds each on tiny sizes and the CPU trainer, so the script
# cannot rot; DeepSpeed rows need CUDA (Lightning's strategy refuses CPUs) and are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-outputs/gpu_check}"
mkdir -p "$out"
log="$out/log.txt"
: > "$log"

run() {  # run a bench command, keep its output in the log, pass its RESULT lines on
    echo "+ $*" >> "$log"
    "$@" 2>&1 | tee -a "$log" | grep '^RESULT ' || { echo "failed: $* (see $log)" >&2; exit 1; }
}

if python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    device_name=$(python3 -c "import torch; print(torch.cuda.get_device_name())")
    step=(python3 bench/model_step.py --preset base --device cuda --precision bf16 --batch-size 128
          --steps 10 --rounds 3 --warmup 3 --only ours timm_blocks hf)
    loop=(python3 bench/train_loop.py --device cuda --steps 200 --warmup 20 --rounds 1 --images 20000
          --checkpoint-every 100 --work "$out/train_loop")
    {
        run "${step[@]}"
        run "${loop[@]}" --trainer deepspeed_zero2 --label "app ZeRO-2 bf16"
        run "${loop[@]}" --trainer deepspeed_zero2 --label "app ZeRO-2 bf16 compiled" --app-overrides trainer.compile=true
        run "${loop[@]}" --trainer gpu --label "app bf16-mixed, no DeepSpeed"
        run python3 bench/loader.py --sizes 224 --workers 8 --images-224 2048 --rounds 1 --device cuda --results
    } > "$out/results.txt"
else
    device_name="CPU fallback (no CUDA): tiny sizes, numbers mean nothing"
    {
        run python3 bench/model_step.py --preset tiny --batch-size 8 --steps 1 --rounds 1 --warmup 1 --only ours timm_blocks
        run python3 bench/train_loop.py --device cpu --steps 5 --warmup 5 --rounds 1 --images 400 --batch-size 16 \
            --checkpoint-every 5 --work "$out/train_loop" --label "app CPU fp32"
        run python3 bench/loader.py --sizes 224 --workers 1 --images-224 16 --batch-size 8 --rounds 1 --device cpu \
            --results
    } > "$out/results.txt"
fi

python3 - "$out/results.txt" "$device_name" <<'EOF' | tee "$out/table.md"
import json, math, sys

rows = [json.loads(line.split(" ", 1)[1]) for line in open(sys.argv[1]) if line.startswith("RESULT ")]
print(f"GPU check on {sys.argv[2]}\n")
print("| row | images/s | TFLOP/s | MFU | peak memory GiB | host syncs/step | app / bare loop |")
print("|---|---:|---:|---:|---:|---:|---:|")
def cell(value, spec):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
for row in rows:
    mfu = row.get("mfu")
    print(
        f"| {row['row']} | {cell(row['images_per_s'], '.1f')} | {cell(row.get('tflops'), '.1f')} "
        f"| {cell(100 * mfu if mfu is not None else None, '.1f')} | {cell(row.get('peak_memory_gib'), '.2f')} "
        f"| {cell(row.get('host_syncs_per_step'), '.2f')} | {cell(row.get('app_over_bare'), '.3f')} |"
    )
EOF
