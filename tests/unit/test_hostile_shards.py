"""Bytes from outside reach only the decoders we mean, and a hostile shard costs a counted sample:
Pillow opens JPEG/PNG/WEBP from shards (plus BMP/GIF/TIFF as build inputs) and nothing else (EPS
would go to Ghostscript); a tar member is judged by its header before a byte of it is read (size,
sparse, non-regular, a key not shaped source/shard/index); MemoryError is never retried."""
import io
import subprocess
import tarfile

import pytest
from helpers import write_image
from PIL import Image

from shards import build as build_module
from shards import storage
from shards.build import BuildOptions, build
from shards.images import BadImage, check_and_normalize, decode_rgb, image_part
from shards.inputs import Item
from shards.reader import iter_shard_samples

EPS = b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n'


def encoded(fmt: str, size=(16, 16), mode='RGB') -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, fmt)
    return out.getvalue()


def test_a_postscript_file_named_jpg_is_skipped_by_the_build_naming_its_format(tmp_path):
    (tmp_path / 'photo.jpg').write_bytes(EPS)
    items = [Item(str(write_image(tmp_path / 'ok.jpg', 1)), 'ok'), Item(str(tmp_path / 'photo.jpg'), 'eps')]
    report = build(items, BuildOptions(str(tmp_path / 'out'), 's', samples_per_shard=4, progress=False))
    assert report.samples == 1
    [skipped] = report.skipped
    assert 'not an accepted format' in skipped['reason'] and 'EPS' in skipped['reason']


@pytest.mark.parametrize('fmt', ['PCX', 'PPM', 'ICO', 'JPEG2000', 'SGI'])
def test_formats_off_the_allowlist_are_refused_before_any_decoder_runs(fmt):
    with pytest.raises(BadImage, match=f'not an accepted format .*{fmt}'):
        check_and_normalize(encoded(fmt))


def test_shards_decode_only_what_a_build_stores_while_builds_take_bmp_gif_tiff():
    for fmt in ('BMP', 'GIF', 'TIFF'):
        assert check_and_normalize(encoded(fmt))[1] == 'png'   # re-encoded at build time
        with pytest.raises(BadImage, match=f'its first bytes are those of {fmt}; accepted: JPEG, PNG, WEBP'):
            decode_rgb(encoded(fmt))   # inside a shard: not something a build wrote


def test_the_pixel_limit_is_the_documented_one_not_pillows_warning_level():
    # 100 Mpx: over Pillow's warning level (89.5 Mpx), under the documented limit (179 Mpx)
    assert check_and_normalize(encoded('PNG', (10_000, 10_000), '1'))[1] == 'png'
    with pytest.raises(BadImage, match='exceeds (the )?limit of 178956970'):
        check_and_normalize(encoded('PNG', (14_000, 14_000), '1'))


def sparse_shard(tmp_path, declared: int) -> str:
    """A GNU tar of a few KB whose first member declares ``declared`` bytes (a sparse file)."""
    src = tmp_path / 'src' / 'x' / '000000'
    src.mkdir(parents=True)
    with open(src / '000000.jpg', 'wb') as f:
        f.truncate(declared)
    (src / '000001.jpg').write_bytes(encoded('JPEG'))
    shard = tmp_path / 'x-000000.tar'
    subprocess.run(['tar', '--sparse', '-C', str(tmp_path / 'src'), '-cf', str(shard),
                    'x/000000/000000.jpg', 'x/000000/000001.jpg'], check=True)
    assert shard.stat().st_size < 64 * 1024
    return str(shard)


def test_a_sparse_member_declaring_more_than_the_limit_is_a_corrupt_sample_never_read(tmp_path):
    first, second = iter_shard_samples(sparse_shard(tmp_path, 200 * 2 ** 20))
    assert first['__key__'] == 'x/000000/000000' and 'jpg' not in first
    with pytest.raises(BadImage, match='is a sparse file'):
        image_part(first)
    decode_rgb(image_part(second))   # the shard goes on after it


def test_members_over_the_size_limit_non_regular_or_with_foreign_keys_are_corrupt_samples(tmp_path):
    shard = tmp_path / 'x-000000.tar'
    with tarfile.open(shard, 'w') as tar:
        def add(name, data=b'', kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            tar.addfile(info, io.BytesIO(data) if data else None)
        add('x/000000/000000.jpg', encoded('JPEG', (600, 600)))   # 5 KB, over a 4 KB limit below
        add('x/000000/000001.jpg', kind=tarfile.SYMTYPE)
        add('../../etc/passwd.jpg', encoded('JPEG'))
        add('x/000000/000003.jpg', encoded('JPEG'))
    samples = list(iter_shard_samples(str(shard), max_member_bytes=4096))
    reasons = []
    for sample in samples[:3]:
        with pytest.raises(BadImage) as why:
            image_part(sample)
        reasons.append(str(why.value))
    assert 'over the limit of 4096' in reasons[0] and 'not a regular file' in reasons[1]
    assert 'is not of the form source/shard/index' in reasons[2]
    decode_rgb(image_part(samples[3]))


def test_a_build_refuses_to_write_a_member_readers_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, 'MAX_MEMBER_BYTES', 2000)
    big = tmp_path / 'big.png'
    Image.effect_noise((64, 64), 64).convert('RGB').save(big)   # noise: ~12 KB of PNG
    items = [Item(str(big), 'big'), Item(str(write_image(tmp_path / 'ok.jpg', 1, size=(8, 8))), 'ok')]
    report = build(items, BuildOptions(str(tmp_path / 'out'), 's', samples_per_shard=4, progress=False))
    assert report.samples == 1 and 'over the shard member limit of 2000 (--max-side' in report.skipped[0]['reason']


def test_memory_errors_are_not_retried_as_storage_faults():
    calls = []

    def allocate():
        calls.append(1)
        raise MemoryError('6 GB')
    with pytest.raises(MemoryError):
        storage.with_retries(allocate, 'reading a shard', storage.RetryPolicy(budget_s=5))
    assert len(calls) == 1


@pytest.mark.parametrize('data', [b'\xff\xd8\xff', b'BM', b'x', b'\x00\x01'])
def test_a_file_of_a_few_bytes_is_a_counted_bad_image_not_a_crash(data):
    with pytest.raises(BadImage, match='not a readable image'):   # a magic-byte check raised struct.error
        check_and_normalize(data)
    with pytest.raises(BadImage):
        decode_rgb(data)
