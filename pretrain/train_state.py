"""What a checkpoint holds besides DeepSpeed's model/optimizer/scheduler files: the registered parts.

Every stateful piece of a run (the loader's cursor, the RNGs, the EMA weights, the trainer's
counters) is a ``Stateful``: ``state_dict()``/``load_state_dict()`` plus a ``state_version``
that the load checks. The trainer registers its parts once (``Trainer.checkpoint_parts``);
``pretrain.checkpoint`` saves and loads whatever is registered, so adding state to a run is
one ``Part`` in one place, and a part the checkpoint lacks is an error, never skipped.
"""
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful as DistributedStateful


class Stateful(DistributedStateful, Protocol):
    """torch.distributed.checkpoint's ``Stateful`` with the version its load checks."""
    state_version: int


@dataclass(frozen=True)
class Part:
    """``per_rank``: every rank saves its own copy (loader cursor, RNGs); otherwise the state is
    the same on every rank and rank 0 alone writes it (EMA weights)."""
    obj: Stateful
    per_rank: bool

    def file_name(self, name: str, rank: int) -> str:
        return f'{name}_rank{rank}.pt' if self.per_rank else f'{name}.pt'


class RngState:
    """Every global RNG a training step draws from (drop path, mixup), to resume step for step.
    Tensors and plain data only, so loading never needs to unpickle numpy objects."""
    state_version = 1

    def state_dict(self) -> dict:
        import random

        import numpy as np
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return dict(python=random.getstate(),
                    numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                    torch=torch.get_rng_state(),
                    cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def load_state_dict(self, state: dict) -> None:
        import random

        import numpy as np
        random.setstate(state['python'])
        kind, keys, pos, has_gauss, gauss = state['numpy']
        np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state['torch'])
        if state['cuda'] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])


class ModuleWeights:
    """A module's weights as a part (the EMA copy): the plain state dict, which export and
    ``init.checkpoint`` read back as model weights."""
    state_version = 1

    def __init__(self, module: nn.Module):
        self.module = module

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state, strict=True)
