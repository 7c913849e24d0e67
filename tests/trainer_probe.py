"""Builds the Trainer exactly as ``pretrain/run.py`` does (one plain process) and reports what
happens inside the engine's forward, as JSON on the last line of stdout.

    python tests/trainer_probe.py --config configs/tiny_cpu.json --set ... [--cuda-autocast-query]

``--cuda-autocast-query`` reproduces on CPU the decision DeepSpeed makes on a GPU: its
``autocast_if_enabled`` asks ``torch.is_autocast_enabled()`` with no device, which reports the
CUDA autocast state; on a CPU run that is always False, so the bug (autocast switched off inside
the engine) never shows. The flag makes the no-argument query report the state of the device
the run uses (CPU here), which is what the same query answers on a CUDA run.

Reported: the conv inputs' memory format and output dtypes inside the engine's forward, whether
every engine parameter can be viewed as bytes (DeepSpeed's initial broadcast does that), and the
host syncs (``item``/``tolist``/``float``/``bool`` on tensors) made by project code during
non-logging micro-steps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_probe(config: str, sets: dict, *flags: str, timeout: float = 300) -> dict:
    """Runs this script in a fresh process (one DeepSpeed engine per process) and returns its report."""
    args = [f'--set={k}={json.dumps(v)}' for k, v in sets.items()]
    proc = subprocess.run([sys.executable, __file__, '--config', config, *args, *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'trainer probe failed:\n{proc.stderr[-4000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def patch_autocast_query(device_type: str) -> None:
    original = torch.is_autocast_enabled

    def query(*args, **kwargs):
        return original(*args, **kwargs) if args or kwargs else original(device_type)

    torch.is_autocast_enabled = query


def conv_probe(model: torch.nn.Module) -> dict:
    seen = dict(channels_last=Counter(), out_dtype=Counter())

    def hook(module, inputs, output):
        x = inputs[0]
        if x.dim() == 4 and x.shape[-1] > 1 and x.shape[-2] > 1:  # 1x1 maps have one layout
            seen['channels_last'][str(x.is_contiguous(memory_format=torch.channels_last))] += 1
        seen['out_dtype'][str(output.dtype)] += 1

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    return seen


class HostSyncCounter:
    """Counts tensor->host conversions whose caller is a project file (pretrain/, shards/, labeling/)."""

    METHODS = ('item', 'tolist', '__float__', '__bool__', '__int__')

    def __init__(self):
        self.calls = Counter()
        self.active = False
        self._originals = {name: getattr(torch.Tensor, name) for name in self.METHODS}
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def wrapper(tensor, *args, **kwargs):
            if self.active:
                frame = sys._getframe(1)
                path = Path(frame.f_code.co_filename)
                if REPO in path.parents and path.parts[len(REPO.parts)] in ('pretrain', 'shards', 'labeling'):
                    self.calls[f'{path.relative_to(REPO)}:{frame.f_lineno}:{name}'] += 1
            return original(tensor, *args, **kwargs)
        return wrapper


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    cuda_query = '--cuda-autocast-query' in argv
    if cuda_query:
        argv.remove('--cuda-autocast-query')
    round_trip = '--checkpoint-round-trip' in argv
    if round_trip:
        argv.remove('--checkpoint-round-trip')
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed
    from pretrain.engine import Trainer
    from pretrain.run import parse_args

    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    env, device = init_distributed()
    if cuda_query:
        patch_autocast_query(device.type)
    trainer = Trainer(cfg, env, device)
    report = dict(params_viewable_as_bytes=_viewable(trainer.engine.module),
                  params_contiguous=all(p.is_contiguous() for p in trainer.engine.module.parameters()))
    seen = conv_probe(trainer.engine.module)
    counter = HostSyncCounter()
    it = iter(trainer.loader)
    trainer.micro_step(next(it))  # first step: lazy initialisation
    counter.active = True
    steps = 2
    for _ in range(steps):
        trainer.micro_step(next(it))
    counter.active = False
    report.update(conv_inputs_channels_last=dict(seen['channels_last']), conv_out_dtype=dict(seen['out_dtype']),
                  host_syncs=dict(counter.calls), micro_steps=steps, optimizer_steps=trainer.step)
    if round_trip:
        report['round_trip'] = checkpoint_round_trip(trainer, cfg.checkpoint.dir, it)
    print(json.dumps(report), flush=True)


def checkpoint_round_trip(trainer, run_dir: str, batches) -> dict:
    """Save, change every registered part (more steps, other counters), load; for each part,
    whether its state came back exactly as saved. The model weights are DeepSpeed's part."""
    import copy

    from pretrain import checkpoint
    trainer.nonfinite_in_a_row, trainer.nonfinite_total, trainer.corrupt_total = 1, 5, 3
    saved = {name: copy.deepcopy(part.obj.state_dict()) for name, part in trainer.parts.items()}
    saved['model'] = copy.deepcopy(trainer.engine.module.state_dict())
    env = trainer.env
    tag = checkpoint.save(trainer.engine, run_dir, trainer.step, env.rank, env.world_size, trainer.parts, keep=1)
    for batch, _ in zip(_forever(trainer.loader, batches), range(2)):
        trainer.micro_step(batch)
    torch.rand(3)  # the global RNGs move on
    trainer.nonfinite_in_a_row, trainer.nonfinite_total, trainer.corrupt_total = 0, 0, 0
    if trainer.label_pin is not None:   # as if the run had started from a newer store
        trainer.label_pin.pinned = {t: dict(p, digest='0' * 16) for t, p in trainer.label_pin.pinned.items()}
    changed = {name: not _same(saved[name], part.obj.state_dict()) for name, part in trainer.parts.items()}
    checkpoint.load(trainer.engine, run_dir, tag, env.rank, env.world_size, trainer.parts)
    restored = {name: _same(saved[name], part.obj.state_dict()) for name, part in trainer.parts.items()}
    restored['model'] = _same(saved['model'], trainer.engine.module.state_dict())
    return dict(parts=sorted(trainer.parts), changed_before_load=changed, restored=restored)


def _forever(loader, current):
    yield from current
    while True:
        yield from loader


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _viewable(model) -> bool:
    try:
        for p in model.parameters():
            p.data.view(torch.uint8)
    except RuntimeError:
        return False
    return True


if __name__ == '__main__':
    main()
