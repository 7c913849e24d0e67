"""The shard paths against a real S3 server (SeaweedFS on loopback)."""
import time
from collections import Counter

import numpy as np
import pytest
import torch

from shards import storage
from shards.build import BuildOptions, build
from shards.cli import main as cli
from shards.index import ShardIndex
from shards.inputs import imagefolder_items
from shards.loader import ResumableLoader, ShardStream
from shards.stream import SourceSpec, StreamConfig
from shards.verify import verify

pytestmark = pytest.mark.multiprocess


def to_tensor(img):
    return torch.from_numpy(np.array(img.resize((4, 4)))).permute(2, 0, 1)


def test_build_verify_stat_and_stream_on_s3(image_tree, s3_prefix, capsys):
    prefix = f'{s3_prefix}/zoo'
    items, classes = imagefolder_items(str(image_tree), 'animals')
    report = build(items, BuildOptions(prefix, 'zoo', samples_per_shard=4, progress=False), {'animals': classes})
    assert report.shards_written == 5
    assert verify(prefix) == []
    assert cli(['stat', prefix]) == 0 and 'zoo' in capsys.readouterr().out
    again = build(items, BuildOptions(prefix, 'zoo', samples_per_shard=4, progress=False), {'animals': classes})
    assert again.shards_written == 0 and again.shards_skipped_as_done == 5

    seen = []
    for rank in range(2):
        ds = ShardStream([SourceSpec('zoo', prefix)], StreamConfig(few_shards='share'),
                         to_tensor, rank, 2, 2, batch_size=2)
        seen += [k for b in ResumableLoader(ds, num_workers=2) for k in b['key']]
    assert len(seen) == len(set(seen)) == 16  # 18 // 4 slots = 4 per slot, 2 batches of 2


def test_build_into_s3_then_resume_after_interruption(image_tree, s3_prefix, monkeypatch):
    from shards import build as build_mod
    prefix = f'{s3_prefix}/resume'
    items, _ = imagefolder_items(str(image_tree), 'animals')
    real = build_mod.write_shard
    monkeypatch.setattr(build_mod, 'write_shard',
                        lambda job: (_ for _ in ()).throw(KeyboardInterrupt) if job['shard'] == 1 else real(job))
    with pytest.raises(KeyboardInterrupt):
        build(items, BuildOptions(prefix, 'zoo', samples_per_shard=4, progress=False))
    assert list(ShardIndex.load(prefix).shards) == ['zoo-000000.tar']
    monkeypatch.setattr(build_mod, 'write_shard', real)
    assert build(items, BuildOptions(prefix, 'zoo', samples_per_shard=4, progress=False)).shards_written == 4
    assert verify(prefix) == []


def test_missing_shard_on_s3_is_named(image_tree, s3_prefix):
    prefix = f'{s3_prefix}/missing'
    items, _ = imagefolder_items(str(image_tree), 'animals')
    build(items, BuildOptions(prefix, 'zoo', samples_per_shard=4, progress=False))
    fs, path = storage.filesystem(prefix + '/zoo-000002.tar')
    fs.rm(path)
    assert any('zoo-000002.tar: listed in the index (_index/) but missing' in f for f in verify(prefix))


def test_endpoint_down_fails_in_bounded_time_with_a_clear_error(monkeypatch):
    import s3fs
    monkeypatch.setenv('AWS_ENDPOINT_URL', 'http://127.0.0.1:9')  # nothing listens on the discard port
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'x')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'x')
    s3fs.S3FileSystem.clear_instance_cache()
    policy = storage.RetryPolicy(budget_s=3, initial_backoff_s=0.2, max_backoff_s=1)
    start = time.monotonic()
    with pytest.raises(storage.StorageError, match=r'listing s3://nobucket/_index: still failing after'):
        ShardIndex.load('s3://nobucket', policy=policy)
    assert time.monotonic() - start < 15
    s3fs.S3FileSystem.clear_instance_cache()


