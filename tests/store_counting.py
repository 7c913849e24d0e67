"""A storage layer that counts requests as an object store bills them (LIST pages of 1000 names,
GETs, PUTs, HEADs) and bytes read, by wrapping shards.storage's functions: for the store scale
test (tests/unit/test_store_scale.py) and bench/store_scale.py."""
import math
from collections import Counter

from shards import storage

S3_LIST_PAGE = 1000


class CountingStorage:
    """Wraps shards.storage's functions; ``ops`` counts requests as an object store would bill them."""

    def __init__(self, monkeypatch):
        self.ops = Counter()
        real = {name: getattr(storage, name) for name in
                ('list_names', 'list_details', 'read_bytes', 'read_many', 'write_bytes_atomic', 'create_exclusive',
                 'exists')}

        def list_names(prefix, *a, **k):
            names = real['list_names'](prefix, *a, **k)
            self.ops['LIST'] += max(1, math.ceil(len(names) / S3_LIST_PAGE))
            return names

        def list_details(prefix, *a, **k):
            details = real['list_details'](prefix, *a, **k)
            self.ops['LIST'] += max(1, math.ceil(len(details) / S3_LIST_PAGE))
            return details

        def read_bytes(url, *a, **k):
            self.ops['GET'] += 1  # a GET of a missing object is a request too
            data = real['read_bytes'](url, *a, **k)
            self.ops['bytes_read'] += len(data)
            return data

        def read_many(urls, *a, **k):
            out = real['read_many'](urls, *a, **k)
            self.ops['GET'] += len(urls)
            self.ops['bytes_read'] += sum(map(len, out))
            return out

        def counted_put(name):
            def put(url, data, *a, **k):
                self.ops['PUT'] += 1
                return real[name](url, data, *a, **k)
            return put

        def exists(url, *a, **k):
            self.ops['HEAD'] += 1
            return real['exists'](url, *a, **k)

        for name, fn in dict(list_names=list_names, list_details=list_details, read_bytes=read_bytes, read_many=read_many,
                             exists=exists,
                             write_bytes_atomic=counted_put('write_bytes_atomic'),
                             create_exclusive=counted_put('create_exclusive')).items():
            monkeypatch.setattr(storage, name, fn)

    def during(self, fn) -> Counter:
        self.ops.clear()
        fn()
        return Counter(self.ops)
