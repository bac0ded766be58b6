#!/usr/bin/env bash
# Issue 10's GPU measurement as one prepared script: a lent GPU machine gives a session minutes, not
# hours, so everything runs from one command and writes its JSON under $OUT (README "Performance").
#
#   OUT=/path/to/out bash tools/gpu_benchmark.sh
#
# Random weights and random images (nothing is downloaded, no dataset needed). Needs torch with
# CUDA, timm, kornia, opencv-python-headless, pyyaml, safetensors, scikit-learn. Runs:
#   1. the paper's CUB configuration at batch 32, fp32 and bf16 interleaved (--precisions): step /
#      floor, evaluation split, pretraining images/s, GFLOP/s against the GEMM peak -- the headline;
#   2. the same at batch 4 in fp32: the setting of the CPU table;
#   3. run 1 in bf16 with train.compile=true, to decide whether torch.compile may become the default;
#   4. every other method's CUB configuration (MPAE, PDiscoFormer, PDiscoNet), fp32 and bf16
#      interleaved, training step only (METHODS="" skips them).
# CONFIG, BATCH, REPS and EXTRA (more dotted overrides) change the runs, e.g. for a quick check on a
# CPU: CONFIG=configs/default.yaml BATCH=4 REPS=1 bash tools/gpu_benchmark.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
CONFIG=${CONFIG:-configs/cub_k4.yaml}
BATCH=${BATCH:-32}
REPS=${REPS:-10}
EXTRA=${EXTRA:-}
METHODS=${METHODS-configs/cub_mpae_k16.yaml configs/cub_pdiscoformer_k4.yaml configs/cub_pdisconet_k4.yaml}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
COMMON=(model.encoder.pretrained=false partformer.loss.vgg_weights=null mpae.loss.vgg_weights=null)
name=$(basename "$CONFIG" .yaml)

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") \
    > "$OUT/device.txt" 2>&1
"$PY" -c "import torch, timm, kornia; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'timm', timm.__version__, 'kornia', kornia.__version__)" >> "$OUT/device.txt"

"$PY" tools/benchmark.py --config "$CONFIG" --batch-size "$BATCH" --parts train,eval \
    --reps "$REPS" --eval-batches 5 --precisions fp32,bf16 \
    --out "$OUT/gpu_${name}_b${BATCH}_precisions.json" "${COMMON[@]}" $EXTRA
"$PY" tools/benchmark.py --config "$CONFIG" --batch-size 4 --parts train --reps "$REPS" \
    --no-flops --out "$OUT/gpu_${name}_b4_fp32.json" "${COMMON[@]}" train.precision=fp32 $EXTRA
"$PY" tools/benchmark.py --config "$CONFIG" --batch-size "$BATCH" --parts train --reps "$REPS" \
    --no-flops --out "$OUT/gpu_${name}_b${BATCH}_bf16_compile.json" "${COMMON[@]}" \
    train.precision=bf16 train.compile=true $EXTRA
for cfg in $METHODS; do
    "$PY" tools/benchmark.py --config "$cfg" --batch-size "$BATCH" --parts train --reps "$REPS" \
        --no-flops --precisions fp32,bf16 \
        --out "$OUT/gpu_$(basename "$cfg" .yaml)_b${BATCH}_precisions.json" "${COMMON[@]}" $EXTRA
done
echo "wrote $(ls "$OUT" | tr '\n' ' ')"
