#!/usr/bin/env bash
# The evidence experiment (bench/evidence.py) at the `gpu` profile's sizes: a 224 px, 4x4-cell task, a 6-layer
# CLIP tower of width 384 and a 6-layer Llama of width 512 pretrained on the GPU, then the projector's alignment and
# the task-B fine-tunes as real `llamafactory-cli train` runs in bf16, four at once. Sized for one device call of
# under 10 minutes; it has not run on a GPU yet. Before the session, here: bash bench/gpu_wheels.sh (bench/wheels/).
#   device run: bash bench/gpu_evidence.sh     carry: ["bench/wheels"]   -> $OUT/evidence/{evidence.json,
#                                                                            evidence.md, *.png}, evidence.log,
#                                                                            setup.txt, gpu.txt
#   bash bench/gpu_evidence.sh --check         set-up path only, on the CPU here: every stage of the gpu profile
#                                              (its sizes and configs, fp32) for two steps on a few samples
# The generated data and checkpoints go to $OUT/evidence/cache, which is left out of what comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-.}
PY=${GPU_PYTHON:-python3}
mkdir -p "$OUT"
if [ "${1:-}" = "--check" ]; then
  OMP_NUM_THREADS=1 "$PY" bench/evidence.py --profile gpu --check --jobs 2 --out "$OUT/evidence_check" \
    > "$OUT/evidence_check.log" 2>&1 || { tail -30 "$OUT/evidence_check.log" >&2; exit 1; }
  tail -8 "$OUT/evidence_check.log"
  exit 0
fi
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { echo "no CUDA GPU here" >&2; exit 2; }
bash bench/gpu_setup.sh > "$OUT/setup.txt" 2>&1 || { tail -20 "$OUT/setup.txt" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
status=0
OMP_NUM_THREADS=4 timeout 540 "$PY" bench/evidence.py --profile gpu --jobs 4 --out "$OUT/evidence" \
  > "$OUT/evidence.log" 2>&1 || status=1
tail -12 "$OUT/evidence.log"
# What comes back: the results and the plots, not the generated data, checkpoints or runs.
rm -rf "$OUT/evidence/cache" "$OUT/evidence/runs" "$OUT/evidence/sweep" "$OUT/evidence/hf_home" "$OUT/evidence/measure"
exit $status
