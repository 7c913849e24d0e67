"""A TCP proxy in front of the S3 server that counts the HTTP requests passing through it, as the
store bills them: ``GET`` of an object, ``LIST`` (a GET of a bucket with ``list-type``), ``HEAD``,
``PUT``, ``POST``, ``DELETE``. What a client library does behind our calls (s3fs's HEAD before a
read, a multipart upload's extra requests) is counted too, which a wrapper around our own
functions cannot see. ``paths`` keeps (kind, path) of each."""
import re
from collections import Counter

from tcp_proxy import TcpProxy

REQUEST_LINE = re.compile(rb'^(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n')


class CountingProxy(TcpProxy):
    def __init__(self, upstream: str):
        self.counts, self.paths = Counter(), []
        super().__init__(upstream)

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.paths.clear()

    def on_request(self, data: bytes, state: dict) -> None:
        m = REQUEST_LINE.match(data)   # a body (a PUT's tar bytes) does not begin with a request line
        if m:
            verb, path = m.group(1).decode(), m.group(2).decode()
            kind = 'LIST' if verb == 'GET' and 'list-type=' in path else verb
            with self.lock:
                self.counts[kind] += 1
                self.paths.append((kind, path))
