"""JPEG decoding on the labeling device, in batches (nvJPEG through torchvision on a GPU).

A ViT-L/16 labels ~3.5-4.5k images/s per H100 in bf16 (an estimate); Pillow decodes a 500x375
photo in ~1 ms per core even at reduced DCT scale, so a node's CPU workers may not keep 8 GPUs
fed. With ``decode: device`` the workers only read tars and check headers; the JPEG bytes are
decoded here, then resized and cropped as the teacher's preprocessing says, on the device.
Anything the device decoder refuses (CMYK, progressive oddities) is decoded by Pillow instead,
and only what Pillow also refuses is reported as unreadable.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from shards.images import BadImage, decode_rgb

from .teachers import Preprocess

Payload = Union[bytes, torch.Tensor]   # JPEG bytes to decode here, or an image the worker decoded


def resize_crop(image: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    size = pre.resize if isinstance(pre.resize, int) else list(pre.resize)
    out = TF.resize(image, size, interpolation=InterpolationMode(pre.interpolation), antialias=True)
    return TF.center_crop(out, list(pre.size)) if pre.center_crop else out


def _host_decode(data: bytes, pre: Preprocess) -> Optional[torch.Tensor]:
    try:
        return pre.transform()(decode_rgb(data, min_side=pre.min_decode_side()))
    except BadImage:
        return None


def _device_decode(jpegs: Sequence[bytes], device: torch.device) -> List[Optional[torch.Tensor]]:
    tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad file fails a batched call: find it
        out = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def decode_batch(payloads: Sequence[Payload], pre: Preprocess,
                 device: torch.device) -> Tuple[Optional[torch.Tensor], List[int]]:
    """uint8 (N, 3, h, w) on ``device`` for the readable payloads, and the indices of the others."""
    jpeg_at = [i for i, p in enumerate(payloads) if isinstance(p, (bytes, bytearray))]
    decoded = dict(zip(jpeg_at, _device_decode([payloads[i] for i in jpeg_at], device))) if jpeg_at else {}
    images, failed = [], []
    for i, payload in enumerate(payloads):
        if i in decoded:
            image = decoded[i]
            image = resize_crop(image, pre) if image is not None else _host_decode(payload, pre)
        else:
            image = payload
        if image is None:
            failed.append(i)
        else:
            images.append(image.to(device, non_blocking=True))
    return (torch.stack(images) if images else None), failed