def test_plain_webdataset_reads_s3_shards_through_our_opener(image_tree, s3_prefix):
    import webdataset as wds
    prefix = f'{s3_prefix}/wds'
    items, _ = imagefolder_items(str(image_tree), 'animals')
    build(items, BuildOptions(prefix, 'zoo', samples_per_shard=10, progress=False))
    storage.register_webdataset_opener()
    samples = list(wds.WebDataset(f'{prefix}/zoo-{{000000..000001}}.tar', shardshuffle=False))
    assert len(samples) == 18 and samples[0]['__key__'] == 'zoo/000000/000000'


def test_missing_credentials_fail_at_once_naming_the_variables(s3_prefix, monkeypatch):
    import s3fs
    monkeypatch.delenv('AWS_ACCESS_KEY_ID')
    monkeypatch.delenv('AWS_SECRET_ACCESS_KEY')
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', '/nonexistent')
    monkeypatch.setenv('AWS_CONFIG_FILE', '/nonexistent')
    s3fs.S3FileSystem.clear_instance_cache()
    start = time.monotonic()
    with pytest.raises(storage.StorageError, match='no usable credentials.*AWS_ACCESS_KEY_ID'):
        storage.read_bytes(f'{s3_prefix}/x/_index.json')
    assert time.monotonic() - start < 20  # not the 300 s retry budget


def test_a_build_into_a_missing_bucket_names_the_url(image_tree, s3_prefix):
    items, classes = imagefolder_items(str(image_tree), 'animals')
    with pytest.raises(Exception) as info:
        build(items, BuildOptions('s3://no-such-bucket-replk/zoo', 'zoo', samples_per_shard=4, progress=False,
                                  retry=storage.RetryPolicy(budget_s=5)), {'animals': classes})
    assert 's3://no-such-bucket-replk/zoo' in str(info.value), repr(info.value)


def test_decontaminate_on_s3_and_stream_without_the_matches(image_tree, s3_prefix, capsys):
    """Hash segments, the exclusion list, its report and picture, all on S3; the stream leaves the
    evaluation images' copies out."""
    from shards.exclusions import load as load_exclusions
    prefix, val = f'{s3_prefix}/decon', f'{s3_prefix}/decon-val'
    items, _ = imagefolder_items(str(image_tree), 'animals')
    build(items, BuildOptions(prefix, 'zoo', samples_per_shard=4, progress=False))
    build(items[:3], BuildOptions(val, 'val', samples_per_shard=2, progress=False))  # 3 training images
    out = f'{s3_prefix}/exclusions/zoo.v1.parquet'
    assert cli(['decontaminate', prefix, '--against', val, '--out', out]) == 0
    assert 'zoo                 3 of         18 samples excluded' in capsys.readouterr().out
    assert storage.exists(f'{s3_prefix}/exclusions/zoo.v1.report.json')
    assert storage.exists(f'{s3_prefix}/exclusions/zoo.v1.pairs.png')
    excluded = {k for _, _, keys in load_exclusions(out).by_shard.values() for k in keys}
    ds = ShardStream([SourceSpec('zoo', prefix)], StreamConfig(few_shards='share', exclude=out),
                     to_tensor, 0, 1, 1, batch_size=1)
    seen = [k for b in ResumableLoader(ds) for k in b['key']]
    assert len(seen) == 15 and not set(seen) & excluded


