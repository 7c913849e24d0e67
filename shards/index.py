"""``_index.json``: the list of complete shards. A shard absent from the index does not exist."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from . import storage
from .naming import shard_stem
from .safe_files import check_name

INDEX_NAME = '_index.json'
INDEX_VERSION = 1


class IndexError_(ValueError):
    """The index is missing, unreadable, or of another version."""


@dataclass
class ShardEntry:
    name: str                 # file name beside the index, e.g. "in1k-000012.tar"
    source: str
    samples: int
    bytes: int
    sha256: str
    tasks: Dict[str, int] = field(default_factory=dict)      # human labels per task in this shard
    skipped: List[dict] = field(default_factory=list)        # [{"id", "path", "reason"}] never written

    @property
    def stem(self) -> str:
        return shard_stem(self.name)


@dataclass
class ShardIndex:
    shards: Dict[str, ShardEntry] = field(default_factory=dict)
    builds: Dict[str, dict] = field(default_factory=dict)    # per source: the parameters it was built with

    # --- reading and writing -----------------------------------------------------------------
    @classmethod
    def load(cls, prefix: str, missing_ok: bool = False,
             policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> 'ShardIndex':
        url = storage.join(prefix, INDEX_NAME)
        try:
            raw = storage.read_bytes(url, policy)
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise IndexError_(f'{url} not found: no shards were ever completed under {prefix}') from None
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise IndexError_(f'{url} is not valid JSON: {exc}') from None
        if doc.get('version') != INDEX_VERSION:
            raise IndexError_(f'{url} has version {doc.get("version")!r}; this code reads version {INDEX_VERSION}')
        # Names from storage are data: a crafted index must not point a reader or writer elsewhere.
        shards = {check_name(s['name'], f'shard name in {url}'): ShardEntry(**s) for s in doc['shards']}
        return cls(shards=shards, builds=doc.get('builds', {}))

    def save(self, prefix: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> None:
        doc = dict(version=INDEX_VERSION, totals=self.totals(), builds=self.builds,
                   shards=[asdict(self.shards[n]) for n in sorted(self.shards)])
        storage.write_bytes_atomic(storage.join(prefix, INDEX_NAME),
                                   json.dumps(doc, indent=1).encode(), policy)

    # --- queries ---------------------------------------------------------------------------
    def add(self, entry: ShardEntry) -> None:
        self.shards[entry.name] = entry

    def sources(self) -> List[str]:
        return sorted({s.source for s in self.shards.values()})

    def shards_of(self, source: str) -> List[ShardEntry]:
        return [self.shards[n] for n in sorted(self.shards) if self.shards[n].source == source]

    def totals(self, source: Optional[str] = None) -> dict:
        """Per source: shards, samples, bytes, skipped images and human labels per task."""
        out = {}
        for src in ([source] if source else self.sources()):
            entries = self.shards_of(src)
            tasks = Counter()
            for e in entries:
                tasks.update(e.tasks)
            out[src] = dict(shards=len(entries), samples=sum(e.samples for e in entries),
                            bytes=sum(e.bytes for e in entries),
                            skipped=sum(len(e.skipped) for e in entries), tasks=dict(sorted(tasks.items())))
        return out
