"""A TCP proxy in front of a test's server that can lose one reply: the command reaches the
server and runs, its reply is thrown away and the client's connection is closed, as when a
connection resets after the server did the work."""

from __future__ import annotations

import socket
import threading
from typing import Any


class ReplyDropper:
    """Forwards 127.0.0.1:`port` (its own: `self.port`); `drop_reply_to(b"XADD")` loses the
    reply of the next request that holds those bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.dropped = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def drop_reply_to(self, marker: bytes) -> None:
        self.marker = marker.upper()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._open += [client, server]
            lose = threading.Event()  # set before the request goes on: its reply is lost
            threading.Thread(target=self._requests, args=(client, server, lose), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client, lose), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, lose: threading.Event) -> None:
        self._pump(client, server, lambda data: self._arm(data, lose))

    def _replies(self, server: socket.socket, client: socket.socket, lose: threading.Event) -> None:
        def check(data: bytes) -> bool:
            if not lose.is_set():
                return True
            self.dropped += 1
            return False

        self._pump(server, client, check)

    def _arm(self, data: bytes, lose: threading.Event) -> bool:
        with self._lock:
            if self.marker is not None and self.marker in data.upper():
                self.marker = None
                lose.set()
        return True

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, keep: Any) -> None:
        """Copy src to dst while `keep(data)` says so; then close both."""
        try:
            while data := src.recv(65536):
                if not keep(data):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                close(s)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for s in self._open:
                close(s)


def close(sock: socket.socket) -> None:
    """Close a socket, waking a thread blocked reading it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
