#!/usr/bin/env bash
# Every GPU check in one call (a session's device time is short): set-up once, then the step-time ratio
# (bench/step_time.py), DeepSpeed ZeRO-2/3 (bench/deepspeed_run.py) and QLoRA with module LRs (bench/qlora_run.py).
# Before the session, here: bash bench/gpu_wheels.sh && bash bench/deepspeed_wheels.sh (bench/wheels/). Then:
#   device run: bash bench/gpu_all.sh        carry: ["bench/wheels"]     -> $OUT/*.md, *.log, setup.txt, gpu.txt
#   bash bench/gpu_all.sh --check            set-up path only, on a CPU stand-in (no GPU): configs, the QLoRA
#                                            measurement on the tiny model, the commands
# Each part writes its markdown under $OUT as it ends, so a part that runs out of time leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-.}
PY=${GPU_PYTHON:-python3}
mkdir -p "$OUT"
status=0
if [ "${1:-}" = "--check" ]; then
  "$PY" bench/deepspeed_run.py --out "$OUT" --check || status=1
  OMP_NUM_THREADS=1 "$PY" bench/qlora_run.py --out "$OUT" --cpu --steps 3 --repeats 2 || status=1
  exit $status
fi
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { echo "no CUDA GPU here" >&2; exit 2; }
bash bench/gpu_setup.sh > "$OUT/setup.txt" 2>&1 || { tail -20 "$OUT/setup.txt" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
OMP_NUM_THREADS=4 timeout 200 "$PY" bench/step_time.py --sizes bench/configs/qwen2_vl_2b --bf16 --batch 2 \
  --every 10 --repeats 4 --steps 30 > "$OUT/gpu_step_time.md" 2>"$OUT/step_time.log" || status=1
timeout 150 "$PY" bench/deepspeed_run.py --out "$OUT" || status=1
timeout 220 "$PY" bench/qlora_run.py --out "$OUT" --steps 30 --repeats 2 || status=1
exit $status
