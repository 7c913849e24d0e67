"""What ``shards build`` reads: ImageFolder trees (as folders or tar archives), file lists,
unlabeled folders, archives or lists. Hugging Face Parquet datasets: ``parquet_inputs``."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .archive_inputs import ClassImages, archive_images, classes_in_archive, classes_in_class_tars, is_tar
from .images import INPUT_EXTS
from .item_bytes import InputError, Location


@dataclass(frozen=True)
class Item:
    path: str                       # local file to read: the image, or the archive / Parquet file holding it
    id: str                         # the original id, stable across rebuilds (relative path)
    labels: Dict[str, int] = field(default_factory=dict)
    at: Optional[Location] = None   # where in ``path`` (None: the whole file)
    nbytes: Optional[int] = None    # input bytes for --max-shard-bytes when ``path`` is not the image alone


def _images_under(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob('*') if p.is_file() and p.suffix.lower() in INPUT_EXTS)


def imagefolder_items(root: str, task: str) -> Tuple[List[Item], List[str]]:
    """Classes (sorted by name) become class indices of ``task``: class subfolders, a folder of
    ``{class}.tar`` archives, or one tar archive holding a folder (or a tar) per class."""
    base = Path(root)
    if is_tar(base):
        return _classes_to_items(classes_in_archive(base), task)
    subfolders = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    tars = [p for p in base.iterdir() if is_tar(p)] if base.is_dir() else []
    if subfolders and tars:
        raise InputError(f'{root}: holds both class folders ({subfolders[0]}, ...) and archives ({tars[0].name}, ...): '
                         'keep one layout per source')
    if tars:
        return _classes_to_items(classes_in_class_tars(tars), task)
    if not subfolders:
        raise InputError(f'{root}: no class subfolders (an ImageFolder tree has one folder, or one .tar, per class)')
    items = [Item(str(p), str(p.relative_to(base)), {task: idx})
             for idx, name in enumerate(subfolders) for p in _images_under(base / name)]
    return items, subfolders


def _classes_to_items(classes: ClassImages, task: str) -> Tuple[List[Item], List[str]]:
    items = [Item(str(archive), id_, {task: idx}, at=member, nbytes=member.size)
             for idx, images in enumerate(classes.values()) for id_, archive, member in images]
    return items, list(classes)


def unlabeled_items(folder_or_list: str) -> List[Item]:
    """Every image under a folder or in a tar archive, or every path (one per line) in a text file."""
    src = Path(folder_or_list)
    if src.is_dir():
        return [Item(str(p), str(p.relative_to(src))) for p in _images_under(src)]
    if is_tar(src):
        return [Item(str(src), name, at=member, nbytes=member.size) for name, member in archive_images(src)]
    if not src.is_file():
        raise InputError(f'{folder_or_list}: neither a folder, a tar archive nor a list file')
    lines = [ln.strip() for ln in src.read_text().splitlines() if ln.strip() and not ln.startswith('#')]
    return [Item(_resolve(src, ln), ln) for ln in lines]


def _resolve(list_file: Path, path: str) -> str:
    return path if os.path.isabs(path) else str(list_file.parent / path)


def _label(value, where: str) -> Optional[int]:
    if value in (None, ''):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f'{where}: label {value!r} is not an integer class index') from None


def filelist_items(list_file: str, tasks: Optional[List[str]] = None) -> List[Item]:
    """CSV/TSV with a header (``path``, optional ``id``, one column per task; empty = unlabeled)
    or JSONL (``{"path": ..., "id": ..., "labels": {"task": idx}}``)."""
    src = Path(list_file)
    if not src.is_file():
        raise InputError(f'{list_file}: file list not found')
    if src.suffix.lower() in ('.jsonl', '.ndjson'):
        rows = []
        for n, line in enumerate(src.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f'{list_file}:{n}: not JSON ({exc})') from None
        records = [(f'{list_file}:{n}', r.get('path'), r.get('id'), r.get('labels') or {})
                   for n, r in enumerate(rows, 1)]
    else:
        delim = '\t' if src.suffix.lower() == '.tsv' else ','
        with open(src, newline='') as f:
            reader = csv.DictReader(f, delimiter=delim)
            if not reader.fieldnames or 'path' not in reader.fieldnames:
                raise InputError(f'{list_file}: the header needs a "path" column, got {reader.fieldnames}')
            columns = [c for c in reader.fieldnames if c not in ('path', 'id')]
            records = [(f'{list_file}:{n}', r['path'], r.get('id'), {c: r[c] for c in columns})
                       for n, r in enumerate(reader, 2)]
    items = []
    for where, path, id_, labels in records:
        if not path:
            raise InputError(f'{where}: no path')
        if tasks is not None:
            labels = {t: v for t, v in labels.items() if t in tasks}
        parsed = {t: _label(v, f'{where} task {t}') for t, v in labels.items()}
        items.append(Item(_resolve(src, path), id_ or path, {t: v for t, v in parsed.items() if v is not None}))
    return items
