"""Fine-tuning (e.g. ImageNet-1K at 320 with stage-wise lr decay 0.4 and EMA) on the pretraining engine.

    deepspeed pretrain/finetune.py --config configs/xl_finetune_in1k_320.json
    deepspeed pretrain/finetune.py --config configs/xl_finetune_in1k_320.json --set init.checkpoint=runs/xl_megadata

The same loop, checkpoints and resume as ``pretrain/run.py``; a fine-tuning config must
name its starting weights (``init``) and usually sets ``optim.layer_decay`` and ``train.ema_decay``.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ''):  # run as a script by a launcher: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain import run  # noqa: E402
from pretrain.config import ConfigError  # noqa: E402


def require_init(cfg) -> None:
    if cfg.init is None:
        raise ConfigError('init: fine-tuning needs starting weights (init.checkpoint: a run folder, '
                          'a .pt/.pth/.bin or .safetensors file, or an official RepLKNet release)')


def main(argv=None) -> dict:
    return run.main(argv, check=require_init, doc=__doc__, module='pretrain.finetune')


if __name__ == '__main__':
    main()
