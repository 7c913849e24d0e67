"""A TCP proxy on 127.0.0.1 in front of the test S3 server, for tests that watch or break the traffic
for real: ``requests`` and ``responses`` pipe each connection's two directions; a subclass
overrides ``on_request`` (see every request's first bytes) or ``responses`` (cut a body)."""
import socket
import threading


class TcpProxy:
    def __init__(self, upstream: str):
        host, port = upstream.split('://', 1)[-1].rsplit(':', 1)
        self.upstream = (host, int(port))
        self.lock = threading.Lock()
        self.server = socket.create_server(('127.0.0.1', 0))
        self.endpoint = f'http://127.0.0.1:{self.server.getsockname()[1]}'
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            state: dict = {}
            threading.Thread(target=self.requests, args=(client, up, state), daemon=True).start()
            threading.Thread(target=self.responses, args=(up, client, state), daemon=True).start()

    def on_request(self, data: bytes, state: dict) -> None:
        """Called with each chunk the client sends (a request starts a chunk: clients wait for the
        previous response on a connection)."""

    def requests(self, src, dst, state):
        try:
            while data := src.recv(1 << 16):
                self.on_request(data, state)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src, dst)

    def responses(self, src, dst, state):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src, dst)

    def close(self) -> None:
        self.server.close()


def _shut(*sockets) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
