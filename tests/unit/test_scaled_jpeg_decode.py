"""The loader decodes a JPEG at the smallest DCT scale M/8 its crop allows, with libjpeg-turbo's own
pixels, and leaves anything libjpeg-turbo complains about to Pillow."""
import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from shards.images import BadImage, dct_scale_for, decode_jpeg_scaled, decode_rgb, open_undecoded


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


def whole(data, m):
    """The whole photo decoded at scale m/8, as a Pillow image (the reference a region must match)."""
    rgb = decode_jpeg_scaled(data, Image.open(io.BytesIO(data)).size, m)
    return Image.fromarray(rgb)


def resized(img, box, resample=Image.Resampling.BICUBIC):
    return np.asarray(img.resize((224, 224), resample, box=box))


@pytest.mark.parametrize('resample', [Image.Resampling.BICUBIC, Image.Resampling.LANCZOS, Image.Resampling.BILINEAR])
def test_a_crop_is_decoded_at_the_smallest_dct_scale_and_only_its_region_is_handed_over(photo, resample):
    data = jpeg(photo.resize((1600, 1200), Image.Resampling.BICUBIC))
    for box, m in [((0, 0, 1000, 900), 2), ((100, 100, 400, 400), 6), ((900, 700, 1600, 1200), 4),
                   ((100, 100, 340, 340), 8), ((0, 0, 100, 120), 8)]:
        img, sbox = open_undecoded(data).decode_for(box, (224, 224))
        assert sbox[2] - sbox[0] == (box[2] - box[0]) * m / 8, (box, m)       # the scale chosen
        assert img.width * img.height < (1600 * m / 8) * (1200 * m / 8)          # not the whole photo
        if m == 8:  # at full size the crop itself, as timm crops it (then resizes the crop)
            assert img.size == (box[2] - box[0], box[3] - box[1]) and sbox == (0, 0, *img.size)
            np.testing.assert_array_equal(np.asarray(img), pillow_decode(data)[box[1]:box[3], box[0]:box[2]])
        else:  # the region's resize equals the resize of the whole decoded photo: the filter's reach is in it
            scaled_box = tuple(v * m / 8 for v in box)
            np.testing.assert_array_equal(resized(img, sbox, resample), resized(whole(data, m), scaled_box, resample),
                                          err_msg=str(box))
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
    for k in (1, 2, 4, 8):
        np.testing.assert_array_equal(decode_jpeg_scaled(data, photo.size, 8 // k), pillow_decode(data, k),
                                      err_msg=f'{kind} at 1/{k}')


@pytest.mark.parametrize('m', [3, 5, 6])
def test_a_crop_decoded_at_a_reduced_scale_looks_like_the_full_size_crop(photo, m):
    big = photo.resize((1280, 854), Image.Resampling.BICUBIC)
    data = jpeg(big)
    side = 224 * 8 / m
    box = (20, 10, 20 + side, 10 + side)
    assert dct_scale_for((side, side), (224, 224)) == m
    scaled, sbox = open_undecoded(data).decode_for(box, (224, 224))
    assert sbox[2] - sbox[0] == side * m / 8
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
