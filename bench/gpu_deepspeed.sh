#!/usr/bin/env bash
# lf-multilr under DeepSpeed ZeRO-2 and ZeRO-3 on a GPU machine with no package registries. Before the session,
# here: bash bench/gpu_wheels.sh && bash bench/deepspeed_wheels.sh (bench/wheels/, about 22 MB). On the machine,
# carrying bench/wheels:
#   bash bench/gpu_deepspeed.sh [--ranks N] [--stages 2 3]   -> $OUT/deepspeed.md, zero2.log, zero3.log, refused.log
#   bash bench/gpu_deepspeed.sh --check                      -> set-up and configs only, prints the commands
# Installs the wheels and this checkout into the image's Python (GPU_PYTHON, default python3: the one with
# PyTorch) with bench/gpu_setup.sh, then runs bench/deepspeed_run.py. Exit 0: every check passed; 1: one failed;
# 2: nothing could run (no GPU, no wheels, no torch).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-.}
PY=${GPU_PYTHON:-python3}
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  esac
done
"$PY" -c "import torch" 2>/dev/null || { echo "$PY has no torch: set GPU_PYTHON to the image's Python" >&2; exit 2; }
if [ "$CHECK" = 0 ]; then
  "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || {
    echo "$PY sees no CUDA GPU: run this on the GPU machine, or pass --check" >&2; exit 2; }
  ls bench/wheels/deepspeed-*.whl >/dev/null 2>&1 || {
    echo "no DeepSpeed wheel in bench/wheels: run bench/deepspeed_wheels.sh before the session and carry bench/wheels" >&2
    exit 2; }
  mkdir -p "$OUT"
  bash bench/gpu_setup.sh > "$OUT/setup.txt" 2>&1 || { tail -20 "$OUT/setup.txt" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
fi
exec "$PY" bench/deepspeed_run.py --out "$OUT" "$@"
