"""Where an input image's bytes are, and reading them: a file of its own, a member of an
uncompressed tar archive (read in place, never extracted), or a row of a Parquet file.

A shard's items are consecutive in the plan, so they come mostly from one archive or one
Parquet row group: ``read_items`` opens each archive once and reads each row group once (the
image column only), never a whole Parquet file."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import pyarrow as pa
import pyarrow.parquet as pq

from .common.errors import BadValue


@dataclass(frozen=True)
class TarMember:
    """A regular file inside an uncompressed tar: its data's byte range in the archive."""
    offset: int
    size: int
    name: str


@dataclass(frozen=True)
class ParquetRow:
    """One row of a Parquet file: ``column`` holds the image (binary, or Hugging Face's
    ``{bytes, path}`` struct)."""
    row_group: int
    row: int          # within the row group
    column: str


Location = Union[TarMember, ParquetRow]


class InputError(BadValue):
    """A file list, folder, archive or Parquet dataset that cannot be read as the builder's input."""


class MissingBytes(OSError):
    """A Parquet row whose image column holds no bytes."""


def describe(path: str, at: Optional[Location]) -> str:
    """Where an item is, for messages: the file, ``archive.tar:member`` or ``file.parquet row N``."""
    if isinstance(at, TarMember):
        return f'{path}:{at.name}'
    if isinstance(at, ParquetRow):
        return f'{path} row group {at.row_group} row {at.row}'
    return path


def _image_bytes(cell) -> bytes:
    """A Parquet image cell as bytes: plain binary, or the ``{bytes, path}`` struct ``datasets`` writes."""
    if isinstance(cell, dict):
        if cell.get('bytes') is None:
            raise MissingBytes(f'the row holds no image bytes, only the path {cell.get("path")!r} '
                               '(a dataset that references its files: embed them, e.g. datasets\' embed_table_storage)')
        return cell['bytes']
    if cell is None:
        raise MissingBytes('the image cell is empty')
    return cell


class _RowGroupCache:
    """The last row group read (image column only): consecutive items share it."""

    def __init__(self):
        self.key: Optional[Tuple[str, int, str]] = None
        self.cells: list = []

    def cell(self, path: str, at: ParquetRow):
        key = (path, at.row_group, at.column)
        if key != self.key:
            self.key, self.cells = None, []
            try:
                table = pq.ParquetFile(path).read_row_group(at.row_group, columns=[at.column], use_threads=False)
            except pa.ArrowException as exc:   # a damaged file: its rows are unreadable samples, counted
                raise OSError(f'row group {at.row_group} unreadable: {exc}') from None
            self.key, self.cells = key, table.column(0).to_pylist()
        return self.cells[at.row]


def read_items(items: Iterable) -> Iterator[Tuple[object, Union[bytes, OSError]]]:
    """``(item, its bytes)`` for each item in order, or ``(item, the OSError)`` when they
    cannot be read; the caller decides what a failure means (the builder skips and counts it)."""
    archives: Dict[str, object] = {}
    row_groups = _RowGroupCache()
    try:
        for it in items:
            try:
                if isinstance(it.at, TarMember):
                    f = archives.get(it.path)
                    if f is None:
                        f = archives[it.path] = open(it.path, 'rb')
                    f.seek(it.at.offset)
                    data = f.read(it.at.size)
                    if len(data) != it.at.size:
                        raise OSError(f'the archive ends {it.at.size - len(data)} bytes short of the member\'s end '
                                      '(truncated since it was listed)')
                elif isinstance(it.at, ParquetRow):
                    data = _image_bytes(row_groups.cell(it.path, it.at))
                else:
                    with open(it.path, 'rb') as f:
                        data = f.read()
            except OSError as exc:
                yield it, exc
                continue
            yield it, data
    finally:
        for f in archives.values():
            f.close()
