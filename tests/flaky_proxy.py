"""A TCP proxy in front of the S3 server that cuts the first ``drops`` responses to GETs of
matching objects mid-body (an RST after ``cut_after`` bytes): a dropped connection, for real."""
import socket
import struct

from tcp_proxy import TcpProxy


class DroppingProxy(TcpProxy):
    def __init__(self, upstream: str, match: bytes = b'.tar', drops: int = 1, cut_after: int = 700):
        self.match, self.drops_left, self.cut_after, self.dropped = match, drops, cut_after, 0
        super().__init__(upstream)

    def on_request(self, data: bytes, state: dict) -> None:
        line = data.split(b'\r\n', 1)[0]
        if line.startswith(b'GET ') and self.match in line:
            with self.lock:
                if self.drops_left > 0:
                    self.drops_left -= 1
                    state['armed'] = True

    def responses(self, src, dst, state):
        sent = 0
        try:
            while data := src.recv(65536):
                if state.get('armed'):
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
