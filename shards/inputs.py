"""What ``shards build`` reads: ImageFolder trees, file lists, unlabeled folders or lists."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

FOLDER_EXTS = {'.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff'}


@dataclass(frozen=True)
class Item:
    path: str                       # local file to read
    id: str                         # the original id, stable across rebuilds (relative path)
    labels: Dict[str, int] = field(default_factory=dict)


class InputError(ValueError):
    """A file list or folder that cannot be read as the builder's input."""


def _images_under(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob('*') if p.is_file() and p.suffix.lower() in FOLDER_EXTS)


def imagefolder_items(root: str, task: str) -> Tuple[List[Item], List[str]]:
    """Class subfolders (sorted by name) become class indices of ``task``."""
    base = Path(root)
    classes = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    if not classes:
        raise InputError(f'{root}: no class subfolders (an ImageFolder tree has one folder per class)')
    items = [Item(str(p), str(p.relative_to(base)), {task: idx})
             for idx, name in enumerate(classes) for p in _images_under(base / name)]
    return items, classes


def unlabeled_items(folder_or_list: str) -> List[Item]:
    """Every image under a folder, or every path (one per line) in a text file."""
    src = Path(folder_or_list)
    if src.is_dir():
        return [Item(str(p), str(p.relative_to(src))) for p in _images_under(src)]
    if not src.is_file():
        raise InputError(f'{folder_or_list}: neither a folder nor a list file')
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
