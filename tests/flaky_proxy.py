"""A TCP proxy in front of the S3 server that cuts the first ``drops`` responses to GETs of
matching objects mid-body (an RST after ``cut_after`` bytes): a dropped connection, for real."""
import socket
import struct
import threading


class DroppingProxy:
    def __init__(self, upstream: str, match: bytes = b'.tar', drops: int = 1, cut_after: int = 700):
        host, port = upstream.split('://', 1)[-1].rsplit(':', 1)
        self.upstream = (host, int(port))
        self.match, self.drops_left, self.cut_after, self.dropped = match, drops, cut_after, 0
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
            state = dict(armed=False)
            threading.Thread(target=self._requests, args=(client, up, state), daemon=True).start()
            threading.Thread(target=self._responses, args=(up, client, state), daemon=True).start()

    def _requests(self, src, dst, state):
        try:
            while data := src.recv(65536):
                line = data.split(b'\r\n', 1)[0]
                if line.startswith(b'GET ') and self.match in line:
                    with self.lock:
                        if self.drops_left > 0:
                            self.drops_left -= 1
                            state['armed'] = True
                dst.sendall(data)
        except OSError:
            pass

    def _responses(self, src, dst, state):
        sent = 0
        try:
            while data := src.recv(65536):
                if state['armed']:
                    dst.sendall(data[:max(0, self.cut_after - sent)])
                    sent += len(data)
                    if sent >= self.cut_after:
                        with self.lock:
                            self.dropped += 1
                        for s in (dst, src):  # cut both sides now (shutdown wakes the other thread)
                            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                            s.shutdown(socket.SHUT_RDWR)
                            s.close()
                        return
                    continue
                dst.sendall(data)
        except OSError:
            pass

    def close(self):
        self.server.close()
