"""The training augmentation with composed warps draws exactly what timm draws and looks the same."""
import io
import logging
import random

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.data import auto_augment, create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation

from shards import composed_augment
from shards.composed_augment import GEOMETRIC, ComposedTrainTransform, _op_matrix, compose, warp
from shards.images import BadImage, decode_rgb, open_undecoded
from shards.transforms import TransformConfig, _patch_posterize, train_transform

FILL = (124, 116, 104)


@pytest.fixture(scope='module')
def photos():
    """Two real photos at the bench's size, and one small enough that its crops are enlarged."""
    imgs = [Image.fromarray(a).resize((500, 375), Image.Resampling.BICUBIC) for a in load_sample_images().images]
    return imgs + [imgs[0].resize((200, 150), Image.Resampling.BICUBIC)]


def timm_pipeline():
    t = create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic',
                         use_prefetcher=True)
    _patch_posterize(t)
    return t


def seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_states():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()


class Recorder:
    """Records what timm's own objects draw: the crop, the flip, each applied op and its arguments."""

    def __init__(self, transform, monkeypatch):
        self.log = []
        rrc, flip, ra = transform.transforms[:3]
        get_params = rrc.get_params
        monkeypatch.setattr(rrc, 'get_params', lambda *a: self._note('crop', get_params(*a)))
        real_flip = flip.forward
        monkeypatch.setattr(flip, 'forward', lambda img: self._flip(real_flip, img))
        for op in ra.ops:
            fn = op.aug_fn
            monkeypatch.setattr(op, 'aug_fn', lambda img, *args, _fn=fn, _name=op.name, **kw:
                                self._op(_fn, _name, img, args, kw))

    def _note(self, kind, value):
        self.log.append((kind, value))
        return value

    def _flip(self, real, img):
        out = real(img)
        self.log.append(('flip', out is not img))
        return out

    def _op(self, fn, name, img, args, kw):
        self.log.append(('op', name, tuple(round(a, 12) for a in args)))
        return fn(img, *args, **kw)


def test_the_same_seed_draws_the_same_crops_flips_ops_and_magnitudes_as_timm(photos, monkeypatch):
    timm_t = timm_pipeline()
    recorder = Recorder(timm_t, monkeypatch)
    ours = compose(timm_pipeline()).transforms[0]
    ops_seen = set()
    for s in range(400):
        img = photos[s % len(photos)]
        seed(s)
        recorder.log = []
        timm_t(img)
        after_timm = rng_states()
        seed(s)
        box, _, flipped, applied = ours._draw(img)
        assert rng_states() == after_timm  # the same number of draws from every generator
        drawn = [('crop', box), ('flip', flipped)] + [('op', op.name, tuple(round(a, 12) for a in args))
                                                     for op, args, _ in applied]
        assert drawn == recorder.log, s
        ops_seen |= {op.name for op, _, _ in applied}
    assert len(ops_seen) == 15  # every op of rand-m9-mstd0.5-inc1 was drawn


def test_composed_output_equals_timm_without_geometric_ops_and_stays_close_with_them(photos):
    timm_t, ours = timm_pipeline(), compose(timm_pipeline())
    gaps = {'none': [], 'geometric first': [], 'after a colour op': [], 'sharpness': []}
    for s in range(300):
        img = photos[s % len(photos)]
        seed(s)
        _, _, _, applied = ours.transforms[0]._draw(img)
        seed(s)
        a = np.asarray(timm_t(img), dtype=np.float32)  # a tensor, or an array from older timm (ToNumpy)
        seed(s)
        b = np.asarray(ours(img), dtype=np.float32)
        assert a.shape == b.shape == (3, 224, 224)
        kinds = [op.aug_fn in GEOMETRIC for op, _, _ in applied]
        key = 'none' if not any(kinds) else 'geometric first' if kinds[0] else 'after a colour op'
        if key == 'none' and any(op.aug_fn is auto_augment.sharpness for op, _, _ in applied):
            key = 'sharpness'
        gaps[key].append(np.abs(a - b).mean())
    assert max(gaps['none']) == 0.0  # bit-identical: the same crop, resize, flip and timm's own ops
    assert 0 < max(gaps['sharpness']) < 1.0  # OpenCV's sharpness: rounding (a later equalize can spread it)
    assert len(gaps['geometric first']) > 20 and len(gaps['after a colour op']) > 5
    assert np.mean(gaps['geometric first']) < 1.5 and max(gaps['geometric first']) < 4.0
    assert np.mean(gaps['after a colour op']) < 1.5


