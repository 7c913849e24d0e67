"""timm's training augmentation, drawing what timm draws, doing less work.

timm's train transform (RandomResizedCrop -> flip -> RandAugment) resamples a photo twice when
RandAugment draws a geometric op (rotate, shear, translate): the crop's resize, then Pillow's
bicubic affine warp of the 224 px result -- the costliest step of the pipeline (2-3 ms a call).
``ComposedTrainTransform`` runs timm's own objects, drawing from the same random generators in
the same order (under one seed: the same crops, flips, ops and magnitudes), and:

- decodes a JPEG at the smallest DCT scale that keeps the sampled crop at least the output size;
- folds a leading translation into the crop's resize (a shifted box; pixels moved in from outside
  get timm's fill colour, as in the two-step result);
- folds crop, resize, flip and a leading rotate/shear into one warp when the crop is enlarged
  (a downscaled crop keeps Pillow's antialiased resize: no affine warp antialiases);
- warps the other geometric ops with OpenCV (same matrix, fill and bicubic interpolation; its
  cubic kernel is a = -0.75, Pillow's -0.5) and sharpens with OpenCV (Pillow's SMOOTH kernel).

Everything else is timm's own op functions, in timm's order; without geometric or sharpness ops
the output is bit-identical to timm's. The tests bound the differences.

The draws are replayed from timm's private ``AugmentOp.__call__`` (``draw_op``): ``compose`` checks
them against timm's own steps once per process (``timm_disagreement``, about 5 ms) and, should a timm
release draw otherwise, warns and leaves timm's transform as built.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import random
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import timm
import torch
from PIL import Image
from timm.data import auto_augment
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
from torchvision import transforms as T

from .images import UndecodedJpeg

log = logging.getLogger(__name__)


def _rotate_matrix(degrees: float, w: int, h: int) -> np.ndarray:
    """Pillow's ``Image.rotate(degrees)`` (expand off, about the centre) as output -> input coords."""
    angle = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    cx, cy = w / 2.0, h / 2.0
    return np.array([[cos, sin, cx - cos * cx - sin * cy], [-sin, cos, cy + sin * cx - cos * cy], [0, 0, 1]])


def _op_matrix(fn, args: tuple, w: int, h: int) -> np.ndarray:
    """timm's geometric ops (``auto_augment``) as 3x3 maps from output to input pixel coordinates."""
    if fn is auto_augment.rotate:
        return _rotate_matrix(args[0], w, h)
    m = np.eye(3)
    if fn is auto_augment.shear_x:
        m[0, 1] = args[0]
    elif fn is auto_augment.shear_y:
        m[1, 0] = args[0]
    elif fn is auto_augment.translate_x_rel:
        m[0, 2] = args[0] * w
    elif fn is auto_augment.translate_y_rel:
        m[1, 2] = args[0] * h
    else:
        raise ValueError(f'not a geometric op: {fn}')
    return m


TRANSLATIONS = (auto_augment.translate_x_rel, auto_augment.translate_y_rel)
GEOMETRIC = (auto_augment.rotate, auto_augment.shear_x, auto_augment.shear_y) + TRANSLATIONS


def draw_op(op) -> Optional[tuple]:
    """What timm's ``AugmentOp.__call__`` draws, in its order: None when the op is skipped, else
    (level args, resample). The resample draw is the one its geometric functions make."""
    if op.prob < 1.0 and random.random() > op.prob:
        return None
    magnitude = op.magnitude
    if op.magnitude_std > 0:
        magnitude = random.uniform(0, magnitude) if op.magnitude_std == float('inf') else \
            random.gauss(magnitude, op.magnitude_std)
    magnitude = max(0., min(magnitude, op.magnitude_max or auto_augment._LEVEL_DENOM))
    args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else tuple()
    resample = op.kwargs['resample']
    if op.aug_fn in GEOMETRIC and isinstance(resample, (list, tuple)):
        resample = random.choice(resample)
    return args, resample


