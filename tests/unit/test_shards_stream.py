"""The training stream: partitioning, determinism, exact resume, faults."""
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import rewrite_tar_member, write_image

from shards import plan as P
from shards.build import BuildOptions, build
from shards.index import ShardIndex
from shards.inputs import Item
from shards.loader import ResumableLoader, ShardStream
from shards.stream import SourceSpec, StreamConfig


def to_tensor(img):
    return torch.from_numpy(np.array(img.resize((4, 4)))).permute(2, 0, 1)


@pytest.fixture
def two_sources(tmp_path):
    """labeled: 40 images in uneven shards of 6; unlabeled: 30 images in shards of 4."""
    out = tmp_path / 'shards'
    lab = [Item(str(write_image(tmp_path / 'l' / f'{i}.jpg', i)), f'l{i:03d}', {'t': i % 3}) for i in range(40)]
    unl = [Item(str(write_image(tmp_path / 'u' / f'{i}.jpg', 100 + i)), f'u{i:03d}') for i in range(30)]
    build(lab, BuildOptions(str(out), 'lab', samples_per_shard=6, progress=False))
    build(unl, BuildOptions(str(out), 'unl', samples_per_shard=4, progress=False))
    return str(out)


def loader(prefix, rank=0, world_size=2, workers=2, batch_size=3, seed=0, **cfg):
    specs = [SourceSpec('lab', prefix), SourceSpec('unl', prefix)]
    ds = ShardStream(specs, StreamConfig(shuffle_buffer=5, **cfg), to_tensor,
                     rank, world_size, workers, seed=seed, batch_size=batch_size)
    return ResumableLoader(ds, num_workers=workers)


def keys(batches):
    return [k for b in batches for k in b['key']]


