#!/usr/bin/env bash
# Step-time ratio on a GPU: a Qwen2-VL with the 2B release's sizes, random weights, bf16, lf-multilr (three module
# groups, per-module metrics) against stock LLaMA-Factory, interleaved. For a GPU machine with no package
# registries: run bench/gpu_wheels.sh here first, then on the machine (carrying bench/wheels):
#   bash bench/gpu_step_time.sh        -> ${OUT:-.}/gpu_step_time.md, gpu.txt, setup.txt
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
bash bench/gpu_setup.sh 2>&1 | tee "$OUT/setup.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
OMP_NUM_THREADS=4 "${GPU_PYTHON:-python3}" bench/step_time.py --sizes bench/configs/qwen2_vl_2b --bf16 --batch 2 \
  --every 10 --repeats 4 --steps 30 | tee "$OUT/gpu_step_time.md"