class ComposedTrainTransform:
    """RandomResizedCrop -> horizontal flip -> RandAugment, as timm builds them, with fewer and
    cheaper resampling passes (module docstring). Built from timm's own transform objects."""

    def __init__(self, rrc: RandomResizedCropAndInterpolation, flip: T.RandomHorizontalFlip, randaug):
        self.rrc, self.flip, self.randaug = rrc, flip, randaug

    @property
    def ops(self) -> list:
        """RandAugment's ops (timm's objects: patching one patches what this transform runs)."""
        return self.randaug.ops if self.randaug is not None else []

    takes_undecoded = True   # stream.decode_sample hands over plain JPEGs undecoded (decoded here, at the crop's scale)

    def _draw(self, img) -> Tuple[tuple, int, bool, List[tuple]]:
        i, j, h, w = self.rrc.get_params(img.image if isinstance(img, UndecodedJpeg) else img,
                                         self.rrc.scale, self.rrc.ratio)
        mode = random.choice(self.rrc.interpolation) if isinstance(self.rrc.interpolation, (tuple, list)) \
            else self.rrc.interpolation
        flipped = bool(torch.rand(1) < self.flip.p)
        applied = []
        if self.randaug is not None:
            ra = self.randaug
            # Indices, not the ops: numpy draws the same numbers either way, without building an object array.
            for k in np.random.choice(len(ra.ops), ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights):
                op = ra.ops[k]
                drawn = draw_op(op)
                if drawn is not None:
                    applied.append((op, *drawn))
        return (i, j, h, w), _pil_resample(mode), flipped, applied

    def __call__(self, img) -> Image.Image:
        (i, j, h, w), resample, flipped, applied = self._draw(img)
        size = (self.rrc.size[1], self.rrc.size[0])
        box = (j, i, j + w, i + h)
        if isinstance(img, UndecodedJpeg):
            img, box = img.decode_for(box, size)  # the pixels the resize reads; box in their coordinates
        if applied and applied[0][0].aug_fn in TRANSLATIONS:
            # A shift of the resized crop is a shifted box of the resize: one antialiased pass.
            op, args, _ = applied.pop(0)
            dx, dy = _op_matrix(op.aug_fn, args, *size)[:2, 2]
            out = shifted_resize(img, box, size, resample, -dx if flipped else dx, dy, op.kwargs.get('fillcolor'))
            return self._finish(out, flipped, applied)
        if box[2] - box[0] != w:  # decoded at a reduced scale: the crop is a box of the resize
            return self._finish(img.resize(size, resample, box=box), flipped, applied)
        crop = img if box == (0, 0, *img.size) else img.crop(box)  # decode_for may hand over the crop itself
        if applied and applied[0][0].aug_fn in GEOMETRIC and w <= size[0] and h <= size[1]:
            # An enlarged crop: no antialiasing to lose, so crop, resize, flip and op are one warp.
            op, args, op_resample = applied.pop(0)
            scale = np.diag([w / size[0], h / size[1], 1.0])
            flip = np.array([[-1.0, 0, size[0]], [0, 1, 0], [0, 0, 1]]) if flipped else np.eye(3)
            out = warp(crop, scale @ flip @ _op_matrix(op.aug_fn, args, *size), size, op_resample,
                       op.kwargs.get('fillcolor'))
            return self._finish(out, False, applied)
        return self._finish(crop.resize(size, resample), flipped, applied)

    @staticmethod
    def _finish(out: Image.Image, flipped: bool, applied: List[tuple]) -> Image.Image:
        if flipped:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for op, args, op_resample in applied:  # timm's order; its own functions but for the warps
            if op.aug_fn in GEOMETRIC:
                out = warp(out, _op_matrix(op.aug_fn, args, *out.size), out.size, op_resample,
                           op.kwargs.get('fillcolor'))
            elif op.aug_fn is auto_augment.sharpness and out.mode == 'RGB':
                out = sharpness(out, *args)
            else:
                out = op.aug_fn(out, *args, **op.kwargs)
        return out


