"""Tar shards as another tool writes them (webdataset's own ShardWriter, timm's .jpg + .cls + .json
layout), for the adopt tests."""
import io
import json
import tarfile
from pathlib import Path

import webdataset as wds
from helpers import write_image

TARS, PER_TAR = 3, 5
CLASS_NAMES = ('even', 'odd')


def foreign_shards(folder: Path, bad_class: bool = False, pattern: str = 'train-%04d.tar', broken_image: bool = False) -> Path:
    """What timm's imagenet-wds layout looks like: keys of the original file names, .cls, .json."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / pattern), maxcount=PER_TAR, verbose=0) as sink:
        for i in range(TARS * PER_TAR):
            image = write_image(folder.parent / 'src' / f'{i}.jpg', i, size=(40, 36)).read_bytes()
            cls = 7 if bad_class and i == 6 else i % 2
            sample = {'__key__': f'n0144_{1000 + i}', 'jpg': image, 'cls': str(cls).encode(),
                      'json': json.dumps({'filename': f'n0144_{1000 + i}.JPEG', 'label': cls,
                                          'class_name': CLASS_NAMES[cls] if cls < 2 else 'heptagon'}).encode()}
            if i == 4:
                del sample['cls']          # a sample without the label field
            if broken_image and i == 7:
                sample['jpg'] = b'<html>rate limited</html>'   # what a web pool holds now and then
            sink.write(sample)
    return folder


def one_sample_tar(i: int) -> bytes:
    """A tar of one sample as img2dataset names them (``{i:09d}.jpg``, ``.cls``), about 1.5 kB: for
    counting requests, where the bytes do not matter."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tar:
        for ext, data in (('jpg', b'\xff\xd8' + bytes(200)), ('cls', b'%d' % (i % 2))):
            info = tarfile.TarInfo(f'{i:09d}.{ext}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
