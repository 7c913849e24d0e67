"""Checking, normalising and decoding images (Pillow)."""
from __future__ import annotations

import io
import math
import re
import warnings
from typing import Optional, Tuple

import numpy as np
from PIL import Image

# Formats stored as given; a build's other inputs (BMP, GIF, TIFF) are re-encoded losslessly as PNG.
STORED_AS_IS = {'JPEG': 'jpg', 'PNG': 'png', 'WEBP': 'webp'}
IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp')
# The decoders bytes may reach, by allowlist: Pillow would otherwise open any of ~40 formats it
# knows from the file's first bytes, whatever its name (EPS goes to Ghostscript, PSD, FITS, ...).
# Shards hold what a build stores; a build (and the ERF CLI, on a user's folder) also takes these.
SHARD_FORMATS = tuple(STORED_AS_IS)
INPUT_FORMATS = SHARD_FORMATS + ('BMP', 'GIF', 'TIFF')
# The file names a build takes as images, in a folder or an archive (the bytes still decide the format).
INPUT_EXTS = frozenset({'.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff'})
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2x its warning level)


class BadImage(ValueError):
    """Bytes that are not an image we can decode; the message says why."""


def sniffed_format(data: bytes) -> Optional[str]:
    """The format Pillow would take ``data`` for, from its plugins' magic-byte checks alone (no
    parser runs): for naming what was refused."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # noqa: BLE001  some checks fail on a few bytes (DIB's struct.unpack)
            continue
    return None


def _open(data: bytes, max_pixels: int, formats: Tuple[str, ...] = SHARD_FORMATS) -> Image.Image:
    if not data:
        raise BadImage('zero-byte file')
    try:
        with warnings.catch_warnings():
            # Our limit (max_pixels) is checked below; Pillow's warning level is half its own error's.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
    except Image.UnidentifiedImageError:
        found = sniffed_format(data)
        if found and found not in formats:
            raise BadImage(f'not an accepted format (its first bytes are those of {found}; accepted: '
                           f'{", ".join(formats)})') from None
        raise BadImage(f'not a readable image (none of {", ".join(formats)})') from None
    except Exception as exc:
        # Pillow names the in-memory file with its address: keep reasons deterministic.
        reason = re.sub(r'<[^<>]* at 0x[0-9a-fA-F]+>', '<bytes>', str(exc))
        raise BadImage(f'not a readable image ({type(exc).__name__}: {reason})') from None
    w, h = img.size
    if w * h > max_pixels:  # from the header, before any pixel is decoded
        raise BadImage(f'{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}')
    if w == 0 or h == 0:
        raise BadImage(f'empty image {w}x{h}')
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit is scaled (not clipped), alpha is composited onto white."""
    if img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == 'I' else np.uint16)
        top = 65535 if arr.max(initial=0) > 255 else 255
        img = Image.fromarray((arr.astype(np.float32) * (255.0 / top)).round().astype(np.uint8), 'L')
    if img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa'):
        rgba = img.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert('RGB')
    return img if img.mode == 'RGB' else img.convert('RGB')


def check_and_normalize(data: bytes, max_side: Optional[int] = None, quality: int = 90,
                        max_pixels: int = DEFAULT_MAX_PIXELS,
                        formats: Tuple[str, ...] = INPUT_FORMATS) -> Tuple[bytes, str, Image.Image]:
    """Fully decode ``data`` (raises BadImage); return the bytes to store, their extension, and the
    decoded image they hold (for the perceptual hashes computed at build time).

    Valid images keep their bytes unless ``max_side`` asks for a smaller JPEG or the
    format is not one webdataset decoders read (then lossless PNG).
    """
    img = _open(data, max_pixels, formats)
    fmt = img.format
    try:
        img.load()  # a truncated or corrupt file fails here, not at training time
    except Exception as exc:
        raise BadImage(f'corrupt {fmt or "image"} data ({type(exc).__name__}: {exc})') from None
    if max_side and max(img.size) > max_side:
        img = to_rgb(img)
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, 'JPEG', quality=quality)
        return out.getvalue(), 'jpg', img
    if fmt == 'PNG' and img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        # 16-bit PNGs: plain webdataset/PIL decoders clip them to white; store what every reader
        # decodes the same way (8-bit, scaled as decode_rgb scales them).
        out = io.BytesIO()
        rgb = to_rgb(img)
        rgb.save(out, 'PNG')
        return out.getvalue(), 'png', rgb
    if fmt in STORED_AS_IS:
        return data, STORED_AS_IS[fmt], img
    out = io.BytesIO()
    (img if img.mode in ('RGB', 'RGBA', 'L', 'LA', 'I;16') else to_rgb(img)).save(out, 'PNG')
    return out.getvalue(), 'png', img


