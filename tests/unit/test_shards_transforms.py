"""timm transforms as the stream uses them, including the Pillow 13 posterize crash."""
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment

from shards.images import BadImage, decode_rgb
from shards.transforms import DeviceNormalize, TransformConfig, eval_transform, safe_posterize, train_transform


def posterize_ops(transform):
    return [op for t in transform.transforms for op in getattr(t, 'ops', []) if op.name == 'PosterizeIncreasing']


def test_top_magnitude_posterize_no_longer_crashes_the_recipe_augmentation():
    img = Image.new('RGB', (32, 32), (200, 100, 50))
    (op,) = posterize_ops(train_transform(TransformConfig(image_size=16)))
    op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0  # always the top magnitude: 0 bits
    out = op(img)
    assert out.getextrema() == ((0, 0), (0, 0), (0, 0))  # Pillow 12's meaning: a black image
    assert safe_posterize(img, 8) is img


def test_unpatched_timm_posterize_crashes_on_this_pillow():
    """Guards the need for the fix: if this stops raising, Pillow changed its mind again."""
    img = Image.new('RGB', (8, 8))
    try:
        ImageOps.posterize(img, 0)
    except ValueError:
        with pytest.raises(ValueError):
            auto_augment.posterize(img, 0)
    else:
        pytest.skip('this Pillow accepts 0 bits')


def test_train_and_eval_transforms_give_uint8_at_the_size():
    cfg = TransformConfig(image_size=24, crop_pct=0.8)
    img = Image.new('RGB', (50, 40), (10, 20, 30))
    for t in (train_transform(cfg), eval_transform(cfg)):
        out = t(img)
        assert out.dtype == torch.uint8 and out.shape == (3, 24, 24)
    norm = DeviceNormalize(cfg, torch.device('cpu'), train=True)
    x = norm(torch.full((2, 3, 24, 24), 255, dtype=torch.uint8))
    assert x.dtype == torch.float32 and torch.allclose(x[0, 0], torch.full((24, 24), (1 - 0.485) / 0.229))


def test_draft_decoding_keeps_the_requested_side(tmp_path):
    import io
    big = Image.new('RGB', (1600, 1200), (1, 2, 3))
    buf = io.BytesIO()
    big.save(buf, 'JPEG')
    img = decode_rgb(buf.getvalue(), min_side=250)
    assert img.size == (400, 300)  # 1/4 scale: the shorter side 300 >= 250 (1/8 would give 150)
    assert decode_rgb(buf.getvalue()).size == (1600, 1200)
    assert TransformConfig(image_size=224).decode_min_side(train=True) == 792


def test_decoder_refuses_images_over_the_pixel_limit():
    import io
    buf = io.BytesIO()
    Image.new('L', (100, 100)).save(buf, 'PNG')
    with pytest.raises(BadImage, match='exceeds the limit'):
        decode_rgb(buf.getvalue(), max_pixels=5000)
