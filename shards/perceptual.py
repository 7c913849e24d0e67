"""Perceptual hashes of images, for finding near-duplicates of evaluation images in training data.

Two 64-bit hashes per image from ImageHash (a small, widely used library built on Pillow and
SciPy's DCT; we use its published algorithms rather than our own): the DCT-based *pHash*, robust
to resizing and re-encoding, finds candidates; the gradient-based *dHash*, an independent view of
the same picture, confirms them. A copy flipped or cropped by a few percent is found by hashing
the *evaluation* image's variants (both mirror images, each whole and cropped by 4% at nine
anchors): the training side keeps one hash per image.

Measured on 32 tiles of scikit-learn's two photos (``tests/unit/test_decontaminate.py`` plants the
same edits): copies resized, re-encoded at quality 40, cropped 1-5% at any anchor, flipped, or
flipped, cropped and resized: pHash <= 6 bits from the nearest variant and pHash + dHash <= 17;
distinct photos: pHash >= 14 and pHash + dHash >= 34.
"""
from __future__ import annotations

import itertools
from typing import List, Tuple

import imagehash
from PIL import Image, ImageOps

VARIANT_CROP = 0.04          # evaluation images are also hashed cropped by this fraction ...
CROP_ANCHORS = tuple(itertools.product((0.0, 0.5, 1.0), repeat=2))   # ... at these anchors
HASH_VERSION = f'imagehash {imagehash.__version__}: phash 8x8, dhash 8x8; eval variants: 2 mirrors x ' \
               f'(whole + {len(CROP_ANCHORS)} crops of {VARIANT_CROP:.0%})'


def _bits(h: imagehash.ImageHash) -> int:
    return int(str(h), 16)


SHRINK_TO = 128   # both hashes look at 32x32 or fewer pixels: box-average big images down first


def image_hashes(img: Image.Image) -> Tuple[int, int]:
    """(pHash, dHash) of an image, each a 64-bit unsigned int."""
    gray = img.convert('L')
    factor = min(gray.size) // SHRINK_TO
    if factor > 1:  # ImageHash's Lanczos resize from full size costs 3 ms on a 640x427 photo
        gray = gray.reduce(factor)
    return _bits(imagehash.phash(gray)), _bits(imagehash.dhash(gray))


def to_hex(value: int) -> str:
    return f'{value:016x}'


def crops(img: Image.Image, fraction: float = VARIANT_CROP) -> List[Image.Image]:
    """The image whole, then cropped by ``fraction`` of each side's length at each anchor."""
    w, h = img.size
    dx, dy = w * fraction, h * fraction
    out = [img]
    for ax, ay in CROP_ANCHORS:
        x0, y0 = dx * ax, dy * ay
        out.append(img.crop((round(x0), round(y0), round(x0 + w - dx), round(y0 + h - dy))))
    return out


def variant_hashes(img: Image.Image) -> List[Tuple[int, int]]:
    """Hashes of an evaluation image's variants: what a flipped or slightly cropped copy matches."""
    gray = img.convert('L')
    return [image_hashes(v) for base in (gray, ImageOps.mirror(gray)) for v in crops(base)]


def variant_name(i: int) -> str:
    """A readable name of variant ``i`` of :func:`variant_hashes` (for reports)."""
    per_mirror = 1 + len(CROP_ANCHORS)
    mirror, k = divmod(i, per_mirror)
    what = 'whole' if k == 0 else f'crop {VARIANT_CROP:.0%} at {CROP_ANCHORS[k - 1]}'
    return ('flipped, ' if mirror else '') + what
