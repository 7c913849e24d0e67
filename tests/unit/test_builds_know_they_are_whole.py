"""A source built by several jobs knows whether every job ran: the plan's job count is recorded and a
job with another count refused; verify, stat and the training stream name the shards the index
lacks and the job that owns them; the stream refuses an incomplete source unless told, loudly."""
import logging

import pytest
from helpers import write_image

from shards import cli
from shards.build import BuildOptions, build
from shards.index import ShardIndex, missing_shards
from shards.inputs import Item
from shards.stream import SourceSpec, resolve_source
from shards.verify import verify


@pytest.fixture
def items(tmp_path):
    return [Item(str(write_image(tmp_path / 'img' / f'{i}.jpg', seed=i)), f'{i}.jpg', {'toy': i % 2}) for i in range(18)]


def build_job(items, prefix, job, jobs):
    return build(items, BuildOptions(str(prefix), 'toy', samples_per_shard=3, progress=False, job_index=job,
                                     num_jobs=jobs))


def test_a_job_with_another_job_count_than_the_plan_is_refused(items, tmp_path):
    build_job(items, tmp_path / 's', 0, 2)
    with pytest.raises(ValueError, match=r"source 'toy' under .* was planned for 2 build jobs; this job says "
                                         r"--num-jobs 3, .* rerun with --num-jobs 2"):
        build_job(items, tmp_path / 's', 1, 3)


def test_verify_stat_and_the_stream_name_the_missing_shards_and_the_job_that_owns_them(items, tmp_path, capsys):
    prefix = tmp_path / 's'
    build_job(items, prefix, 0, 2)           # job 1 of 2 never ran: shards 1, 3, 5 missing
    assert [m[0] for m in missing_shards(str(prefix), 'toy')] == ['toy-000001.tar', 'toy-000003.tar', 'toy-000005.tar']
    faults = verify(str(prefix), decode=False)
    assert any("source 'toy' is incomplete: 3 of 6 planned shards are not in the index" in f and 'job 1 of 2' in f
               for f in faults)
    assert cli.main(['stat', str(prefix)]) == 1   # not whole: a script notices
    out = capsys.readouterr().out
    assert 'toy' in out and 'INCOMPLETE: 3 of 6 planned shards missing (rerun job 1 of 2)' in out
    with pytest.raises(ValueError, match=r"source 'toy' is incomplete: 3 of 6 planned shards .* toy-000001.tar "
                                         r"\(job 1 of 2\).*--job-index 1 --num-jobs 2"):
        resolve_source(SourceSpec('toy', str(prefix)))
    build_job(items, prefix, 1, 2)
    assert missing_shards(str(prefix), 'toy') == [] and verify(str(prefix), decode=False) == []
    assert resolve_source(SourceSpec('toy', str(prefix))).samples == 18


def test_an_incomplete_source_can_be_accepted_explicitly_and_says_so(items, tmp_path, caplog):
    prefix = tmp_path / 's'
    build_job(items, prefix, 0, 2)
    with caplog.at_level(logging.WARNING):
        src = resolve_source(SourceSpec('toy', str(prefix), allow_incomplete=True))
    assert src.samples == 9
    assert "source 'toy' is incomplete: 3 of 6 planned shards" in caplog.text and 'allow_incomplete' in caplog.text


def test_a_build_json_without_a_job_count_is_still_checked_against_its_shard_plan(items, tmp_path):
    import json
    prefix = tmp_path / 's'
    build_job(items, prefix, 0, 2)
    info = prefix / '_index' / 'toy' / 'build.json'
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items() if k != 'num_jobs'}))
    assert [m[1] for m in missing_shards(str(prefix), 'toy')] == [None, None, None]
    with pytest.raises(ValueError, match=r'3 of 6 planned shards'):
        resolve_source(SourceSpec('toy', str(prefix)))
    ShardIndex.load(str(prefix))   # the tools still read it
