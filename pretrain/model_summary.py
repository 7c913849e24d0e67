"""``replk-models``: parameters and MACs of the registered RepLKNet variants in each form.

Models are built on the meta device, so the full-size table prints in about a second.
"""
from __future__ import annotations

import argparse
import json

import timm
import torch

import pretrain.models  # noqa: F401  (registers the variants with timm)
from pretrain.models import count_macs, count_params
from shards.common.helpformat import HelpFormatter, command_name

VARIANTS = ('replknet_31b', 'replknet_31l', 'replknet_xl', 'replknet_13', 'replknet_3')


def summarize(name: str, size: int | None = None, num_classes: int = 1000) -> dict:
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=num_classes)
    size = size or model.pretrained_cfg['input_size'][-1]
    row = dict(model=name, input_size=size, params_train=count_params(model),
               gmacs_train=count_macs(model, (3, size, size)) / 1e9)
    model.reparameterize(merge_only=True)
    row.update(params_merged=count_params(model), gmacs_merged=count_macs(model, (3, size, size)) / 1e9)
    model.reparameterize()
    row.update(params_deploy=count_params(model))
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog=command_name('pretrain.model_summary'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('models', nargs='*', default=list(VARIANTS), help='timm model names')
    p.add_argument('--size', type=int, help='input side (default: the model\'s pretrained_cfg)')
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--json', action='store_true', help='one JSON object per line')
    args = p.parse_args(argv)
    rows = [summarize(m, args.size, args.num_classes) for m in args.models]
    if args.json:
        print('\n'.join(json.dumps(r) for r in rows))
        return
    print(f'{"model":14} {"size":>4} {"params train":>14} {"merged":>14} {"deploy":>14} '
          f'{"GMACs train":>11} {"merged":>8}')
    for r in rows:
        print(f'{r["model"]:14} {r["input_size"]:>4} {r["params_train"]:>14,} {r["params_merged"]:>14,} '
              f'{r["params_deploy"]:>14,} {r["gmacs_train"]:>11.2f} {r["gmacs_merged"]:>8.2f}')


if __name__ == '__main__':
    main()