def image_part(sample: dict) -> bytes:
    """The encoded image of a webdataset sample (``{"jpg": bytes, ...}``), or BadImage naming its parts
    (or why the shard reader refused one of them: ``reader.REFUSED``)."""
    if '__refused__' in sample:
        raise BadImage(sample['__refused__'])
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise BadImage(f'no image part among {sorted(k for k in sample if not k.startswith("__"))}')
    return sample[ext]


def _plain_jpeg(img: Image.Image) -> bool:
    return img.format == 'JPEG' and img.mode in ('RGB', 'L')


def is_plain_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """A JPEG in RGB or grayscale within the pixel limit, judged from its header alone: what a
    batched device decoder can take (anything else goes through :func:`decode_rgb`)."""
    try:
        return _plain_jpeg(_open(data, max_pixels))
    except BadImage:
        return False


def _decode(img: Image.Image) -> Image.Image:
    """The pixels of an opened image (at the draft scale set on it, if any), as RGB."""
    try:
        img.load()
    except Exception as exc:
        raise BadImage(f'corrupt {img.format or "image"} data ({type(exc).__name__}: {exc})') from None
    return to_rgb(img)


def _decode_at_least(img: Image.Image, min_side: Optional[int]) -> Image.Image:
    if min_side and img.format == 'JPEG':
        img.draft('RGB', (min_side, min_side))
    return _decode(img)


def decode_rgb(data: bytes, min_side: Optional[int] = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               formats: Tuple[str, ...] = SHARD_FORMATS) -> Image.Image:
    """Decode to RGB (only ``formats``: a shard's by default). With ``min_side``, JPEGs decode at a
    reduced DCT scale that keeps the shorter side at least ``min_side`` (Pillow's draft mode): 2-8x
    less work for big photos."""
    return _decode_at_least(_open(data, max_pixels, formats), min_side)


def decode_or_defer(data: bytes, min_side: Optional[int], defer_jpeg: bool,
                    max_pixels: int = DEFAULT_MAX_PIXELS):
    """A plain JPEG left undecoded when ``defer_jpeg`` (its reader decodes it at the scale it needs),
    anything else decoded as :func:`decode_rgb` does; one header parse either way."""
    img = _open(data, max_pixels)
    return UndecodedJpeg(img, data) if defer_jpeg and _plain_jpeg(img) else _decode_at_least(img, min_side)


# The scales M/8 a crop is decoded at (libjpeg-turbo's IDCT shrinks each 8x8 block to MxM): 7/8 is
# left out because its IDCT has no SIMD path, and a 7/8 decode plus the smaller resize measured no
# faster than a full decode plus the full resize.
DCT_SCALES = (1, 2, 3, 4, 5, 6, 8)


def dct_scale_for(box_size: Tuple[float, float], out_size: Tuple[int, int]) -> int:
    """The smallest M in :data:`DCT_SCALES` that keeps a ``box_size`` crop at least ``out_size``
    at scale M/8."""
    return next(m for m in DCT_SCALES if m == 8 or (box_size[0] * m / 8 >= out_size[0]
                                                     and box_size[1] * m / 8 >= out_size[1]))


