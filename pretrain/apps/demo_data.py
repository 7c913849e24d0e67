"""The demo's data: scikit-learn's 1,797 handwritten digits (8x8 scans) as 32x32 RGB images.

The split is the semi-supervised regime the recipe is for: few human labels per task, many
unlabeled images, and a held-out test split that no choice was made on.

- ``test``: 300 images, both tasks labeled; only reported.
- ``val``: 200 images carved from the training pool, both tasks labeled; the demo's settings were
  chosen on it (``--tune`` trains and evaluates on it instead of ``test``).
- ``digit``: 5 images per class (50) labeled for ``digit`` only.
- ``parity``: 25 per class (50), other images, labeled for ``parity`` only. Both tasks get the
  same labeling budget, 50 images, about 4% of the pool: few enough that the unlabeled images
  have much to add (a student on 50 labels is far from what the digits allow), enough that a
  teacher trained on them is clearly better than chance.
- ``unla``, ``unlb``: the rest of the pool (~1,200 images), unlabeled, in two halves so that a
  run can use half of them.
"""
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from shards.inputs import Item

TASKS = {'digit': 10, 'parity': 2}
N_TEST, N_VAL = 300, 200
DIGIT_PER_CLASS, PARITY_PER_CLASS = 5, 25


def _per_class(indices: np.ndarray, classes: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of each class, in the given (shuffled) order."""
    return np.concatenate([indices[classes[indices] == c][:n] for c in np.unique(classes)])


def split(targets: np.ndarray, unlabeled_cap: int = 0) -> Dict[str, np.ndarray]:
    """Image indices per source; ``unlabeled_cap`` > 0 keeps that many unlabeled (quick runs)."""
    order = np.random.default_rng(0).permutation(len(targets))
    test, val, pool = order[:N_TEST], order[N_TEST:N_TEST + N_VAL], order[N_TEST + N_VAL:]
    digit = _per_class(pool, targets, DIGIT_PER_CLASS)
    rest = pool[~np.isin(pool, digit)]
    parity = _per_class(rest, targets % 2, PARITY_PER_CLASS)
    unlabeled = rest[~np.isin(rest, parity)]
    if unlabeled_cap:
        unlabeled = unlabeled[:unlabeled_cap]
    half = len(unlabeled) // 2
    return dict(test=test, val=val, digit=digit, parity=parity, unla=unlabeled[:half], unlb=unlabeled[half:])


def labels_of(source: str, y: int) -> Dict[str, int]:
    both = {'digit': y, 'parity': y % 2}
    if source in ('test', 'val'):
        return both
    return {source: both[source]} if source in both else {}


def make_items(folder: Path, unlabeled_cap: int = 0) -> Dict[str, List[Item]]:
    """Write the images once (PNG, 32x32 RGB) and return the shard builder's items per source."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)

    def item(i: int, source: str) -> Item:
        path = folder / f'{i:04d}.png'
        if not path.exists():
            gray = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(gray).resize((32, 32), Image.Resampling.BICUBIC).convert('RGB').save(path)
        return Item(str(path), f'digits/{i:04d}', labels_of(source, int(digits.target[i])))
    return {source: [item(int(i), source) for i in idx] for source, idx in split(digits.target, unlabeled_cap).items()}
