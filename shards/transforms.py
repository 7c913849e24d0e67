"""timm's train and eval transforms, made safe for current Pillow, uint8 out.

Normalization (and random erasing) belong on the device, as timm's prefetcher does:
the loader ships uint8, a quarter of the bytes of float32.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, auto_augment, create_transform
from timm.data.random_erasing import RandomErasing

from .common.config import section
from .composed_augment import compose


@section(frozen=True)
class TransformConfig:
    """The train augmentation and the evaluation crop (timm's), and the normalization."""
    image_size: int = Field(224, ge=8)
    """training and evaluation input size"""
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    """normalization mean (RGB, 0-1)"""
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD
    """normalization std"""
    auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1'
    """timm RandAugment spec; null: none"""
    scale: Tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.08, 1.0)
    """RandomResizedCrop area range (min, max)"""
    ratio: Tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (3 / 4, 4 / 3)
    """RandomResizedCrop aspect ratio range (min, max)"""
    hflip: float = Field(0.5, ge=0, le=1)
    """horizontal flip probability"""
    interpolation: str = 'bicubic'
    """resize interpolation"""
    re_prob: float = Field(0.0, ge=0, le=1)
    """random erasing probability (applied on the device, with the normalization)"""
    crop_pct: float = Field(0.875, gt=0)
    """evaluation: resize to image_size / crop_pct, center crop (above 1: the crop pads, as in timm)"""
    compose_warps: bool = True
    """train: crop + flip + a geometric RandAugment op in one warp (timm's draws, checked at start)"""

    @model_validator(mode='after')
    def _ranges_ordered(self):
        for name in ('scale', 'ratio'):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f'{name}={[lo, hi]}: need min <= max')
        return self

    def decode_min_side(self, train: bool) -> int:
        """Shortest image side the transform can use at full quality (JPEG draft decoding stops there).

        Train: the smallest RandomResizedCrop (scale[0] of the area) must still cover
        ``image_size`` pixels; eval: the resize target.
        """
        if train:
            return math.ceil(self.image_size / math.sqrt(self.scale[0]))
        return math.ceil(self.image_size / self.crop_pct)


def safe_posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Posterize that keeps Pillow 12's meaning of 0 bits (a black image); Pillow 13 raises.

    timm's ``PosterizeIncreasing`` reaches 0 bits at the top magnitudes of ``inc1``.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> int:
    """Swap timm's posterize for ``safe_posterize`` inside this transform only (no global patch)."""
    patched = 0
    for t in getattr(transform, 'transforms', [transform]):
        for op in getattr(t, 'ops', []):
            if getattr(op, 'aug_fn', None) is auto_augment.posterize:
                op.aug_fn = safe_posterize
                patched += 1
    return patched


class Uint8Tensor:
    """timm's prefetcher transforms end in a uint8 CHW tensor (timm >= 1.0.16) or a uint8 CHW numpy
    array (older timm, ``ToNumpy``): always a tensor out."""

    def __call__(self, x):
        return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


def _tensor_out(transform):
    from torchvision import transforms as T
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    return T.Compose(steps + [Uint8Tensor()])


def train_transform(cfg: TransformConfig):
    """RandomResizedCrop, flip, RandAugment -> uint8 CHW tensor: timm's objects, run by
    ``ComposedTrainTransform`` (one resampling pass where timm makes two; same draws) unless
    ``compose_warps`` is off or the pipeline has other steps (then timm's transform as built)."""
    t = create_transform(cfg.image_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio,
                         hflip=cfg.hflip, auto_augment=cfg.auto_augment, interpolation=cfg.interpolation,
                         mean=cfg.mean, std=cfg.std, use_prefetcher=True)
    _patch_posterize(t)
    composed = compose(t) if cfg.compose_warps else None
    return _tensor_out(composed or t)


def eval_transform(cfg: TransformConfig):
    """Resize to ``image_size / crop_pct``, center crop -> uint8 CHW tensor."""
    return _tensor_out(create_transform(cfg.image_size, is_training=False, crop_pct=cfg.crop_pct,
                                        interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std,
                                        use_prefetcher=True))


class DeviceNormalize:
    """uint8 batch on the device -> normalized float (and random erasing when training)."""

    def __init__(self, cfg: TransformConfig, device: torch.device, train: bool,
                 dtype: torch.dtype = torch.float32):
        self.mean = torch.tensor([x * 255 for x in cfg.mean], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([x * 255 for x in cfg.std], device=device).view(1, 3, 1, 1)
        self.dtype = dtype
        self.erase = (RandomErasing(cfg.re_prob, mode='pixel', device=str(device))
                      if train and cfg.re_prob > 0 else None)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.mean.device, non_blocking=True).float() - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x.to(self.dtype)