@pytest.mark.parametrize('fn, args', [(auto_augment.rotate, (23.0,)), (auto_augment.shear_x, (0.27,)),
                                      (auto_augment.shear_y, (-0.2,)), (auto_augment.translate_x_rel, (0.35,)),
                                      (auto_augment.translate_y_rel, (-0.3,))])
def test_opencv_warp_matches_pillows_affine_for_every_geometric_op(photos, fn, args):
    img = photos[0].resize((224, 224), Image.Resampling.BICUBIC)
    ref = np.asarray(fn(img, *args, fillcolor=FILL, resample=Image.Resampling.BICUBIC), np.float32)
    got = np.asarray(warp(img, _op_matrix(fn, args, 224, 224), (224, 224), Image.Resampling.BICUBIC, FILL), np.float32)
    diff = np.abs(ref - got)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8  # the bicubic kernels differ (a=-0.75 vs -0.5)


def test_an_enlarged_crop_with_a_geometric_op_is_one_warp_that_matches_two_steps(photos):
    crop = photos[2].crop((10, 5, 170, 125))  # 160x120 -> 224x224: enlarged
    for fn, args in [(auto_augment.rotate, (-17.0,)), (auto_augment.translate_x_rel, (0.2,))]:
        for flipped in (False, True):
            two = crop.resize((224, 224), Image.Resampling.BICUBIC)
            if flipped:
                two = two.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            two = np.asarray(fn(two, *args, fillcolor=FILL, resample=Image.Resampling.BICUBIC), np.float32)
            m = np.diag([160 / 224, 120 / 224, 1.0])
            m = m @ (np.array([[-1.0, 0, 224], [0, 1, 0], [0, 0, 1]]) if flipped else np.eye(3))
            one = warp(crop, m @ _op_matrix(fn, args, 224, 224), (224, 224), Image.Resampling.BICUBIC, FILL)
            assert np.abs(two - np.asarray(one, np.float32)).mean() < 2.0


def test_pipelines_with_other_steps_keep_timms_transform():
    assert compose(create_transform(64, is_training=True, auto_augment='original-mstd0.5')) is None
    assert compose(create_transform(64, is_training=True, vflip=0.5)) is None
    plain = train_transform(TransformConfig(image_size=32, compose_warps=False))
    assert isinstance(plain.transforms[0], RandomResizedCropAndInterpolation)
    assert isinstance(train_transform(TransformConfig(image_size=32)).transforms[0], ComposedTrainTransform)
    jitter = train_transform(TransformConfig(image_size=32, auto_augment=None))  # timm adds ColorJitter then
    assert isinstance(jitter.transforms[0], RandomResizedCropAndInterpolation)
    assert jitter(Image.new('RGB', (50, 40))).shape == (3, 32, 32)


def jpeg(img, quality=90):
    buf = io.BytesIO()
    img.save(buf, 'JPEG', quality=quality)
    return buf.getvalue()


def test_undecoded_jpegs_give_the_same_draws_and_nearly_the_same_pixels(photos):
    data = jpeg(photos[1].resize((1600, 1200), Image.Resampling.BICUBIC))
    full = decode_rgb(data)
    ours = compose(timm_pipeline())
    gaps = []
    for s in range(40):
        seed(s)
        a = np.asarray(ours(full), dtype=np.float32)
        after = rng_states()
        seed(s)
        b = np.asarray(ours(open_undecoded(data)), dtype=np.float32)
        assert rng_states() == after
        gaps.append(np.abs(a - b).mean())
    assert np.median(gaps) < 2.0 and max(gaps) < 6.0  # DCT-domain vs bicubic reduction


