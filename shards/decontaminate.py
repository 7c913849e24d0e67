"""Find the training samples that are near-duplicates of evaluation images; write the exclusion list.

Evaluation side (small: ImageNet-1K val is 50,000 images): every image is read and hashed in 20
variants (``perceptual.variant_hashes``). Training side (large): only the hashes stored beside the
index are read (``hashes.py``), never an image. A training sample is excluded when its pHash is
within ``max_phash`` of some variant (found by multi-index hashing, ``hamming.py``) and its dHash
and dHash distances to that same variant sum to at most ``max_joint`` (of 128 bits). The least
certain matches go into a PNG for a person to check.

Evaluation images with almost no structure (grey-level standard deviation under ``PLAIN_STD``: a
blank sky, a black frame) are not matched: their hash bits are noise, and they would match every
other plain image. The report counts them.
"""
from __future__ import annotations

import datetime
import io
import json
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from . import exclusions, storage
from .common.errors import BadValue
from .hamming import MultiIndex, popcount64
from .hashes import iter_segments, shards_without_hashes
from .images import BadImage, decode_rgb, image_part
from .index import entry_url, load_source, load_source_and_plan
from .perceptual import HASH_VERSION, variant_hashes, variant_name
from .reader import iter_shard_samples

log = logging.getLogger(__name__)
MAX_PHASH = 8      # planted copies measured at <= 6, distinct photos at >= 14 (perceptual.py)
MAX_JOINT = 24     # pHash + dHash: planted copies <= 17 (JPEG quality 40 moves dHash most), distinct >= 34
PLAIN_STD = 10.0
QUERY_BATCH = 50_000


@dataclass
class EvalSet:
    keys: List[str]                 # one per evaluation image
    where: List[Tuple[str, int]]    # (shard URL, ordinal) of each, to draw it
    phash: np.ndarray               # uint64, one per variant
    dhash: np.ndarray
    owner: np.ndarray               # evaluation image of each variant
    variant: np.ndarray             # which variant (perceptual.variant_name)
    too_plain: int                  # evaluation images not matched (PLAIN_STD)


def hash_eval_set(prefix: str, sources: Sequence[str], policy: storage.RetryPolicy, progress: bool = False) -> EvalSet:
    keys, where, rows, plain = [], [], [], 0
    for source in sources:
        shards, plan = load_source_and_plan(prefix, source, policy)
        if not shards:
            raise BadValue(f'evaluation source {source!r}: no shards indexed under {prefix}')
        for name in tqdm(sorted(shards), unit='shard', desc=f'hash evaluation source {source}', disable=not progress):
            url = entry_url(prefix, shards[name], plan)
            for ordinal, raw in enumerate(iter_shard_samples(url, 0, None, policy)):
                try:
                    image = decode_rgb(image_part(raw))
                except BadImage as exc:
                    log.warning('evaluation image %s unreadable, not matched against: %s', raw['__key__'], exc)
                    continue
                if np.asarray(image.convert('L'), dtype=np.float32).std() < PLAIN_STD:
                    plain += 1
                    continue
                hashes = variant_hashes(image)
                rows += [(len(keys), v, ph, dh) for v, (ph, dh) in enumerate(hashes)]
                keys.append(raw['__key__'])
                where.append((url, ordinal))
    if not keys:
        raise BadValue(f'no readable evaluation images with structure under {prefix} ({", ".join(sources)})')
    owner, variant, ph, dh = (np.array(c, dtype=t) for c, t in zip(zip(*rows), (np.int64, np.int64, np.uint64, np.uint64)))
    return EvalSet(keys, where, ph, dh, owner, variant, plain)


def keep_closer(found: Dict[str, dict], key: str, match: dict) -> None:
    """``match`` for ``key`` unless ``found`` holds a closer one (pHash + dHash bits)."""
    old = found.get(key)
    if old is None or match['phash_distance'] + match['dhash_distance'] < old['phash_distance'] + old['dhash_distance']:
        found[key] = match


def match_segment(evalset: EvalSet, index: MultiIndex, table, max_phash: int, max_joint: int) -> Dict[str, dict]:
    """Key -> the closest match of each sample of one hash segment that matches at all."""
    ph = table['phash'].to_numpy().astype(np.uint64)
    dh = table['dhash'].to_numpy().astype(np.uint64)
    found: Dict[str, dict] = {}
    for start in range(0, len(ph), QUERY_BATCH):
        q, c, dp = index.query(ph[start:start + QUERY_BATCH], max_phash)
        q = q + start
        dd = popcount64(dh[q] ^ evalset.dhash[c])
        ok = dp + dd <= max_joint
        for row, pos, a, b in zip(q[ok].tolist(), c[ok].tolist(), dp[ok].tolist(), dd[ok].tolist()):
            key = table['key'][row].as_py()
            keep_closer(found, key, dict(shard=table['shard'][row].as_py(), ordinal=table['ordinal'][row].as_py(), key=key,
                                         eval_key=evalset.keys[evalset.owner[pos]],
                                         eval_variant=variant_name(int(evalset.variant[pos])), phash_distance=a,
                                         dhash_distance=b))
    return found


