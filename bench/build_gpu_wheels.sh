#!/usr/bin/env bash
# Builds, on a machine with PyPI access, the wheels bench/gpu_check.sh installs on an offline GPU
# machine whose Python already has torch, timm, transformers, pyarrow, Pillow, numpy, pyyaml,
# msgpack, ninja, psutil, py-cpuinfo, einops, packaging and tqdm (CPython 3.12, x86-64 Linux).
#
#   bench/build_gpu_wheels.sh [PYTHON_VERSION]    # default 3.12; output: bench/wheels/ (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
OUT=bench/wheels
mkdir -p "$OUT"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# The versions the project is tested with (../README: "Proven versions"); one version of each.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$OUT" \
  webdataset==1.0.2 braceexpand==0.1.7 hjson==3.1.0 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
# deepspeed 0.19.8 is an sdist; it builds a pure-Python wheel (no ops compiled, no CUDA needed).
python3 -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w "$OUT"
ls -1 "$OUT"
du -sh "$OUT"
