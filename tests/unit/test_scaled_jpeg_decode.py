"""The loader decodes a JPEG at the smallest DCT scale M/8 its crop allows, with libjpeg-turbo's own
pixels, and leaves anything libjpeg-turbo complains about to Pillow."""
import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from shards.images import BadImage, dct_scale_for, decode_rgb, open_undecoded


@pytest.fixture(scope='module')
def photo():
    return Image.fromarray(load_sample_images().images[1])  # 640x427, a real photo


def jpeg(img, **save):
    buf = io.BytesIO()
    img.save(buf, 'JPEG', quality=save.pop('quality', 90), **save)
    return buf.getvalue()


def pillow_decode(data, k=1):
    img = Image.open(io.BytesIO(data))
    if k > 1:
        img.draft('RGB', (img.width // k, img.height // k))
    return np.asarray(img.convert('RGB'))


def test_a_crop_is_decoded_at_the_smallest_dct_scale_that_keeps_it_at_the_output_size(photo):
    data = jpeg(photo.resize((1600, 1200), Image.Resampling.BICUBIC))
    img, box = open_undecoded(data).decode_for((0, 0, 1000, 900), (224, 224))
    assert img.size == (400, 300) and box == (0, 0, 250, 225)            # 2/8
    img, box = open_undecoded(data).decode_for((100, 100, 400, 400), (224, 224))
    assert img.size == (1200, 900) and box == (75, 75, 300, 300)         # 6/8: 225 px >= 224
    img, box = open_undecoded(data).decode_for((100, 100, 340, 340), (224, 224))
    assert img.size == (1600, 1200) and box == (100, 100, 340, 340)      # 7/8 is not used: full size
    img, box = open_undecoded(data).decode_for((0, 0, 100, 120), (224, 224))
    assert img.size == (1600, 1200) and box == (0, 0, 100, 120)          # an enlarged crop: full size
    assert [dct_scale_for((s, 1000), (224, 224)) for s in (224, 298, 299, 358, 359, 448, 1000)] == [8, 8, 6, 6, 5, 4, 2]
    assert dct_scale_for((1792, 1800), (224, 224)) == 1
    png = io.BytesIO()
    photo.save(png, 'PNG')
    assert open_undecoded(png.getvalue()) is None  # not a JPEG: decoded by Pillow as before


@pytest.mark.parametrize('kind', ['420', '444', 'grey', 'progressive', 'exif-rotated'])
def test_the_scaled_decoder_gives_pillows_pixels_at_every_scale_pillow_has(photo, kind):
    """The same libjpeg-turbo: full size and 1/2, 1/4, 1/8 are bit for bit Pillow's (and so timm's)."""
    img = photo.convert('L') if kind == 'grey' else photo
    save = {'444': dict(subsampling=0), 'progressive': dict(progressive=True), 'exif-rotated': {}}.get(kind, {})
    if kind == 'exif-rotated':
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90": Pillow does not apply it when decoding, nor may we
        save['exif'] = exif
    data = jpeg(img, **save)
    w, h = photo.size
    for k in (1, 2, 4, 8):
        ours, box = open_undecoded(data).decode_for((0, 0, w, h), (w // k, h // k))  # scale 1/k
        assert ours.mode == "RGB" and box == (0, 0, w / k, h / k)
        np.testing.assert_array_equal(np.asarray(ours), pillow_decode(data, k), err_msg=f'{kind} at 1/{k}')


@pytest.mark.parametrize('m', [3, 5, 6])
def test_a_crop_decoded_at_a_reduced_scale_looks_like_the_full_size_crop(photo, m):
    big = photo.resize((1280, 854), Image.Resampling.BICUBIC)
    data = jpeg(big)
    side = 224 * 8 / m
    box = (20, 10, 20 + side, 10 + side)
    assert dct_scale_for((side, side), (224, 224)) == m
    scaled, sbox = open_undecoded(data).decode_for(box, (224, 224))
    assert scaled.width == -(-big.width * m // 8)
    a = np.asarray(scaled.resize((224, 224), Image.Resampling.BICUBIC, box=sbox), dtype=np.float32)
    b = np.asarray(decode_rgb(data).resize((224, 224), Image.Resampling.BICUBIC, box=box), dtype=np.float32)
    assert np.abs(a - b).mean() < 1.2  # DCT-domain vs Pillow's antialiased reduction: measured 0.35-0.8


def test_a_tiny_jpeg_is_decoded_as_pillow_decodes_it(photo):
    for size in [(5, 5), (7, 30), (8, 8)]:
        data = jpeg(photo.resize(size, Image.Resampling.BICUBIC))
        img, box = open_undecoded(data).decode_for((0, 0, *size), (224, 224))
        np.testing.assert_array_equal(np.asarray(img), pillow_decode(data), err_msg=str(size))


def test_a_jpeg_libjpeg_turbo_warns_about_is_left_to_pillow(photo):
    data = jpeg(photo)
    warned = data[:-2] + b'\x00' * 7 + data[-2:]  # extraneous bytes before the EOI marker: Pillow decodes it
    img, box = open_undecoded(warned).decode_for((0, 0, 600, 400), (224, 224))
    assert box == (0, 0, 600, 400)  # Pillow's full-size decode, not a reduced one
    np.testing.assert_array_equal(np.asarray(img), np.asarray(decode_rgb(warned)))


def test_a_truncated_jpeg_is_bad_data_on_the_scaled_path(photo):
    data = jpeg(photo)
    with pytest.raises(BadImage, match='corrupt JPEG'):
        open_undecoded(data[:len(data) // 2]).decode_for((0, 0, 600, 400), (224, 224))
