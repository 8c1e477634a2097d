"""The floor for answering a repeated request from memory in Python on uvloop.

About thirty lines: `add_reader` on each accepted socket, `recv_into` one buffer,
and when the bytes equal the last request's, one `send` of the answer kept for it.
No parser on a repeat, no Date kept current, no freshness check, no limits: not a
server, only the least Python a memory cache can run per request, to set
zcserve's `memory --cache-valid` beside (BENCHMARKS 15). Run:
`python benchmarks/repeat_floor.py ROOT PORT`, then `wrk http://127.0.0.1:PORT/FILE`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from email.utils import formatdate

import uvloop
from floor_server import serve


class RepeatFloorConnection:
    __slots__ = ("sock", "fd", "loop", "root", "buffer", "view", "last", "answer")

    def __init__(self, sock: socket.socket, root: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.fd, self.loop, self.root = sock, sock.fileno(), loop, root
        self.buffer = bytearray(8192)
        self.view = memoryview(self.buffer)
        self.last = b""
        self.answer = b""
        loop.add_reader(self.fd, self.on_readable)

    def on_readable(self) -> None:
        try:
            received = self.sock.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:
            received = 0
        if received == 0:
            self.loop.remove_reader(self.fd)
            self.sock.close()
            return
        if received == len(self.last) and self.buffer.startswith(self.last):
            self.sock.send(self.answer)
            return
        request = bytes(self.view[:received])
        target = request.split(b" ", 2)[1].decode()
        with open(os.path.join(self.root, os.fsencode(target.lstrip("/"))), "rb") as file:
            body = file.read()
        head = (
            f"HTTP/1.1 200 OK\r\nServer: floor\r\nDate: {formatdate(usegmt=True)}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.last, self.answer = request, head.encode() + body
        self.sock.send(self.answer)


if __name__ == "__main__":
    uvloop.run(serve(os.fsencode(sys.argv[1]), int(sys.argv[2]), RepeatFloorConnection))