def test_the_local_server_answers_only_its_own_run_keys(s3_server, s3_prefix):
    """Another user of the machine can reach loopback: anonymous S3 and filer requests are refused,
    the data folder is private, and the run's own keys (what LocalS3.env() hands its clients) work."""
    import stat
    import urllib.error
    import urllib.request

    storage.write_bytes_atomic(f'{s3_prefix}/secret.bin', b'labels', storage.DEFAULT_RETRY)
    bucket_path = s3_prefix[len('s3://'):]
    anonymous = [urllib.request.Request(f'{s3_server.endpoint}/{bucket_path}/secret.bin'),            # GET
                 urllib.request.Request(f'{s3_server.endpoint}/{bucket_path.split("/")[0]}'),          # LIST
                 urllib.request.Request(f'{s3_server.endpoint}/{bucket_path}/planted.tar', data=b'x', method='PUT'),
                 urllib.request.Request(f'{s3_server.filer_endpoint}/buckets/')]                        # the filer
    for request in anonymous:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (401, 403), request.full_url
    assert storage.read_bytes(f'{s3_prefix}/secret.bin') == b'labels'
    assert stat.S_IMODE(s3_server.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((s3_server.data_dir / 's3.json').stat().st_mode) == 0o600


def test_adopt_tars_another_tool_wrote_to_s3_and_stream_them(tmp_path, s3_prefix, capsys):
    import json as json_

    from adopt_fixtures import PER_TAR, TARS, foreign_shards
    prefix = f'{s3_prefix}/wds'
    for tar in sorted(foreign_shards(tmp_path / 'wds').glob('*.tar')):
        storage.put_file_atomic(str(tar), f'{prefix}/{tar.name}')
    assert cli(['adopt', prefix, '--source', 'foreign', '--label', 'toy=cls']) == 0
    summary = json_.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary['tars'], summary['samples'], summary['labels']) == (TARS, TARS * PER_TAR, {'toy': TARS * PER_TAR - 1})
    assert verify(prefix) == []
    ds = ShardStream([SourceSpec('foreign', prefix)], StreamConfig(), to_tensor, 0, 1, 1, batch_size=5)
    keys = [k for b in ResumableLoader(ds, num_workers=1) for k in b['key']]
    assert sorted(keys) == sorted(f'foreign/{s:06d}/{p:06d}' for s in range(TARS) for p in range(PER_TAR))
    assert cli(['adopt', prefix, '--source', 'foreign', '--label', 'toy']) == 2
    assert "--label 'toy': expected TASK=cls, TASK=json:FIELD or TASK=name:json:FIELD" in capsys.readouterr().err

    # named by a brace pattern, the index in a prefix of one's own
    assert cli(['adopt', f'{prefix}/train-{{0000..0001}}.tar', '--source', 'two', '--index-to', f'{s3_prefix}/mine']) == 0
    ds = ShardStream([SourceSpec('two', f'{s3_prefix}/mine')], StreamConfig(), to_tensor, 0, 1, 1, batch_size=5)
    keys = [k for b in ResumableLoader(ds, num_workers=1) for k in b['key']]
    assert sorted(keys) == sorted(f'two/{s:06d}/{p:06d}' for s in range(2) for p in range(PER_TAR))
    assert not any(name.startswith('two') for name in storage.list_names(f'{prefix}/_index'))


def test_adopting_costs_a_head_and_a_get_per_tar_plus_a_constant_few_requests(s3_server, s3_prefix, monkeypatch):
    """Counted by a proxy in front of the server, so s3fs's own requests count too. The index part
    is saved at an interval, not after every tar (that was N PUTs of a growing part: O(N^2) bytes)."""
    import s3fs
    from adopt_fixtures import one_sample_tar
    from counting_proxy import CountingProxy

    from shards.adopt import AdoptOptions, adopt
    tars = 40
    fs, path = storage.filesystem(f'{s3_prefix}/pool')
    fs.pipe({f'{path}/{i:05d}.tar': one_sample_tar(i) for i in range(tars)})
    proxy = CountingProxy(s3_server.endpoint)
    monkeypatch.setenv('AWS_ENDPOINT_URL', proxy.endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    assert adopt(AdoptOptions(f'{s3_prefix}/pool', 'pool', labels={'toy': 'cls'}, workers=4))['samples'] == tars
    on_tars = Counter(verb for verb, p in proxy.paths if p.split('?')[0].endswith('.tar'))
    assert on_tars == {'HEAD': tars, 'GET': tars}       # its ETag, then one GET per 8 MiB
    assert proxy.counts['PUT'] == 3                      # build.json, the job's part, its skipped report
    assert sum(proxy.counts.values()) - 2 * tars <= 16   # listings, the plan, the part: 14 today, not per tar
    proxy.close()