def decontaminate(prefix: str, sources: Sequence[str], eval_prefix: str, eval_sources: Sequence[str], out: str,
                  max_phash: int = MAX_PHASH, max_joint: int = MAX_JOINT, pairs_png: Optional[str] = None,
                  policy: storage.RetryPolicy = storage.DEFAULT_RETRY, progress: bool = False) -> dict:
    """Match ``sources`` under ``prefix`` against the evaluation shards; write the list to ``out``.
    Returns the report (per source: samples, excluded), also written beside the list."""
    if not sources or not eval_sources:
        raise BadValue(f'no shard index under {prefix if not sources else eval_prefix}: nothing to match')
    for where, names in ((prefix, sources), (eval_prefix, eval_sources)):
        for source in names:
            if not load_source(where, source, policy):
                raise BadValue(f'source {source!r}: no shards indexed under {where} (a typo, or another prefix?)')
    missing = {s: n for s in sources if (n := shards_without_hashes(prefix, s, policy))}
    if missing:
        raise BadValue('no perceptual hashes for ' + '; '.join(f'{len(n)} shards of {s!r} (e.g. {n[0]})'
                                                               for s, n in missing.items())
                         + f': run `replk-shards hash {prefix} --source <name>` first')
    evalset = hash_eval_set(eval_prefix, eval_sources, policy, progress)
    index = MultiIndex(evalset.phash)
    rows, report, pairs = [], {}, []
    for source in sources:
        (shards, plan), best = load_source_and_plan(prefix, source, policy), {}
        segments = iter_segments(prefix, source, policy=policy)   # one segment in memory at a time
        for table in tqdm(segments, unit='segment', desc=f'match {source}', disable=not progress):
            for key, match in match_segment(evalset, index, table, max_phash, max_joint).items():
                keep_closer(best, key, match)
        for key, match in sorted(best.items()):
            rows.append(dict(match, source=source, shard_sha256=shards[match['shard']].sha256))
            pairs.append((match['phash_distance'] + match['dhash_distance'], entry_url(prefix, shards[match['shard']], plan),
                          match['ordinal'], rows[-1]))
        samples = sum(e.samples for e in shards.values())  # every indexed shard is hashed (checked above)
        report[source] = dict(samples=samples, excluded=len(best))
        log.info('%s: %d of %d samples match an evaluation image', source, len(best), samples)
    info = dict(created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                prefix=prefix, sources=report, against=dict(prefix=eval_prefix, sources=list(eval_sources),
                                                            images=len(evalset.keys), too_plain=evalset.too_plain),
                max_phash=max_phash, max_joint=max_joint, hashes=HASH_VERSION)
    info['id'] = exclusions.write(out, rows, info, policy)
    storage.write_bytes_atomic(report_url(out), json.dumps(info, indent=1).encode(), policy)
    if pairs_png:
        draw_pairs(pairs, evalset, pairs_png, policy)
    return info


def report_url(out: str) -> str:
    return (out[:-len('.parquet')] if out.endswith('.parquet') else out) + '.report.json'


def draw_pairs(pairs: list, evalset: EvalSet, png: str, policy: storage.RetryPolicy, most: int = 24) -> None:
    """The least certain matches first (largest distances): training image beside evaluation image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    chosen = sorted(pairs, key=lambda p: -p[0])[:most]
    if not chosen:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis('off')
        ax.text(0.5, 0.5, 'no training image matched an evaluation image', ha='center', va='center')
    else:
        wanted = {(url, o) for _, url, o, _ in chosen}
        wanted |= {evalset.where[evalset.keys.index(r['eval_key'])] for *_, r in chosen}
        images = _fetch(wanted, policy)
        fig, axes = plt.subplots(len(chosen), 2, figsize=(5, 2.4 * len(chosen)), squeeze=False)
        for (dist, url, o, r), (left, right) in zip(chosen, axes):
            left.imshow(images[(url, o)])
            left.set_title(f'{r["key"]}\npHash {r["phash_distance"]}, dHash {r["dhash_distance"]}', fontsize=7)
            right.imshow(images[evalset.where[evalset.keys.index(r['eval_key'])]])
            right.set_title(f'{r["eval_key"]}\n({r["eval_variant"]})', fontsize=7)
            left.axis('off')
            right.axis('off')
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=80)
    plt.close(fig)
    storage.write_bytes_atomic(png, buf.getvalue(), policy)


def _fetch(wanted, policy) -> dict:
    """Decoded images at (shard URL, ordinal), reading each shard once."""
    by_url: Dict[str, set] = {}
    for url, o in wanted:
        by_url.setdefault(url, set()).add(o)
    out = {}
    for url, ordinals in by_url.items():
        for o, raw in enumerate(iter_shard_samples(url, 0, max(ordinals) + 1, policy)):
            if o in ordinals:
                out[(url, o)] = decode_rgb(image_part(raw))
    return out
