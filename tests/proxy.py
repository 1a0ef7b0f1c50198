"""A TCP proxy in front of a test's server that can lose one reply: the command reaches the
server and runs, its reply is thrown away and the client's connection is closed, as when a
connection resets after the server did the work."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable


class ReplyDropper:
    """Forwards its own port (`url()`) to 127.0.0.1:`upstream_port`; `drop_reply_to(b"XADD")`
    loses the reply of the next request that holds those bytes (after holding it `hold`
    seconds: a reply later than the client's timeout), and counts the requests that hold
    them (`seen`)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.marker: bytes | None = None  # the next request holding it loses its reply
        self.watched: bytes | None = None  # requests holding it are counted
        self.hold = 0.0
        self.dropped = self.seen = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def drop_reply_to(self, marker: bytes, hold: float = 0.0) -> None:
        self.marker = self.watched = marker.upper()
        self.hold = hold

    def close(self) -> None:
        close(self.listener)
        with self._lock:
            for sock in self._open:
                close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._open += [client, server]
            lose = threading.Event()  # set before a request goes on: its reply is lost

            def request(data: bytes, lose: threading.Event = lose) -> bool:
                with self._lock:
                    if self.watched is not None and self.watched in data.upper():
                        self.seen += 1
                    if self.marker is not None and self.marker in data.upper():
                        self.marker = None
                        lose.set()
                return True

            def reply(data: bytes, lose: threading.Event = lose) -> bool:
                if lose.is_set():
                    time.sleep(self.hold)
                    self.dropped += 1
                    return False
                return True

            for src, dst, keep in ((client, server, request), (server, client, reply)):
                threading.Thread(target=pump, args=(src, dst, keep), daemon=True).start()


def pump(src: socket.socket, dst: socket.socket, keep: Callable[[bytes], bool]) -> None:
    """Copy src to dst while `keep(data)` says so; then close both."""
    try:
        while data := src.recv(65536):
            if not keep(data):
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        close(src)
        close(dst)


def close(sock: socket.socket) -> None:
    """Close a socket, waking a thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
