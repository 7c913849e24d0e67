"""A labeling job reading its shards from S3 survives a dropped connection: the SeaweedFS server
behind a proxy that cuts shard downloads mid-body."""
import pytest
from flaky_proxy import DroppingProxy
from labeling_fixtures import job_config, timm_teacher_spec, tiny_timm_weights, toy_shards

from labeling.config import load_job_config
from labeling.job import run_job
from shards import storage

pytestmark = pytest.mark.multiprocess
# More consecutive drops than s3fs's own retries of a read absorb (5 attempts, ~2 s): the outage
# outlasts them, and only a reader that reopens the shard within its retry budget survives it.
DROPS = 8


def test_label_job_over_s3_survives_a_dropped_connection(tmp_path, s3_prefix, s3_server, monkeypatch):
    import s3fs
    local = toy_shards(tmp_path)
    fs, path = storage.filesystem(f'{s3_prefix}/shards')
    fs.put(local + '/', path, recursive=True)
    proxy = DroppingProxy(s3_server.endpoint, match=b".tar", drops=DROPS)
    monkeypatch.setenv('AWS_ENDPOINT_URL', proxy.endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    weights = tiny_timm_weights(tmp_path / 'teacher.safetensors')
    cfg = load_job_config(str(job_config(tmp_path, f'{s3_prefix}/shards', str(tmp_path / 'store'),
                                         [timm_teacher_spec(weights)])))
    try:
        summary = run_job(cfg, progress=False)
    finally:
        proxy.close()
        s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.dropped == DROPS  # the connections really were cut
    assert (summary['committed'], summary['images'], summary['unreadable']) == (4, 20, 0)