def _valid(n: int, shift: float) -> Tuple[int, int]:
    """Output pixels ``[a, b)`` of ``n`` whose centre, shifted, still falls inside ``[0, n)``
    (Pillow's affine fills the others)."""
    return max(0, math.ceil(-0.5 - shift)), min(n, math.ceil(n - 0.5 - shift))


def shifted_resize(img: Image.Image, box: tuple, size: Tuple[int, int], resample, dx: float, dy: float,
                   fill) -> Image.Image:
    """``img.crop(box).resize(size)`` then shifted by ``(dx, dy)`` output pixels as Pillow's affine
    shifts (pixels moved in from outside get ``fill``), as one resize of a shifted box."""
    (a, b), (c, d) = _valid(size[0], dx), _valid(size[1], dy)
    out = Image.new(img.mode, size, tuple(fill) if fill is not None else 0)
    if a >= b or c >= d:
        return out
    sx, sy = (box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1]
    src = (max(0.0, box[0] + (a + dx) * sx), max(0.0, box[1] + (c + dy) * sy),
           min(float(img.width), box[0] + (b + dx) * sx), min(float(img.height), box[1] + (d + dy) * sy))
    out.paste(img.resize((b - a, d - c), resample, box=src), (a, c))
    return out


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13  # Pillow's ImageFilter.SMOOTH


def sharpness(img: Image.Image, factor: float) -> Image.Image:
    """Pillow's ``ImageEnhance.Sharpness(img).enhance(factor)`` (timm's op) by OpenCV, ~10x faster:
    blend with the SMOOTH-filtered image, whose one-pixel border Pillow leaves unfiltered. Values
    differ from Pillow's by rounding (at most a grey level or two)."""
    array = np.asarray(img)
    smooth = cv2.filter2D(array, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = array[0], array[-1], array[:, 0], array[:, -1]
    return Image.fromarray(cv2.addWeighted(array, factor, smooth, 1.0 - factor, 0.0), img.mode)


_CV2_FILTER = {Image.Resampling.NEAREST: cv2.INTER_NEAREST, Image.Resampling.BILINEAR: cv2.INTER_LINEAR,
               Image.Resampling.BICUBIC: cv2.INTER_CUBIC}


def warp(img: Image.Image, m: np.ndarray, size: Tuple[int, int], resample, fill) -> Image.Image:
    """Pillow's ``img.transform(size, AFFINE, m, resample, fillcolor=fill)`` by OpenCV, 2-3x faster.

    ``m`` maps output to input coordinates in Pillow's convention (pixel ``i`` spans ``[i, i+1)``);
    OpenCV puts pixel centres on integers, hence the half-pixel shifts. Pillow's affine bicubic
    is the costliest step of timm's pipeline; OpenCV's cubic kernel is a = -0.75 (Pillow's -0.5)."""
    if resample not in _CV2_FILTER:
        return img.transform(size, Image.Transform.AFFINE, tuple(m[:2].ravel()), resample=resample, fillcolor=fill)
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)  # one core per loader worker, as Pillow: no thread pool per worker
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    m_cv = np.linalg.inv(shift) @ m @ shift
    array = np.asarray(img)
    out = cv2.warpAffine(array, m_cv[:2], size, flags=_CV2_FILTER[resample] | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(fill) if fill is not None else 0)
    return Image.fromarray(out, img.mode)


def _pil_resample(mode):
    """Pillow's filter for timm's interpolation (a torchvision InterpolationMode or a Pillow constant)."""
    return str_to_pil_interp(mode.value) if hasattr(mode, 'value') else mode


def compose(transform) -> Optional[T.Compose]:
    """timm's train Compose with its first three steps replaced by ComposedTrainTransform, or None
    when the pipeline is not RandomResizedCrop -> flip -> [RandAugment] -> to tensor, or when this
    timm draws otherwise than ``draw_op`` replays (``timm_disagreement``: then one warning)."""
    steps = list(getattr(transform, 'transforms', []))
    if len(steps) < 3 or not isinstance(steps[0], RandomResizedCropAndInterpolation) \
            or not isinstance(steps[1], T.RandomHorizontalFlip):
        return None
    randaug = steps[2] if isinstance(steps[2], auto_augment.RandAugment) else None
    rest = steps[3:] if randaug is not None else steps[2:]
    if any(type(s).__name__ not in ('MaybePILToTensor', 'ToNumpy', 'Uint8Tensor') for s in rest):
        return None
    composed = ComposedTrainTransform(steps[0], steps[1], randaug)
    if timm_disagreement(composed) is not None:
        return None
    return T.Compose([composed] + rest)


