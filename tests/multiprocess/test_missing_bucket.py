"""A URL in an S3 bucket that does not exist says so at once, on the read side and the write side,
instead of "no shards were ever completed there" or a retry budget spent (a real S3 server)."""
import time

import pytest

from labeling.store import LabelStore
from labeling.tasks import Task, TaskRegistry
from pretrain.config import TaskConfig
from pretrain.labels import check_store_tasks
from shards import storage
from shards.index import ShardIndex

pytestmark = pytest.mark.multiprocess   # a real S3 server process (SeaweedFS), like the other S3 tests
NO_BUCKET = 's3://replk-no-such-bucket'


def test_reading_shards_or_labels_in_a_missing_bucket_names_the_bucket(s3_prefix):
    with pytest.raises(FileNotFoundError, match="the bucket 'replk-no-such-bucket' does not exist on http"):
        ShardIndex.load(f'{NO_BUCKET}/shards')
    with pytest.raises(FileNotFoundError, match="the bucket 'replk-no-such-bucket' does not exist"):
        check_store_tasks(f'{NO_BUCKET}/labels', {'pets': TaskConfig(num_classes=2)}, None)


def test_writing_labels_into_a_missing_bucket_fails_at_once_naming_it(s3_prefix):
    store = LabelStore(f'{NO_BUCKET}/labels', TaskRegistry({'pets': Task('pets', ('cat', 'dog'))}),
                       retry=storage.RetryPolicy(budget_s=60))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="the bucket 'replk-no-such-bucket' does not exist"):
        store.open_task('pets')
    assert time.monotonic() - start < 10   # not the retry budget


def test_an_existing_bucket_with_nothing_there_still_says_nothing_was_built(s3_prefix):
    with pytest.raises(ValueError, match='no shards were ever completed there'):
        ShardIndex.load(f'{s3_prefix}/empty')