def decode_jpeg_scaled(data: bytes, size: Tuple[int, int], m: int) -> Optional[np.ndarray]:
    """A ``size`` JPEG decoded at DCT scale ``m``/8 (an HxWx3 RGB array) by libjpeg-turbo through
    simplejpeg, which offers every M/8 (Pillow and OpenCV offer 1/2, 1/4, 1/8), with Pillow's pixels
    (the same libjpeg-turbo). None when libjpeg-turbo reports anything, even a warning it could
    recover from (``strict``): the caller then decodes with Pillow, whose acceptance or error
    decides, as for every other image."""
    import simplejpeg
    try:
        return simplejpeg.decode_jpeg(data, 'RGB', min_width=-(-size[0] * m // 8), min_height=-(-size[1] * m // 8),
                                      strict=True)
    except ValueError:
        return None


def region(rgb: np.ndarray, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """``rgb[top:bottom, left:right]`` as a Pillow image: one copy of those pixels only (Pillow reads
    the rows in place, a row stride apart)."""
    width = rgb.shape[1]
    start = (top * width + left) * 3
    return Image.frombuffer('RGB', (right - left, bottom - top), memoryview(rgb.reshape(-1))[start:], 'raw', 'RGB',
                            width * 3, 1)


# How far past its box a resize reads, in filter widths: Pillow's widest filter (Lanczos) reaches 3
# source pixels (times the reduction factor) each side of an output pixel's centre.
_FILTER_REACH = 3


class UndecodedJpeg:
    """A plain JPEG whose header is read and whose pixels are not yet: a transform that knows its crop
    decodes it at the smallest DCT scale the crop allows (``decode_for``)."""

    def __init__(self, image: Image.Image, data: bytes):
        self.image = image      # opened by Pillow (header checked), not loaded
        self.data = data        # the encoded file

    @property
    def size(self) -> Tuple[int, int]:
        return self.image.size

    def decode_for(self, box: Tuple[int, int, int, int], out_size: Tuple[int, int]) -> Tuple[Image.Image, tuple]:
        """Decode at DCT scale M/8, the smallest that keeps ``box`` (left, top, right, bottom) at least
        ``out_size`` (:func:`dct_scale_for`), and return only the pixels a resize of ``box`` to
        ``out_size`` reads, with ``box`` in their coordinates: at full scale the crop itself (what
        timm resizes), else the scaled box and the filter's reach around it (a resize of it equals a
        resize of the whole decoded image). Copying the region alone into Pillow saves most of a
        whole-photo copy."""
        m = dct_scale_for((box[2] - box[0], box[3] - box[1]), out_size)
        rgb = decode_jpeg_scaled(self.data, self.size, m)
        if rgb is None:  # libjpeg-turbo complained: Pillow decodes it at full size, or says what is wrong
            return _decode(self.image), box
        height, width = rgb.shape[:2]
        if m == 8 and all(float(v).is_integer() for v in box):
            left, top, right, bottom = (int(v) for v in box)
            return region(rgb, left, top, right, bottom), (0, 0, right - left, bottom - top)
        s = m / 8  # libjpeg-turbo maps block edges to block edges: pixel x spans [x * 8/m, (x+1) * 8/m)
        x0, y0, x1, y1 = box[0] * s, box[1] * s, min(box[2] * s, width), min(box[3] * s, height)
        reach_x = math.ceil(_FILTER_REACH * max((x1 - x0) / out_size[0], 1.0)) + 1
        reach_y = math.ceil(_FILTER_REACH * max((y1 - y0) / out_size[1], 1.0)) + 1
        left, top = max(0, math.floor(x0) - reach_x), max(0, math.floor(y0) - reach_y)
        right, bottom = min(width, math.ceil(x1) + reach_x), min(height, math.ceil(y1) + reach_y)
        return region(rgb, left, top, right, bottom), (x0 - left, y0 - top, x1 - left, y1 - top)


def open_undecoded(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[UndecodedJpeg]:
    """A plain RGB or grayscale JPEG, opened without decoding (header checks done); else None."""
    img = _open(data, max_pixels)
    return UndecodedJpeg(img, data) if _plain_jpeg(img) else None