# --- the guard: draw_op replays timm's private AugmentOp.__call__, right only while timm draws as it does today ---

SELF_CHECK_SEEDS = range(8)
_CHECKED: Dict[str, Optional[str]] = {}   # pipeline (timm's own repr of its steps) -> why ours disagrees, or None


def timm_disagreement(composed: ComposedTrainTransform) -> Optional[str]:
    """Why ``composed`` would not draw what timm's own steps draw (None when it does), checked once per
    process and pipeline on a small synthetic image at fixed seeds; the callers' random state is kept.
    A disagreement is logged once, naming the timm version: its transform then runs as built."""
    key = repr((composed.rrc, composed.flip, composed.randaug))
    if key not in _CHECKED:
        with _random_state_kept():
            try:
                _CHECKED[key] = _first_different_draw(composed)
            except Exception as exc:  # noqa: BLE001  a private name gone or changed: this timm is not the one replayed
                _CHECKED[key] = f'{type(exc).__name__}: {exc}'
        if _CHECKED[key] is not None:
            log.warning('timm %s draws its augmentation otherwise than shards.composed_augment replays (%s): using '
                        "timm's own train transform (correct, slower)", timm.__version__, _CHECKED[key])
    return _CHECKED[key]


def _first_different_draw(composed: ComposedTrainTransform) -> Optional[str]:
    img = Image.linear_gradient('L').resize((64, 48)).convert('RGB')   # draws depend on the size only
    timm_steps = _TimmDraws(composed)
    for seed in SELF_CHECK_SEEDS:
        _seed_every_generator(seed)
        box, _, flipped, applied = composed._draw(img)
        ours = [('crop', box), ('flip', flipped)] + [('op', op.name, tuple(args)) for op, args, _ in applied]
        after_ours = _generator_states()
        _seed_every_generator(seed)
        theirs = timm_steps.run(img)
        if ours != theirs:
            return f'seed {seed}: replayed {ours}, timm drew {theirs}'
        if _generator_states() != after_ours:
            return f'seed {seed}: the same draws but not the same number of random numbers'
    return None


class _TimmDraws:
    """Copies of timm's three steps, run as timm runs them, noting what they drew (the crop box, the
    flip, each applied op and its arguments). At a tiny output size: no draw depends on it."""

    def __init__(self, composed: ComposedTrainTransform):
        self.rrc, self.flip, self.randaug = copy.deepcopy((composed.rrc, composed.flip, composed.randaug))
        self.rrc.size = (16, 16)
        get_params = type(self.rrc).get_params
        self.rrc.get_params = lambda img, scale, ratio: self._note('crop', get_params(img, scale, ratio))
        for op in (self.randaug.ops if self.randaug is not None else []):
            op.aug_fn = functools.partial(self._apply, op.name, op.aug_fn)
        self.drawn: list = []

    def _note(self, kind, value):
        self.drawn.append((kind, value))
        return value

    def _apply(self, name, fn, img, *args, **kwargs):
        self.drawn.append(('op', name, tuple(args)))
        return fn(img, *args, **kwargs)

    def run(self, img) -> list:
        self.drawn = []
        cropped = self.rrc(img)
        out = self.flip(cropped)
        self._note('flip', out is not cropped)
        if self.randaug is not None:
            self.randaug(out)
        return self.drawn


def _seed_every_generator(seed: int) -> None:
    """The generators the augmentation draws from; torch's CPU one only (torch.manual_seed would reseed the GPUs')."""
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)


def _generator_states() -> tuple:
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()


@contextlib.contextmanager
def _random_state_kept():
    """The check seeds the global generators; a training run's own stream of draws must not notice."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
