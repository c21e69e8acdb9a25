#!/usr/bin/env bash
# Run on the GPU machine (no package registries there): installs the wheels from bench/gpu_wheels.sh and this
# checkout into the image's own Python (GPU_PYTHON, default python3), the one that holds PyTorch. That Python is
# itself a virtual environment on these machines, so a --system-site-packages venv on top of it would not see
# PyTorch; the machine is discarded after the session, so installing into it changes nothing that lasts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
if ! ls bench/wheels/*.whl >/dev/null 2>&1; then
  echo "bench/wheels/ is empty: run bench/gpu_wheels.sh before the session and carry bench/wheels" >&2
  exit 2
fi
"$PY" -c "import torch" || { echo "$PY has no torch: set GPU_PYTHON to the image's Python" >&2; exit 2; }
"$PY" -m pip install -q --no-index --no-deps bench/wheels/*.whl
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
"$PY" -m lf_multilr.cli doctor