def test_two_ranks_two_workers_epoch_loses_and_repeats_nothing(two_sources):
    per_rank = [list(loader(two_sources, rank=r)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(loader(two_sources))  # no rank waits
    seen = keys(per_rank[0]) + keys(per_rank[1])
    assert len(seen) == len(set(seen))
    # 4 slots: lab 40 // 4 = 10 and unl 30 // 4 = 7 per slot, 17 // 3 = 5 batches of 3.
    assert len(seen) == 4 * 5 * 3
    sources = Counter(s for b in per_rank[0] + per_rank[1] for s in b['source'])
    assert sources['lab'] > sources['unl']


def test_order_is_a_pure_function_of_seed_epoch_rank_and_workers(two_sources):
    a, b = loader(two_sources), loader(two_sources)
    first_a = keys(a)
    assert keys(b) == first_a                                  # same inputs, same order
    assert keys(a) != first_a                                  # the next epoch is reshuffled
    assert keys(loader(two_sources, seed=1)) != first_a
    for rank, workers in [(1, 2), (0, 1), (1, 1)]:
        again = keys(loader(two_sources, rank=rank, workers=workers))
        assert keys(loader(two_sources, rank=rank, workers=workers)) == again
        assert again != first_a
    assert not set(keys(loader(two_sources, rank=1))) & set(first_a)  # ranks read disjoint samples


@pytest.mark.parametrize('stop_after', [1, 4, 9])
def test_resume_continues_with_exactly_the_next_samples(two_sources, stop_after):
    reference = loader(two_sources)
    expected = keys(reference) + keys(reference)        # two epochs uninterrupted
    run = loader(two_sources)
    got = []
    for i, batch in enumerate(run):
        got += batch['key']
        if i + 1 == stop_after:
            break
    state = run.state_dict()
    assert state['batches_in_epoch'] == stop_after
    fresh = loader(two_sources)
    fresh.load_state_dict(state)
    got += keys(fresh)   # the rest of epoch 0
    got += keys(fresh)   # epoch 1
    assert got == expected


def test_resume_at_an_epoch_boundary_starts_the_next_epoch(two_sources):
    run = loader(two_sources)
    list(run)
    state = run.state_dict()
    assert (state['epoch'], state['batches_in_epoch']) == (1, 0)
    fresh = loader(two_sources)
    fresh.load_state_dict(state)
    reference = loader(two_sources)
    list(reference)
    assert keys(fresh) == keys(reference)


def test_changed_world_size_or_workers_is_an_error_naming_both(two_sources):
    run = loader(two_sources)
    next(iter(run))
    state = run.state_dict()
    with pytest.raises(ValueError, match=r'^loader state has world_size=2, this run has 1$'):
        loader(two_sources, world_size=1, workers=2).load_state_dict(state)
    with pytest.raises(ValueError, match=r'^loader state has num_workers=2, this run has 1$'):
        loader(two_sources, workers=1).load_state_dict(state)


def test_a_resume_on_shards_rebuilt_with_other_bytes_under_the_same_names_is_refused(two_sources, tmp_path):
    import shutil
    run = loader(two_sources)
    next(iter(run))
    state = run.state_dict()
    loader(two_sources).load_state_dict(state)               # the same shards: fine
    shutil.rmtree(two_sources)                                # rebuilt: same names and counts, other images
    unl = [Item(str(write_image(tmp_path / 'u2' / f'{i}.jpg', 500 + i)), f'u{i:03d}') for i in range(30)]
    lab = [Item(str(write_image(tmp_path / 'l' / f'{i}.jpg', i)), f'l{i:03d}', {'t': i % 3}) for i in range(40)]
    build(lab, BuildOptions(two_sources, 'lab', samples_per_shard=6, progress=False))
    build(unl, BuildOptions(two_sources, 'unl', samples_per_shard=4, progress=False))
    with pytest.raises(ValueError, match=r"source 'unl': its shards hold other bytes than when this checkpoint was "
                                         r"written .* the source was rebuilt"):
        loader(two_sources).load_state_dict(state)


def test_more_slots_than_shards_fails_at_start_or_shares_when_asked(two_sources):
    with pytest.raises(ValueError, match=r"source 'lab' has 7 shards for world size 4 x 2 workers = 8 slots"):
        loader(two_sources, world_size=4, workers=2)
    shared = [list(loader(two_sources, rank=r, world_size=4, workers=2, few_shards='share'))
              for r in range(4)]
    seen = [k for batches in shared for k in keys(batches)]
    assert len(seen) == len(set(seen)) and len({len(b) for b in shared}) == 1


def test_weights_set_the_mix(two_sources):
    ds = ShardStream([SourceSpec('lab', two_sources, 1.0), SourceSpec('unl', two_sources, 3.0)],
                     StreamConfig(), to_tensor, 0, 1, 1, batch_size=4)
    assert ds.plan.per_slot == (18, 52)  # 70 samples per epoch split 1:3
    with pytest.raises(ValueError, match='every source or to none'):
        ShardStream([SourceSpec('lab', two_sources, 1.0), SourceSpec('unl', two_sources)],
                    StreamConfig(), to_tensor, 0, 1, 1)


def test_brace_pattern_selects_shards_with_counts_from_the_index(two_sources):
    ds = ShardStream([SourceSpec('lab', two_sources + '/lab-{000000..000002}.tar')],
                     StreamConfig(), to_tensor, 0, 1, 1, batch_size=2)
    assert ds.sources[0].samples == 18
    with pytest.raises(ValueError, match='not in'):
        ShardStream([SourceSpec('lab', two_sources + '/lab-{000000..000009}.tar')],
                    StreamConfig(), to_tensor, 0, 1, 1)


def test_corrupt_samples_are_replaced_and_counted_then_stop_the_run(two_sources, caplog):
    for i in range(6):  # a whole shard of undecodable images: some of it is read by every epoch
        rewrite_tar_member(f'{two_sources}/lab-000000.tar', f'lab/000000/{i:06d}.jpg', b'junk')
    batches = [b for r in range(2) for b in loader(two_sources, rank=r, workers=0, max_corrupt_fraction=0.5)]
    assert len(batches) == 2 * len(loader(two_sources, workers=0))  # counts unchanged: ranks stay in step
    assert 'skipping corrupt sample lab/000000/' in caplog.text
    with pytest.raises(RuntimeError, match='failed to decode'):
        for r in range(2):
            list(loader(two_sources, rank=r, workers=0, max_corrupt_fraction=0.01, corrupt_window=5))


def test_truncated_shard_keeps_batch_counts(two_sources, caplog):
    path = f'{two_sources}/unl-000001.tar'
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:3000])  # past the first sample, well before the end of the last
    total = sum(len(list(loader(two_sources, rank=r, workers=0, max_corrupt_fraction=0.5))) for r in range(2))
    assert total == 2 * len(loader(two_sources, workers=0))
    # The cut falls in a tar header, which tarfile reads as the end of the archive.
    assert 'unl-000001.tar: ended after 1 of 4 samples' in caplog.text


def test_a_missing_shard_is_a_clear_error_at_start_up(two_sources):
    import os
    os.unlink(f'{two_sources}/lab-000003.tar')
    with pytest.raises(FileNotFoundError, match=r'1 shard\(s\) listed in .* missing from storage, e\.g\. .*lab-000003\.tar'):
        loader(two_sources, rank=0, workers=0)  # before any sample is read


