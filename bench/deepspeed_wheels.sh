#!/usr/bin/env bash
# Run here (with package registries) before a GPU session, after bench/gpu_wheels.sh: adds to bench/wheels/ what
# bench/gpu_deepspeed.sh needs beyond the LLaMA-Factory stack, for the GPU machine's Python (3.12 by default):
# a DeepSpeed wheel built from its sdist with no ops compiled ahead (DS_BUILD_OPS=0: pure Python, ops are built
# just in time on the machine, which has nvcc and ninja), and the DeepSpeed requirements the GPU image lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
DEEPSPEED=${DEEPSPEED:-0.19.8}
mkdir -p bench/wheels
# DeepSpeed's setup.py imports torch: build with this checkout's environment rather than an isolated one.
DS_BUILD_OPS=0 .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w bench/wheels "deepspeed==$DEEPSPEED"
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d bench/wheels \
  hjson==3.1.0 pydantic==2.12.3 pydantic_core==2.41.4 annotated-types==0.8.0 typing-inspection==0.4.5
du -sh bench/wheels
