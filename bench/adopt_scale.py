"""What adopting N foreign tars costs on a real S3 server on loopback (SeaweedFS): requests as the
store bills them, counted by a proxy in front of the server (so what s3fs does behind our calls is
counted too), and the wall time. One JSON line at the end.

Both sides run in one process on the same tars: ``ours`` saves the job's index part every
``--index-save-interval`` seconds (30, the default), ``peer`` saves it after every tar
(``--index-save-interval 0``, what adopt did before: a part rewritten N times, O(N^2) bytes).

    python bench/adopt_scale.py                # 1000 tars (about 2 minutes, most of it the upload)
    python bench/adopt_scale.py --tars 200 --workers 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / 'tests')]


def kinds(paths) -> Counter:
    """Requests by verb and object kind (tar, json, parquet, ...; a bucket or folder by name)."""
    out = Counter()
    for verb, path in paths:
        name = path.split('?')[0].rsplit('/', 1)[-1]
        out[f'{verb} {name.rsplit(".", 1)[-1] if "." in name else "folder"}'] += 1
    return out


def run(prefix: str, source: str, workers: int, save_s: float, proxy) -> dict:
    from shards.adopt import AdoptOptions, adopt
    proxy.reset()
    start = time.perf_counter()
    summary = adopt(AdoptOptions(prefix, source, labels={'toy': 'cls'}, workers=workers, index_save_s=save_s))
    seconds = time.perf_counter() - start
    return dict(seconds=round(seconds, 2), samples=summary['samples'], requests=dict(proxy.counts),
                by_kind=dict(kinds(proxy.paths)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--tars', type=int, default=1000)
    ap.add_argument('--workers', type=int, default=8)
    args = ap.parse_args(argv)
    import s3fs
    from adopt_fixtures import one_sample_tar
    from counting_proxy import CountingProxy

    from pretrain.apps.local_s3 import LocalS3
    from shards import storage
    server = LocalS3(tempfile.mkdtemp(prefix='adopt-scale-')).start()
    try:
        os.environ.update(server.env())
        fs, _ = storage.filesystem('s3://bench')
        fs.mkdir('bench')
        start = time.perf_counter()
        fs.pipe({f'bench/pool/{i:05d}.tar': one_sample_tar(i) for i in range(args.tars)})
        fs.pipe('bench/pool/sizes.json', json.dumps({f'{i:05d}.tar': 1 for i in range(args.tars)}).encode())
        upload_s = time.perf_counter() - start
        proxy = CountingProxy(server.endpoint)
        os.environ['AWS_ENDPOINT_URL'] = proxy.endpoint
        s3fs.S3FileSystem.clear_instance_cache()
        ours = run('s3://bench/pool', 'ours', args.workers, 30.0, proxy)
        peer = run('s3://bench/pool', 'peer', args.workers, 0.0, proxy)
    finally:
        server.stop()
    print(json.dumps(dict(bench='adopt_scale', tars=args.tars, workers=args.workers, upload_s=round(upload_s, 1),
                          ours=ours, peer=peer, puts_ratio=round(peer['requests'].get('PUT', 0) /
                                                                 max(1, ours['requests'].get('PUT', 0)), 1),
                          time_ratio=round(peer['seconds'] / ours['seconds'], 2))))


if __name__ == '__main__':
    main()