def test_a_corrupt_undecoded_jpeg_is_bad_data_not_a_transform_fault(photos):
    data = jpeg(photos[0])
    broken = data[:len(data) // 2]
    from shards.stream import decode_sample
    with pytest.raises(BadImage, match='corrupt JPEG'):
        decode_sample({'__key__': 'k', 'jpg': broken}, train_transform(TransformConfig(image_size=32)), None)


@pytest.mark.parametrize('fn, pct', [(auto_augment.translate_x_rel, 0.3), (auto_augment.translate_x_rel, -0.45),
                                     (auto_augment.translate_y_rel, 0.2), (auto_augment.translate_y_rel, -0.05)])
@pytest.mark.parametrize('flipped', [False, True])
def test_a_translation_folded_into_the_resize_box_matches_two_steps(photos, fn, pct, flipped):
    from shards.composed_augment import shifted_resize
    box = (40, 25, 440, 325)  # downscaled 400x300 -> 224: the antialiased resize is kept
    two = photos[0].crop(box).resize((224, 224), Image.Resampling.BICUBIC)
    if flipped:
        two = two.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    two = np.asarray(fn(two, pct, fillcolor=FILL, resample=Image.Resampling.BICUBIC), np.float32)
    dx, dy = _op_matrix(fn, (pct,), 224, 224)[:2, 2]
    one = shifted_resize(photos[0], box, (224, 224), Image.Resampling.BICUBIC, -dx if flipped else dx, dy, FILL)
    if flipped:
        one = one.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    one = np.asarray(one, np.float32)
    assert np.abs(two - one).mean() < 1.5
    filled_two, filled_one = (two == FILL).all(axis=2), (one == FILL).all(axis=2)
    assert filled_two.sum() > 224 * 5 and (filled_two ^ filled_one).sum() <= 2 * 224  # the fill, to a line


@pytest.mark.parametrize('factor', [0.1, 0.6, 1.0, 1.9])
def test_opencv_sharpness_matches_pillows_within_a_grey_level(photos, factor):
    from shards.composed_augment import sharpness
    img = photos[1].resize((224, 224), Image.Resampling.BICUBIC)
    ref = np.asarray(auto_augment.sharpness(img, factor), np.float32)
    assert np.abs(ref - np.asarray(sharpness(img, factor), np.float32)).max() <= 1


# --- the guard: draw_op replays timm's private AugmentOp.__call__; a timm that draws otherwise is detected once,
# at build, and its own transform runs instead (correct, slower) ---

def magnitude_drawn_before_the_skip(self, img):
    """AugmentOp.__call__ of a timm that changed its draw order (the magnitude first, then whether to skip)."""
    magnitude = random.gauss(self.magnitude, self.magnitude_std) if self.magnitude_std > 0 else self.magnitude
    if self.prob < 1.0 and random.random() > self.prob:
        return img
    args = self.level_fn(max(0., min(magnitude, 10)), self.hparams) if self.level_fn is not None else ()
    return self.aug_fn(img, *args, **self.kwargs)


@pytest.fixture
def unchecked(monkeypatch):
    """A process that has not checked any pipeline yet (and forgets what this test's check found)."""
    monkeypatch.setattr(composed_augment, '_CHECKED', {})


def guard_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == 'shards.composed_augment']


def test_a_timm_that_draws_in_another_order_gets_its_own_transform_and_one_warning(unchecked, monkeypatch, caplog):
    monkeypatch.setattr(auto_augment.AugmentOp, '__call__', magnitude_drawn_before_the_skip)
    with caplog.at_level(logging.WARNING, logger='shards.composed_augment'):
        for _ in range(2):   # checked once per process and pipeline
            transform = train_transform(TransformConfig(image_size=32))
            assert isinstance(transform.transforms[0], RandomResizedCropAndInterpolation)
            assert transform(Image.new('RGB', (50, 40))).shape == (3, 32, 32)
    [warning] = guard_warnings(caplog)
    assert f'timm {timm.__version__} draws its augmentation otherwise' in warning and "timm's own" in warning


def test_a_private_timm_name_gone_is_a_fallback_not_a_crash(unchecked, monkeypatch, caplog):
    pipeline = timm_pipeline()
    monkeypatch.delattr(auto_augment, '_LEVEL_DENOM')   # renamed, say, in a timm built without it
    with caplog.at_level(logging.WARNING, logger='shards.composed_augment'):
        assert compose(pipeline) is None
    [warning] = guard_warnings(caplog)
    assert timm.__version__ in warning and '_LEVEL_DENOM' in warning


def test_the_check_agrees_with_this_timm_and_leaves_the_random_state_as_it_was(unchecked, caplog):
    seed(123)
    before = rng_states()
    with caplog.at_level(logging.WARNING, logger='shards.composed_augment'):
        assert isinstance(train_transform(TransformConfig(image_size=32)).transforms[0], ComposedTrainTransform)
    assert rng_states() == before and not guard_warnings(caplog)
