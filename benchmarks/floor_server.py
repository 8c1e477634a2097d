"""The floor for a Python callback server: what zcserve's connection core is measured against.

About forty lines on uvloop, with no coroutine per request: `add_reader` on each
accepted socket, `recv_into` and httptools inside the callback, one `os.stat` per
request, `send(head, MSG_MORE)` then `os.sendfile`. No limits, no timeouts, no
errors handled: it is not a server, only the cheapest Python path through the same
syscalls. Run: `python benchmarks/floor_server.py ROOT PORT`, then wrk it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable

import httptools
import uvloop


class FloorConnection:
    def __init__(self, sock: socket.socket, root: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.fd, self.root, self.loop = sock, sock.fileno(), root, loop
        self.buffer = bytearray(8192)
        self.view = memoryview(self.buffer)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.complete: list[bytes] = []
        self.files: dict[bytes, int] = {}
        loop.add_reader(self.fd, self.on_readable)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        self.complete.append(self.url)

    def on_readable(self) -> None:
        try:
            received = self.sock.recv_into(self.buffer)
            if received == 0:
                raise ConnectionError
            self.parser.feed_data(self.view[:received])
            for url in self.complete:
                path = self.root + url
                size = os.stat(path).st_size
                fd = self.files.get(path)
                if fd is None:
                    fd = self.files[path] = os.open(path, os.O_RDONLY)
                head = b"HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Length: %d\r\n\r\n" % size
                self.sock.send(head, socket.MSG_MORE)
                os.sendfile(self.fd, fd, 0, size)
            self.complete.clear()
        except (OSError, httptools.HttpParserError):
            self.loop.remove_reader(self.fd)
            self.sock.close()
            for fd in self.files.values():
                os.close(fd)


async def serve(
    root: bytes,
    port: int,
    connection: Callable[[socket.socket, bytes, asyncio.AbstractEventLoop], object] = (
        FloorConnection
    ),
) -> None:
    """Accept on 127.0.0.1:`port` and hand each socket to `connection`."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection(sock, root, loop)

    loop.add_reader(listener.fileno(), accept)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(os.fsencode(sys.argv[1]), int(sys.argv[2])))
