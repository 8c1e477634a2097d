"""The event-driven connection core: the small-file path makes no task and no timer
per request, whichever loop runs it."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

import pytest

from tests.support.httpclient import connect
from tests.support.servers import ServerThread, start_server
from tests.support.site import LOOPS

BATCH = 100
"""Requests written at once: under the parser's 128-request pipelining cap."""
REQUESTS = 1000
SIZE = 4096


class Counters:
    """Tasks and timers the server's loop created while the counters were on."""

    def __init__(self) -> None:
        self.tasks = 0
        self.timers = 0


def _count_on_loop(server: ServerThread, counters: Counters) -> None:
    """Install, on the server's own loop, a task factory that counts; under asyncio
    also count timer handles (uvloop's C loop cannot be wrapped, its tasks can)."""
    loop = server._loop
    assert loop is not None
    installed = threading.Event()

    def install() -> None:
        def factory(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
        ) -> asyncio.Task[Any]:
            counters.tasks += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        if isinstance(loop, asyncio.BaseEventLoop):
            real_call_at = loop.call_at

            def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
                counters.timers += 1
                return real_call_at(when, callback, *args, **kwargs)

            loop.call_at = call_at  # type: ignore[method-assign,assignment]
        installed.set()

    loop.call_soon_threadsafe(install)
    assert installed.wait(5.0)


def _read_responses(sock: socket.socket, count: int, size: int) -> list[bytes]:
    """`count` responses of `size`-byte bodies off `sock`, bodies returned in order."""
    data = b""
    bodies: list[bytes] = []
    while len(bodies) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0 and len(data) >= head_end + 4 + size:
            assert data.startswith(b"HTTP/1.1 200 "), data[:80]
            bodies.append(data[head_end + 4 : head_end + 4 + size])
            data = data[head_end + 4 + size :]
            continue
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(bodies)} responses"
        data += chunk
    assert data == b""
    return bodies


@pytest.fixture
def small_file(tmp_path: Path) -> Generator[tuple[Path, bytes], None, None]:
    body = hashlib.sha256(b"seed").digest() * (SIZE // 32)
    (tmp_path / "4k.bin").write_bytes(body)
    yield tmp_path, body


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", ["auto", "sendfile", "fallback", "mmap", "splice"])
def test_pipelined_small_files_create_no_task_and_no_timer(
    small_file: tuple[Path, bytes], strategy: str, loop: str
) -> None:
    root, body = small_file
    server = start_server(root=str(root), strategy=strategy, loop=loop)
    counters = Counters()
    try:
        _count_on_loop(server, counters)
        started = time.monotonic()
        with connect(server.port) as sock:
            for _ in range(REQUESTS // BATCH):
                sock.sendall(b"GET /4k.bin HTTP/1.1\r\nHost: t\r\n\r\n" * BATCH)
                assert _read_responses(sock, BATCH, SIZE) == [body] * BATCH
        elapsed = time.monotonic() - started
        tasks = counters.tasks  # shutdown may make its own
    finally:
        server.stop()
    assert tasks == 0, f"{tasks} tasks for {REQUESTS} requests"
    # The server's one periodic sweep arms a timer per tick (0.25 s); requests arm none.
    assert counters.timers <= elapsed / 0.25 + 2, f"{counters.timers} timers in {elapsed:.1f}s"


@pytest.mark.parametrize("loop", LOOPS)
def test_many_keepalive_connections_create_no_task(
    small_file: tuple[Path, bytes], loop: str
) -> None:
    root, body = small_file
    server = start_server(root=str(root), loop=loop)
    counters = Counters()
    try:
        _count_on_loop(server, counters)
        sockets = [connect(server.port) for _ in range(32)]
        for _ in range(10):
            for sock in sockets:
                sock.sendall(b"GET /4k.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            for sock in sockets:
                assert _read_responses(sock, 1, SIZE) == [body]
        tasks = counters.tasks
        for sock in sockets:
            sock.close()
    finally:
        server.stop()
    assert tasks == 0


def test_counters_do_see_tasks(tmp_path: Path) -> None:
    """Control: the readwrite strategy awaits its reads, so it must show tasks."""
    (tmp_path / "4k.bin").write_bytes(b"x" * SIZE)
    server = start_server(root=str(tmp_path), strategy="readwrite", loop="asyncio")
    counters = Counters()
    try:
        _count_on_loop(server, counters)
        with connect(server.port) as sock:
            sock.sendall(b"GET /4k.bin HTTP/1.1\r\nHost: t\r\n\r\n" * 10)
            assert _read_responses(sock, 10, SIZE) == [b"x" * SIZE] * 10
    finally:
        server.stop()
    assert counters.tasks >= 10


def _head_lines(response: bytes) -> dict[str, str]:
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in head)


@pytest.mark.parametrize("loop", LOOPS)
def test_cached_heads_follow_the_clock_and_the_connection(
    small_file: tuple[Path, bytes], loop: str
) -> None:
    """A whole-file head is reused within a second: its Date still moves with the
    clock, and keep-alive, close and HTTP/1.0 answers each get their own."""
    root, body = small_file
    server = start_server(root=str(root), loop=loop)
    try:
        with connect(server.port) as sock:
            sock.sendall(b"GET /4k.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            first = _head_lines(sock.recv(65536))
            second_started = time.time()
            while int(time.time()) == int(second_started):  # into the next second
                time.sleep(0.05)
            sock.sendall(b"GET /4k.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            later = _head_lines(sock.recv(65536))
        assert first["Date"] != later["Date"]
        assert {k: v for k, v in first.items() if k != "Date"} == {
            k: v for k, v in later.items() if k != "Date"
        }
        assert "Connection" not in first
        with connect(server.port) as sock:
            sock.sendall(b"GET /4k.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            closing = _head_lines(sock.recv(65536))
        with connect(server.port) as sock:
            sock.sendall(b"GET /4k.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            old = _head_lines(sock.recv(65536))
        assert closing["Connection"] == "close"
        assert old["Connection"] == "keep-alive"
        assert closing["Content-Length"] == old["Content-Length"] == str(len(body))
    finally:
        server.stop()
