"""Helpers the tests import (fixtures live in conftest.py, which pytest loads itself)."""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent


# --- images and shards ------------------------------------------------------------------------
def free_tcp_port() -> int:
    """A port the kernel just handed out as free (a launcher binds it a moment later)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_image(path: Path, seed: int, size=(24, 20), mode='RGB', fmt=None) -> Path:
    """A small random image; ``seed`` makes its pixels (and so its bytes) reproducible."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if mode == 'I;16':
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def rewrite_tar_member(shard, member: str, payload: bytes) -> None:
    """Replace one member's bytes in a tar file (to plant a fault after a valid build)."""
    import io
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, 'w') as tar:
        for m, data in members:
            data = payload if m.name == member else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


