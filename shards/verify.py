"""``shards verify``: every listed shard is whole, matches its hash, and every image decodes."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Dict, List

from tqdm import tqdm

from . import storage
from .common.errors import BadValue
from .images import IMAGE_EXTS, BadImage, decode_rgb
from .index import INDEX_DIR, ShardIndex
from .naming import split_adopted, split_member
from .reader import REFUSED, tar_members, tar_samples


def _check_samples(shard: str, members: Dict[str, Dict[str, bytes]], faults: List[str], adopted: bool) -> None:
    for key, parts in members.items():
        if REFUSED in parts:
            faults.append(f'{shard}: sample {key} refused by its tar header: {parts[REFUSED]}')
            continue
        images = [e for e in parts if e in IMAGE_EXTS]
        if len(images) != 1 or ('json' not in parts and not adopted):
            faults.append(f'{shard}: sample {key} has parts {sorted(parts)}; expected one image'
                          + ('' if adopted else ' and .json'))
            continue
        try:
            meta = json.loads(parts['json']) if not adopted else {}
            if not adopted and (not isinstance(meta, dict) or 'source' not in meta):
                raise BadValue('no "source" field')
        except ValueError as exc:
            faults.append(f'{shard}: sample {key} has bad metadata: {exc}')
        try:
            decode_rgb(parts[images[0]])
        except BadImage as exc:
            faults.append(f'{shard}: sample {key} image does not decode: {exc}')


def verify(prefix: str, decode: bool = True, retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
           progress: bool = False) -> List[str]:
    """All faults found, each naming the shard and sample at fault; empty when all is well."""
    index = ShardIndex.load(prefix, policy=retry)
    faults: List[str] = list(index.incomplete().values())
    seen: Dict[str, str] = {}
    for entry in tqdm(index.shards.values(), unit='shard', desc=f'verify {prefix}', disable=not progress):
        url, key_prefix = split_adopted(index.url_of(prefix, entry))[:2]   # adopted: another tool's tar
        adopted = key_prefix is not None
        try:
            data = storage.read_bytes(url, retry)
        except FileNotFoundError:
            faults.append(f'{entry.name}: listed in the index ({INDEX_DIR}/) but missing')
            continue
        if len(data) != entry.bytes:
            faults.append(f'{entry.name}: {len(data)} bytes, index says {entry.bytes}')
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            faults.append(f'{entry.name}: sha256 differs from the index')
        try:
            members = adopted_samples(data, entry.name) if adopted else own_samples(data, entry.name)
        except (tarfile.TarError, EOFError, OSError) as exc:
            faults.append(f'{entry.name}: not a whole tar archive ({type(exc).__name__}: {exc})')
            continue
        if len(members) != entry.samples:
            faults.append(f'{entry.name}: {len(members)} samples, index says {entry.samples}')
        for key in members if not adopted else ():   # an adopted tar's keys are renamed by position
            if key in seen:
                faults.append(f'{entry.name}: key {key} also in {seen[key]}')
            seen[key] = entry.name
        if decode:
            _check_samples(entry.name, members, faults, adopted)
    return faults


def own_samples(data: bytes, shard: str) -> Dict[str, Dict[str, bytes]]:
    """{key: {extension: bytes}} of a shard this project built (its keys are unique)."""
    members: Dict[str, Dict[str, bytes]] = {}
    for member in tar_members(io.BytesIO(data), shard):   # each judged by its header first
        key, ext = split_member(member['fname'])
        members.setdefault(key, {})[ext] = member['data']
    return members


def adopted_samples(data: bytes, shard: str) -> Dict[str, Dict[str, bytes]]:
    """{"position:key": {extension: bytes}} of another tool's tar, grouped as its readers group it
    (webdataset: a run of members with one key is a sample, whatever other runs share the key)."""
    return {f'{position}:{sample["__key__"]}': {k: v for k, v in sample.items() if k not in ('__key__', '__url__')}
            for position, sample in enumerate(tar_samples(io.BytesIO(data), shard, own_keys=False))}


def orphans(prefix: str, retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> List[str]:
    """Tar files beside the index that it does not list (left by an interrupted build)."""
    index = ShardIndex.load(prefix, policy=retry)
    listed = set(index.shards) | {f for info in index.builds.values() for f in (info.get('adopted') or {}).get('files', [])}
    return [n for n in storage.list_names(prefix, retry)
            if (n.endswith('.tar') and n not in listed) or '.tar.tmp-' in n]
