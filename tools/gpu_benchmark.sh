#!/usr/bin/env bash
# Issue 10's GPU measurement as one prepared script: a lent GPU machine gives a session minutes, not
# hours, so everything runs from one command and writes its JSON under $OUT (README "Performance").
#
#   OUT=/path/to/out bash tools/gpu_benchmark.sh
#
# Random weights and random images (nothing is downloaded, no dataset needed). Needs torch with
# CUDA, timm, kornia, opencv-python-headless, pyyaml, safetensors, scikit-learn. Three runs:
#   1. the paper's CUB configuration at batch 32 under train.precision=auto (bf16 autocast on a
#      GPU): step / floor, evaluation split, FLOPs -- the headline;
#   2. the same at batch 4 in fp32: the setting of the CPU table;
#   3. run 1 with train.compile=true, to decide whether torch.compile may become the default.
# CONFIG, BATCH, REPS and EXTRA (more dotted overrides) change the runs, e.g. for a quick check on a
# CPU: CONFIG=configs/default.yaml BATCH=4 REPS=1 bash tools/gpu_benchmark.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
CONFIG=${CONFIG:-configs/cub_k4.yaml}
BATCH=${BATCH:-32}
REPS=${REPS:-10}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
COMMON=(model.encoder.pretrained=false partformer.loss.vgg_weights=null)
name=$(basename "$CONFIG" .yaml)

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") \
    > "$OUT/device.txt" 2>&1
"$PY" -c "import torch, timm, kornia; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'timm', timm.__version__, 'kornia', kornia.__version__)" >> "$OUT/device.txt"

"$PY" tools/benchmark.py --config "$CONFIG" --batch-size "$BATCH" --parts train,eval \
    --reps "$REPS" --eval-batches 5 --out "$OUT/gpu_${name}_b${BATCH}_auto.json" \
    "${COMMON[@]}" $EXTRA
"$PY" tools/benchmark.py --config "$CONFIG" --batch-size 4 --parts train --reps "$REPS" \
    --no-flops --out "$OUT/gpu_${name}_b4_fp32.json" "${COMMON[@]}" train.precision=fp32 $EXTRA
"$PY" tools/benchmark.py --config "$CONFIG" --batch-size "$BATCH" --parts train --reps "$REPS" \
    --no-flops --out "$OUT/gpu_${name}_b${BATCH}_auto_compile.json" "${COMMON[@]}" \
    train.compile=true $EXTRA
echo "wrote $(ls "$OUT" | tr '\n' ' ')"
