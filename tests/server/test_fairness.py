"""The fairness turn: a transfer whose socket never makes it wait still lets the loop
run other tasks every `TURN_BYTES` (4 MiB), whatever the stepped strategy.

Turns the loop grants while the transfer waits for its socket prove nothing, so a
stream that says when it waits lets the test count only the others: with the turn
gone, a transfer that never waits gives none."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from tests.support.site import LOOPS
from zcserve.demo import write_file
from zcserve.runtime import loop_factory
from zcserve.server.files import OpenedFile
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import STRATEGY_NAMES, make_strategy

SIZE = 64 * 1024 * 1024
BUFFER = 4 * 1024 * 1024
"""Socket buffers as big as the system allows by default (net.core.wmem_max): the
reader keeps up and the sender rarely finds the socket full."""


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fairness") / "huge.bin"
    write_file(str(path), SIZE)
    return path


class WatchedStream(SocketStream):
    """A stream that says when its transfer is waiting for the socket to drain."""

    __slots__ = ("waiting", "waits")

    def __init__(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop, *, send_timeout: float
    ) -> None:
        super().__init__(sock, loop, send_timeout=send_timeout)
        self.waiting = False
        self.waits = 0

    async def wait_writable(self) -> None:
        self.waiting = True
        self.waits += 1
        try:
            await super().wait_writable()
        finally:
            self.waiting = False


class Drain(threading.Thread):
    """Reads and discards everything, as fast as it can, into one buffer."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.received = 0

    def run(self) -> None:
        view = memoryview(bytearray(BUFFER))
        while got := self.sock.recv_into(view):
            self.received += got


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)  # before the SYN
        client.connect(listener.getsockname())
        server_side, _ = listener.accept()
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    return server_side, client


async def _turns_during_transfer(name: str, path: Path) -> tuple[int, int, int]:
    """(turns another task got while the transfer was not waiting for its socket,
    bytes sent, waits for the socket)."""
    server_side, client = _pair()
    drain = Drain(client)
    drain.start()
    stream = WatchedStream(server_side, asyncio.get_running_loop(), send_timeout=10)
    fd = os.open(path, os.O_RDONLY)
    info = os.fstat(fd)
    file = OpenedFile(fd, path.name, info.st_size, info.st_mtime, info.st_mtime_ns)
    try:
        sending = asyncio.ensure_future(make_strategy(name).send(stream, file, 0, SIZE))
        turns = 0
        while not sending.done():
            await asyncio.sleep(0)
            if stream.bytes_sent and not stream.waiting and not sending.done():
                turns += 1
        await sending
        return turns, stream.bytes_sent, stream.waits
    finally:
        server_side.close()
        drain.join(10)
        client.close()
        file.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", [n for n in STRATEGY_NAMES if n != "readwrite"])
def test_a_transfer_that_never_waits_still_lets_others_run(
    huge: Path, name: str, loop_name: str
) -> None:
    """readwrite awaits every read by nature; the others must yield on their own."""
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        turns, sent, waits = runner.run(_turns_during_transfer(name, huge))
    assert sent == SIZE
    assert turns > 0, f"no other task ran during {SIZE} bytes ({waits} waits for the socket)"
