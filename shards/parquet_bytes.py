"""Parquet tables to and from bytes (every index, hash segment, exclusion list and label part).

Reads decode on the calling thread (``use_threads=False``). With Arrow's thread pool, a pool worker
can still be releasing the reader's hold on the Python ``bytes`` after ``read()`` returned; if the
interpreter is finalizing by then, the worker's GIL request ends the thread inside a C++
destructor and the process aborts ("terminate called without an active exception", exit 134)
after its work is done (seen in 1 of 4 ``replk-shards build`` runs). These files are small: the
pool gains nothing here."""
from __future__ import annotations

import io
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq


def table_to_bytes(table: pa.Table, **options) -> bytes:
    """``table`` as a zstd-compressed Parquet file; ``options`` go to ``pq.write_table``."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression='zstd', **options)
    return buf.getvalue()


def table_from_bytes(data: bytes, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """The table in Parquet ``data`` (only ``columns`` when given), decoded on this thread."""
    return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(
        columns=None if columns is None else list(columns), use_threads=False)


def schema_from_bytes(data: bytes) -> pa.Schema:
    """The Arrow schema of Parquet ``data``, from its footer alone."""
    return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).schema_arrow
