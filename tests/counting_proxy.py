"""A TCP proxy in front of the S3 server that counts the HTTP requests passing through it, as the
store bills them: ``GET`` of an object, ``LIST`` (a GET of a bucket with ``list-type``), ``HEAD``,
``PUT``, ``POST``, ``DELETE``. What a client library does behind our calls (s3fs's HEAD before a
read, a multipart upload's extra requests) is counted too, which a wrapper around our own
functions cannot see. ``counts[(verb, first path segment after the bucket)]`` is kept as well."""
import re
import socket
import threading
from collections import Counter

REQUEST_LINE = re.compile(rb'^(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n')


class CountingProxy:
    def __init__(self, upstream: str):
        host, port = upstream.split('://', 1)[-1].rsplit(':', 1)
        self.upstream = (host, int(port))
        self.counts, self.paths = Counter(), []
        self.lock = threading.Lock()
        self.server = socket.create_server(('127.0.0.1', 0))
        self.endpoint = f'http://127.0.0.1:{self.server.getsockname()[1]}'
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.paths.clear()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, False), daemon=True).start()

    def _count(self, data: bytes) -> None:
        # A request starts a chunk: clients wait for the previous response on a connection, and a
        # body (a PUT's tar bytes) does not begin with a request line.
        m = REQUEST_LINE.match(data)
        if m:
            verb, path = m.group(1).decode(), m.group(2).decode()
            kind = 'LIST' if verb == 'GET' and 'list-type=' in path else verb
            with self.lock:
                self.counts[kind] += 1
                self.paths.append((kind, path))

    def _pipe(self, src, dst, requests: bool):
        try:
            while data := src.recv(1 << 16):
                if requests:
                    self._count(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
