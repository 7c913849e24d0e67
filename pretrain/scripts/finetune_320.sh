#!/usr/bin/env bash
# Fine-tune a RepLKNet-XL pretraining run on ImageNet-1K at 320 (configs/xl_finetune_in1k_320.json).
#   pretrain/scripts/finetune_320.sh RUN_DIR [--hostfile hostfile ...]   (extra arguments go to the deepspeed launcher)
# Writes RUN_DIR_ft320/ (checkpoints, metrics, result.json), then exports the EMA and raw weights.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 PRETRAIN_RUN_DIR [deepspeed launcher arguments...]" >&2
  exit 2
fi
run="$(cd "$1" && pwd)"; shift
cd "$(dirname "$0")/../.."
deepspeed "$@" pretrain/finetune.py --config configs/xl_finetune_in1k_320.json \
  --set "init.checkpoint=$run" --set "checkpoint.dir=${run}_ft320"
python -m pretrain.export "${run}_ft320" --task in1k --out "${run}_ft320/export"
python -m pretrain.export "${run}_ft320" --task in1k --ema --out "${run}_ft320/export_ema"
