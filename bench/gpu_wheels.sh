#!/usr/bin/env bash
# Run here (with package registries) before a GPU session: downloads bench/gpu_wheels.txt (and EXTRA, e.g. a
# DeepSpeed wheel's requirements) as wheels for the GPU machine's Python into bench/wheels/, which git ignores and
# the device call carries (`carry: ["bench/wheels"]`, about 17 MB). PYTHON_VERSION defaults to the image's 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf bench/wheels && mkdir -p bench/wheels  # one Python version's wheels at a time
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d bench/wheels -r bench/gpu_wheels.txt
du -sh bench/wheels
