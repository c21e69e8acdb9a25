#!/usr/bin/env bash
# Step-time ratio on a GPU: a Qwen2-VL with the 2B release's sizes, random weights, bf16, lf-multilr (three module
# groups, per-module metrics) against stock LLaMA-Factory, interleaved. Prepared for a machine with one NVIDIA GPU
# and internet-free package wheels (see docs/performance.md); writes the table to ${OUT:-.}/gpu_step_time.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e .
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "${OUT:-.}/gpu.txt"
OMP_NUM_THREADS=4 .venv/bin/python bench/step_time.py --sizes bench/configs/qwen2_vl_2b --bf16 --batch 2 \
  --repeats 3 --steps 30 | tee "${OUT:-.}/gpu_step_time.md"
