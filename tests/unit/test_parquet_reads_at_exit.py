"""Reading the project's Parquet files (shard index parts, label store commits) starts no Arrow
pool thread: such a thread could still hold the file's Python bytes when the interpreter
finalizes, and then abort the process after its work was done (`replk-shards build` exited 134,
"terminate called without an active exception", in 1 of 4 runs)."""
import subprocess
import sys
import textwrap

READ_IN_A_FRESH_PROCESS = textwrap.dedent('''
    import io
    import os
    import pyarrow as pa
    import pyarrow.parquet as pq
    from labeling.commits import parts_from_parquet, parts_to_parquet
    from shards import storage
    from shards.index import PART_SCHEMA, read_part

    n = 20000
    index_part = io.BytesIO()
    pq.write_table(pa.table(dict(
        name=[f'{i:06d}.tar' for i in range(n)], samples=[4] * n, bytes=[100] * n, sha256=[bytes(32)] * n,
        tasks=['{}'] * n, skipped=[0] * n), schema=PART_SCHEMA), index_part)
    index_part = index_part.getvalue()
    commits = parts_to_parquet({f'{i:06d}': dict(stem=f'{i:06d}', file=f'{i:06d}.0.parquet', kind='human', rows=4,
                                                  human=4, pseudo=0, teacher_id=None, sha256='00' * 32, shard=None)
                                for i in range(n)})
    threads = len(os.listdir('/proc/self/task'))
    assert len(read_part('mem://part', 'src', storage.DEFAULT_RETRY, data=index_part)) == n
    assert len(parts_from_parquet(commits, 'test')) == n
    print(len(os.listdir('/proc/self/task')) - threads)
''')


def test_reading_index_parts_and_label_commits_starts_no_arrow_thread():
    out = subprocess.run([sys.executable, '-c', READ_IN_A_FRESH_PROCESS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '0', f'{out.stdout.strip()} threads started by the reads'
