#!/usr/bin/env bash
# The GPU path on one NVIDIA GPU in at most 9 minutes, wheel install included; deciding numbers first.
#
#   bench/gpu_check.sh                 # on the GPU machine (after bench/build_gpu_wheels.sh, see below)
#   bench/gpu_check.sh --cpu-dry-run   # every step on tiny shapes on CPU (part of `make test`)
#   bench/gpu_check.sh --only=125      # some steps only (bench/gpu_check.py says which is which)
#   bench/gpu_check.sh --out=DIR       # where its files go (default: $OUT when set, else runs/gpu_check)
#
# Everything it writes goes under the --out folder (at most 8 files): under the device tool, $OUT,
# so the tables, the results and lk_impl='auto''s decision cache come back with the reply.
# The GPU machine's Python is expected to hold torch with CUDA, timm, transformers, pyarrow and
# Pillow, but not deepspeed, webdataset, braceexpand, hjson or pydantic, and to have no network.
# bench/build_gpu_wheels.sh, run beforehand on a networked machine, puts the missing wheels in
# bench/wheels/ (git-ignored); this script installs them with --target into .gpu_site/ and puts
# that folder and the repository on PYTHONPATH. Where they are already importable, nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-540} ))
PY=${PYTHON:-python3}
DRY=""
ONLY=()
OUTDIR=${OUT:-runs/gpu_check}
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY="--cpu-dry-run" ;;
    --only=*) ONLY=("$arg") ;;
    --out=*) OUTDIR=${arg#--out=} ;;
    *) echo "gpu_check: unknown argument $arg (only --cpu-dry-run, --only=STEPS and --out=DIR)" >&2; exit 2 ;;
  esac
done
if [[ -z "$DRY" ]] && ! "$PY" -c 'import deepspeed, webdataset' 2>/dev/null; then
  if ! compgen -G 'bench/wheels/*.whl' >/dev/null; then
    echo "gpu_check: deepspeed/webdataset are missing and bench/wheels/ holds no wheels:" >&2
    echo "  run bench/build_gpu_wheels.sh on a machine with PyPI access and copy bench/wheels/ here" >&2
    exit 2
  fi
  timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .gpu_site bench/wheels/*.whl
  export PYTHONPATH="$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PY" bench/gpu_check.py $DRY "${ONLY[@]}" --out "$OUTDIR" --deadline "$DEADLINE"
