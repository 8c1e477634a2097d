"""Faults: clients that leave mid-transfer, files that change under a transfer, and
bugs inside one connection. The server must clean up, log briefly, and keep serving."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.support.httpclient import connect, get, recv_until_closed, status_codes
from tests.support.servers import start_child, start_server
from tests.support.site import LOOPS, SIZES, Site
from tests.support.stress import MiB, reset, run_abort_storm
from tests.support.timing import wait_for
from tests.support.tls import Transport, skip_unless_carried
from zcserve.server.files import OpenedFile
from zcserve.server.http import Request, RequestParser
from zcserve.server.respond import Reply, plan_reply
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import STRATEGY_NAMES, CopyStrategy, Transfer

pytestmark = pytest.mark.timeout(120)

BIG = b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n"


def slow_download(
    transport: Transport, port: int, request: bytes, first: int
) -> tuple[socket.socket, bytes]:
    """Start a download through a 64 KiB receive window and read its first bytes
    slowly, so the server is mid-transfer when this returns."""
    sock = connect(port, transport=transport, timeout=10, rcvbuf=64 * 1024)
    sock.sendall(request)
    data = b""
    while len(data) < first:
        chunk = sock.recv(min(64 * 1024, first - len(data)))
        assert chunk, "closed early"
        data += chunk
        time.sleep(0.005)
    return sock, data


def receive_rest(sock: socket.socket, body: bytearray, size: int) -> bytes:
    """`body` completed to `size` bytes from `sock`."""
    while len(body) < size:
        chunk = sock.recv(min(256 * 1024, size - len(body)))
        assert chunk, f"closed after {len(body)} of {size} body bytes"
        body += chunk
    return bytes(body)


def split_body(received: bytes) -> tuple[bytes, bytes]:
    head, sep, body = received.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {received[:200]!r}"
    return head, body


def content_length(head: bytes) -> int:
    match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    assert match is not None, head
    return int(match.group(1))


# Clients that leave -----------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_client_abort_is_one_debug_line_and_no_traceback(
    transport: Transport, site: Site, tmp_path: Path, strategy: str, loop: str
) -> None:
    skip_unless_carried(transport, strategy)
    args = ("--strategy", strategy, "--loop", loop, "--log-level", "debug")
    aborts = 6
    with start_child(site.root, *args, *transport.flags(), log_dir=tmp_path) as child:
        # Warm up without leaving a file in the open-file cache (it closes idle
        # descriptors itself after 2 s): the count must come back to exactly this.
        assert get(child.port, "/no-such-file", transport=transport).status == 404
        base = child.idle_fds()
        for number in range(aborts):
            sock, _ = slow_download(transport, child.port, BIG, 100_000 + number * 300_000)
            if number % 2:
                reset(sock)
            else:
                sock.close()  # a plain close with unread bytes: the kernel resets too
        wait_for(lambda: child.fds() == base, 5.0, "descriptors back to the start")
        assert get(child.port, "/hello.txt", transport=transport).body == b"hello\n"
        assert child.stop() == 0
    log = child.log()
    ended = re.findall(r"DEBUG zcserve: connection from 127\.0\.0\.1 ended: .+", log)
    assert len(ended) == aborts, log
    assert "Traceback" not in log and " ERROR " not in log and " WARNING " not in log, log


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_abort_storm(transport: Transport, site: Site, tmp_path: Path, strategy: str) -> None:
    """200 downloads of a 24 MiB file cut at random points, 32 at a time, half by
    reset: descriptors back to the start, RSS within 30 MiB, nothing logged."""
    skip_unless_carried(transport, strategy)
    big = ("/big.bin", SIZES["big.bin"], site.hashes["big.bin"])
    run_abort_storm(tmp_path, site.root, big, strategy, "uvloop", count=200, transport=transport)


# Files that change under a transfer ------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_file_truncated_during_transfer_ends_the_connection(
    transport: Transport, tmp_path: Path, strategy: str, loop: str
) -> None:
    skip_unless_carried(transport, strategy)
    size = 16 * MiB
    content = os.urandom(size)
    (tmp_path / "shrinks.bin").write_bytes(content)
    options = transport.options()
    with start_server(root=str(tmp_path), strategy=strategy, loop=loop, **options) as server:
        request = b"GET /shrinks.bin HTTP/1.1\r\nHost: t\r\n\r\n"
        sock, first = slow_download(transport, server.port, request, 256 * 1024)
        with sock:
            os.truncate(tmp_path / "shrinks.bin", 8 * MiB)
            if strategy == "readall":
                # It read the whole file before its first body byte: all of that comes.
                head, body = split_body(first)
                assert content_length(head) == size
                assert receive_rest(sock, bytearray(body), size) == content, "bytes changed"
                after = get(server.port, "/shrinks.bin", transport=transport)
                assert after.body == content[: 8 * MiB]
                return
            truncated = time.monotonic()
            rest, closed = recv_until_closed(sock, 1.0)
            took = time.monotonic() - truncated
        assert closed, f"no EOF within 1s of the truncation ({took:.2f}s)"
        head, body = split_body(first + rest)
        assert content_length(head) == size
        assert len(body) < size, "more bytes than the file holds"
        assert body == content[: len(body)], "bytes before the truncation changed"
        assert get(server.port, "/shrinks.bin", transport=transport).body == content[: 8 * MiB]


@pytest.mark.parametrize("action", ["replaced", "deleted"])
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_file_replaced_or_deleted_while_open_sends_the_old_bytes(
    transport: Transport, tmp_path: Path, strategy: str, loop: str, action: str
) -> None:
    skip_unless_carried(transport, strategy)
    old = os.urandom(8 * MiB)
    path = tmp_path / "moving.bin"
    path.write_bytes(old)
    options = transport.options()
    with start_server(root=str(tmp_path), strategy=strategy, loop=loop, **options) as server:
        request = b"GET /moving.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        sock, first = slow_download(transport, server.port, request, 256 * 1024)
        with sock:
            if action == "replaced":
                (tmp_path / "new.bin").write_bytes(b"new content\n")
                os.replace(tmp_path / "new.bin", path)
            else:
                path.unlink()
            rest, closed = recv_until_closed(sock, 10.0)
        assert closed
        _, body = split_body(first + rest)
        assert body == old, "the open descriptor must finish with the old content"
        after = get(server.port, "/moving.bin", transport=transport)
        if action == "replaced":
            assert (after.status, after.body) == (200, b"new content\n")
        else:
            assert after.status == 404


# Bugs inside one connection ---------------------------------------------------------------


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "zcserve" and r.exc_info is not None]


@pytest.mark.parametrize(
    "fault",
    [RuntimeError("injected"), OSError(errno.EIO, "injected I/O error")],
    ids=["bug", "io-error"],
)
@pytest.mark.parametrize("loop", LOOPS)
def test_error_before_anything_is_sent_gives_500(
    transport: Transport,
    site: Site,
    loop: str,
    fault: Exception,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def faulty_plan(request: Request, root: Any) -> Reply:
        if request.path == b"/boom":
            raise fault
        return plan_reply(request, root)

    monkeypatch.setattr("zcserve.server.decorate.plan_reply", faulty_plan)
    with start_server(root=site.root, loop=loop, **transport.options()) as server:
        with connect(server.port, transport=transport) as sock:
            sock.sendall(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
            received, closed = recv_until_closed(sock, 5.0)
        assert status_codes(received) == [500] and closed, received
        assert received.endswith(b"\r\n\r\n500 Internal Server Error\n")
        assert get(server.port, "/hello.txt", transport=transport).body == b"hello\n"
    assert len(_tracebacks(caplog)) == 1 and "injected" in caplog.text, caplog.text


@pytest.mark.parametrize("loop", LOOPS)
def test_error_after_the_head_closes_the_connection(
    transport: Transport, site: Site, loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    with start_server(root=site.root, loop=loop, **transport.options()) as server:
        real = server.server.strategy

        class HalfThenBug:
            name: ClassVar[str] = "half-then-bug"

            def choose(self, stream: SocketStream) -> CopyStrategy:
                return self

            def start(
                self, stream: SocketStream, file: OpenedFile, offset: int, count: int
            ) -> Transfer | None:
                return None  # always the awaited path

            async def send(
                self, stream: SocketStream, file: OpenedFile, offset: int, count: int
            ) -> None:
                await real.send(stream, file, offset, count // 2)
                raise RuntimeError("injected mid-body")

        server.server.strategy = HalfThenBug()
        with connect(server.port, transport=transport) as sock:
            sock.sendall(b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            received, closed = recv_until_closed(sock, 5.0)
        assert closed
        head, body = split_body(received)
        assert head.startswith(b"HTTP/1.1 200 ") and len(body) == SIZES["64k1.bin"] // 2
        server.server.strategy = real
        assert get(server.port, "/hello.txt", transport=transport).body == b"hello\n"
    records = _tracebacks(caplog)
    assert len(records) == 1 and "injected mid-body" in caplog.text, caplog.text


@pytest.mark.parametrize("loop", LOOPS)
def test_error_outside_a_response_gives_500(
    transport: Transport,
    site: Site,
    loop: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class ExplodingParser(RequestParser):
        def feed(self, data: bytes | bytearray | memoryview) -> list[Request | Any]:
            if b"EXPLODE" in bytes(data):
                raise RuntimeError("injected parser bug")
            return super().feed(data)

    monkeypatch.setattr("zcserve.server.connection.RequestParser", ExplodingParser)
    with start_server(root=site.root, loop=loop, **transport.options()) as server:
        with connect(server.port, transport=transport) as sock:
            sock.sendall(b"GET /EXPLODE HTTP/1.1\r\nHost: t\r\n\r\n")
            received, closed = recv_until_closed(sock, 5.0)
        assert status_codes(received) == [500] and closed, received
        assert get(server.port, "/hello.txt", transport=transport).body == b"hello\n"
    records = _tracebacks(caplog)
    assert len(records) == 1 and "injected parser bug" in caplog.text, caplog.text