def test_zero_sample_shard_is_streamed_around(tmp_path):
    out = tmp_path / 's'
    items = [Item(str(write_image(tmp_path / f'{i}.jpg', i)), f'{i:02d}') for i in range(8)]
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'')
    items += [Item(str(bad), '99')]  # alone in the last shard: a shard with no samples
    build(items, BuildOptions(str(out), 'z', samples_per_shard=4, progress=False))
    assert ShardIndex.load(str(out)).shards['z-000002.tar'].samples == 0
    ds = ShardStream([SourceSpec('z', str(out))], StreamConfig(few_shards='share'),
                     to_tensor, 0, 1, 1, batch_size=2)
    assert len(keys(ResumableLoader(ds))) == 8


def test_plan_slots_partition_each_source_epoch():
    counts = [5, 0, 7, 3, 9]
    order = P.shard_order(len(counts), seed=3, source='s', source_epoch=2)
    taken = []
    for slot in range(4):
        ranges = P.slot_shard_ranges(counts, order, 4, slot)
        taken += [(shard, i) for shard, first, n in ranges for i in range(first, first + n)]
        assert sum(n for _, _, n in ranges) == sum(counts) // 4
    assert len(taken) == len(set(taken))


def test_a_few_early_corrupt_samples_do_not_stop_a_run_under_the_limit():
    from shards.stream import CorruptCounter
    counter = CorruptCounter(StreamConfig(max_corrupt_fraction=0.01), log_interval_s=0)
    for i in range(3):
        counter.failed(f'lab/000000/{i:06d}', 'junk')  # 3 bad among the first samples: 0.15% of 2000
    for _ in range(1997):
        counter.ok()
    with pytest.raises(RuntimeError, match=r'21 of 2018 .*data\.stream\.max_corrupt_fraction; last: lab/000001/000017: junk'):
        for i in range(30):
            counter.failed(f'lab/000001/{i:06d}', 'junk')


def test_batches_count_their_replaced_samples_and_a_truncated_shard_is_named(two_sources, caplog):
    for i in range(2):
        rewrite_tar_member(f'{two_sources}/lab-000000.tar', f'lab/000000/{i:06d}.jpg', b'junk')
    batches = list(loader(two_sources, rank=0, workers=0, max_corrupt_fraction=0.5))
    assert sum(b['corrupt'] for b in batches) >= 1 and all('corrupt' in b for b in batches)
    from shards.reader import iter_shard_samples
    from shards.storage import DEFAULT_RETRY
    from shards.stream import decode_sample
    path = f'{two_sources}/unl-000001.tar'
    open(path, 'wb').write(open(path, 'rb').read()[:3000])
    missing = [s for s in iter_shard_samples(path, 0, 3, DEFAULT_RETRY) if s.get('__missing__')]
    assert missing and missing[-1]['__key__'] == f'{path}#2'
    with pytest.raises(Exception, match='truncated shard'):
        decode_sample(missing[0], lambda x: x, None)


def test_one_retry_budget_covers_a_whole_shard_read(two_sources, monkeypatch):
    import io
    import time

    from shards import storage
    from shards.reader import iter_shard_samples

    class DropsMidRead(io.BytesIO):
        def read(self, *args):
            time.sleep(1.2)  # a long read, then the connection drops
            raise ConnectionError('reset by peer')

    opened = []

    def flaky(url, policy=storage.DEFAULT_RETRY):
        opened.append(policy.budget_s)
        if len(opened) == 1:
            return DropsMidRead()
        return storage.with_retries(lambda: (_ for _ in ()).throw(ConnectionError('refused')), f'opening {url}',
                                    policy)
    monkeypatch.setattr(storage, 'open_read', flaky)
    policy = storage.RetryPolicy(budget_s=2.0, initial_backoff_s=0.2, max_backoff_s=0.4)
    start = time.monotonic()
    with pytest.raises(storage.StorageError):
        list(iter_shard_samples(f'{two_sources}/lab-000000.tar', 0, 3, policy))
    assert time.monotonic() - start < 1.3 * policy.budget_s  # reopening gets what is left, not a new budget


def test_batches_of_pillow_images_stack_channels_last_with_the_same_values():
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    from shards.stream import stack_images
    rng = np.random.default_rng(0)
    images = [pil_to_tensor(Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8))) for _ in range(4)]
    batch = stack_images(images)
    assert batch.shape == (4, 3, 6, 5) and torch.equal(batch, torch.stack(images))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    plain = [torch.zeros(3, 2, 2, dtype=torch.uint8) for _ in range(2)]  # contiguous CHW: stacked as given
    assert stack_images(plain).is_contiguous()
