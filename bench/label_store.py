"""Label-store size, top-k fidelity and join speed.

Bytes per image per task of our parquet parts (top-k int32 + float16, zstd) vs a JSON row of
full probabilities and a float32 full-probability array, for 1000 and 21841 classes; the KL
divergence between the top-k (renormalized) and the full distribution; the join throughput
(labels/s) of ``LabelStore.shard_targets``. Headline: ours = our bytes at k=10 for 1000
classes, peer = float32 full bytes for 1000 classes, ratio = peer / ours (goal >= 60).

    python bench/label_store.py --images 2000
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labeling.store import LabelStore, Row  # noqa: E402

BENCH_TEACHER = {'teachers': [{'kind': 'synthetic', 'model': 'teacher-like soft labels'}]}
from labeling.tasks import Task, TaskRegistry  # noqa: E402


def teacher_like_probs(n: int, classes: int, seed: int = 0) -> np.ndarray:
    """Peaked soft labels: logits with a few strong classes, as a ViT-L teacher gives."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes)).astype(np.float32)
    for boost in (9.0, 6.0, 4.0):
        logits[np.arange(n), rng.integers(0, classes, n)] += boost
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def topk(p: np.ndarray, k: int):
    idx = np.argpartition(-p, k, axis=1)[:, :k]
    vals = np.take_along_axis(p, idx, 1)
    order = np.argsort(-vals, 1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(vals, order, 1)


def measure(classes: int, images: int, per_shard: int, tmp: Path) -> dict:
    p = teacher_like_probs(images, classes)
    keys = [f'src/{i // per_shard:06d}/{i % per_shard:06d}' for i in range(images)]
    json_bytes = sum(len(json.dumps({'key': k, 'prob': [round(float(x), 6) for x in row]}).encode()) + 1
                     for k, row in zip(keys[:200], p[:200])) / 200
    out = dict(classes=classes, float32_full=4 * classes, json_full=json_bytes, ours={}, kl_nats={}, mass={})
    registry = TaskRegistry()
    registry.register(Task(f'c{classes}', tuple(str(i) for i in range(classes))))
    for k in (5, 10, 20):
        idx, vals = topk(p, k)
        mass = vals.sum(1)
        out['kl_nats'][k] = float(np.mean(-np.log(mass)))   # KL(top-k renormalized || full)
        out['mass'][k] = float(np.mean(mass))
        store = LabelStore(str(tmp / f'store_{classes}_{k}'), registry)
        store.open_task(f'c{classes}', teacher=BENCH_TEACHER, topk=k)
        total = 0
        for s in range(0, images, per_shard):
            rows = [Row(keys[i], idx[i], vals[i], 'pseudo') for i in range(s, min(s + per_shard, images))]
            total += len(_part_bytes(store, f'c{classes}', keys[s], rows))
        store.refresh_manifest(f'c{classes}')
        out['ours'][k] = total / images
        if k == 10:
            out['join_labels_per_s'] = _join_rate(store, f'c{classes}', images, per_shard)
    return out


def _part_bytes(store, task, first_key, rows):
    from shards import storage
    from shards.naming import shard_stem_of_key
    record = store.write_part(task, shard_stem_of_key(first_key), rows, kind='teacher', teacher=BENCH_TEACHER)
    return storage.read_bytes(f'{store.root}/labels/{task}/{record["file"]}')


def _join_rate(store, task, images, per_shard, repeats=3) -> float:
    stems = sorted(store.committed_parts(task))
    rates = []
    for _ in range(repeats):
        fresh = LabelStore(store.root, store.registry)
        start = time.perf_counter()
        n = sum(len(fresh.shard_targets(stem, [task])[task]) for stem in stems)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=2000)
    ap.add_argument('--per-shard', type=int, default=500)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix='replk-labelbench-'))
    results = [measure(c, args.images, args.per_shard, tmp) for c in (1000, 21841)]
    print(f'{args.images} images, parts of {args.per_shard}; bytes per image per task')
    print(f'{"classes":>8} {"f32 full":>9} {"JSON full":>10} {"ours k=5":>9} {"k=10":>7} {"k=20":>7}  '
          f'{"KL k=5/10/20 (nats)":>22}  {"join labels/s":>13}')
    for r in results:
        print(f'{r["classes"]:>8} {r["float32_full"]:>9} {r["json_full"]:>10.0f} {r["ours"][5]:>9.1f} '
              f'{r["ours"][10]:>7.1f} {r["ours"][20]:>7.1f}  '
              f'{r["kl_nats"][5]:>6.3f}/{r["kl_nats"][10]:.3f}/{r["kl_nats"][20]:.3f}  {r["join_labels_per_s"]:>13.0f}')
    c1k = results[0]
    headline = dict(bench='label_store', metric='bytes/image/task', ours=round(c1k['ours'][10], 2),
                    peer=c1k['float32_full'], ratio=round(c1k['float32_full'] / c1k['ours'][10], 1),
                    join_labels_per_s=round(c1k['join_labels_per_s']),
                    kl_nats_k10={r['classes']: round(r['kl_nats'][10], 4) for r in results},
                    config=dict(images=args.images, per_shard=args.per_shard))
    print(json.dumps(headline))
    return headline


if __name__ == '__main__':
    main()
