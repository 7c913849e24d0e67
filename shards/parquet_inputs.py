"""Hugging Face datasets in Parquet (the layout ``datasets`` writes and the Hub serves) as a
build input: an image column (``{bytes, path}`` struct, or plain binary), an optional integer
label column whose ``ClassLabel`` names live in the file's ``huggingface`` schema metadata.

Read with pyarrow alone (no ``datasets`` install): planning reads the label column, row group by
row group; the builder later reads each row group's image column once (``item_bytes``), never a
whole file. An item's id is ``{file}#{row}`` (the file relative to the given folder, the row
within the file), stable while the files are."""
from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import Item
from .item_bytes import InputError, ParquetRow

DEFAULT_LABEL_COLUMN = 'label'


def parquet_files(where: str) -> Tuple[Path, List[Path]]:
    """(the folder ids are relative to, the files in order): one file, a folder (searched
    recursively) or a glob such as ``data/train-*.parquet``."""
    if any(c in where for c in '*?['):
        files = sorted(Path(p) for p in glob.glob(where, recursive=True) if p.endswith('.parquet'))
        fixed = re.split(r'[*?\[]', where, maxsplit=1)[0]   # ids are relative to the pattern's fixed folder
        base = Path(fixed) if fixed.endswith('/') else Path(fixed).parent
    elif Path(where).is_dir():
        base, files = Path(where), sorted(Path(where).rglob('*.parquet'))
    elif Path(where).is_file():
        base, files = Path(where).parent, [Path(where)]
    else:
        raise InputError(f'{where}: no such Parquet file, folder or pattern')
    if not files:
        raise InputError(f'{where}: no .parquet files there')
    return base, files


def features(schema: pa.Schema) -> dict:
    """The dataset's features as ``datasets`` records them in the schema metadata ({} if none)."""
    raw = (schema.metadata or {}).get(b'huggingface')
    if not raw:
        return {}
    try:
        return json.loads(raw).get('info', {}).get('features') or {}
    except (ValueError, AttributeError):
        return {}


def class_names(schema: pa.Schema, column: str) -> Optional[List[str]]:
    feature = features(schema).get(column) or {}
    return list(feature['names']) if feature.get('_type') == 'ClassLabel' and 'names' in feature else None


def _check_image_column(path: Path, schema: pa.Schema, column: str) -> None:
    if column not in schema.names:
        raise InputError(f'{path}: no image column {column!r} (columns: {", ".join(schema.names)}); '
                    'name it with --image-column')
    kind = schema.field(column).type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or (pa.types.is_struct(kind) and kind.get_field_index('bytes') >= 0)):
        raise InputError(f'{path}: column {column!r} is {kind}, not image bytes (binary, or a struct with "bytes")')


def _mean_image_bytes(meta: pq.FileMetaData, group: int, column: str) -> int:
    """What --max-shard-bytes plans with: the row group's image bytes per row, from the footer."""
    rg = meta.row_group(group)
    total = sum(rg.column(j).total_uncompressed_size for j in range(rg.num_columns)
                if rg.column(j).path_in_schema.split('.')[0] == column)
    return total // max(rg.num_rows, 1)


def parquet_items(where: str, task: str, image_column: str = 'image',
                  label_column: Optional[str] = None) -> Tuple[List[Item], Optional[List[str]]]:
    """Every row as an item; (items, class names or None). Labels come from ``label_column``
    (default: ``label`` when the first file has it); a negative label (``datasets``' -1) is no label."""
    base, files = parquet_files(where)
    first = pq.ParquetFile(files[0]).schema_arrow
    column = label_column or (DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in first.names else None)
    names = class_names(first, column) if column else None
    items: List[Item] = []
    for path in files:
        rel = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name
        items += _file_items(path, rel, task, image_column, column, names, files[0])
    return items, names


def _file_items(path: Path, rel: str, task: str, image_column: str, column: Optional[str],
                names: Optional[List[str]], first: Path) -> List[Item]:
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    _check_image_column(path, schema, image_column)
    if column is not None and column not in schema.names:
        raise InputError(f'{path}: no label column {column!r} (columns: {", ".join(schema.names)})')
    if column is not None and class_names(schema, column) != names:
        raise InputError(f'{path}: its ClassLabel names for {column!r} differ from those of {first}: '
                         'one dataset, one class list')
    items, row0 = [], 0
    for group in range(pf.num_row_groups):
        nbytes = _mean_image_bytes(pf.metadata, group, image_column)
        labels = (pf.read_row_group(group, columns=[column], use_threads=False).column(0).to_pylist()
                  if column else [None] * pf.metadata.row_group(group).num_rows)
        for row, label in enumerate(labels):
            n = row0 + row
            items.append(Item(str(path), f'{rel}#{n:09d}', _label(label, names, task, column, f'{path} row {n}'),
                              at=ParquetRow(group, row, image_column), nbytes=nbytes))
        row0 += len(labels)
    return items


def _label(value, names: Optional[List[str]], task: str, column: str, where: str) -> Dict[str, int]:
    if value is None or (isinstance(value, int) and value < 0):
        return {}
    if not isinstance(value, int):
        raise InputError(f'{where}: label column {column!r} holds {value!r}, not an integer class index')
    if names is not None and value >= len(names):
        raise InputError(f'{where}: label {value} is out of range for the {len(names)} ClassLabel names of {column!r}')
    return {task: value}
