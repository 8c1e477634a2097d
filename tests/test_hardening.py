"""Limits and timeouts against a live server: size and count caps, pipelining,
slowloris, idle and stalled clients, and the connection cap."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.conftest import LOOPS, SIZES, Site
from tests.httpclient import connect, get, read_response
from tests.stress import (
    open_fds,
    read_response_async,
    recv_until_closed,
    running,
    status_codes,
    wait_for,
)
from zcserve.server.strategies import STRATEGY_NAMES

pytestmark = pytest.mark.timeout(60)

HELLO = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"


def answer(port: int, raw: bytes, *, timeout: float = 5.0) -> tuple[list[int], bool]:
    """Send `raw` in one write; the statuses received and whether the server closed."""
    with connect(port) as sock:
        sock.sendall(raw)
        received, closed = recv_until_closed(sock, timeout)
    return status_codes(received), closed


# Size and count limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 150 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),  # target past 100
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 400 + b"\r\n\r\n", 431),  # 400 > 300
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-N: 1\r\n" * 5 + b"\r\n", 431),  # 6 headers > 5
        (b"GET /" + b"a" * 150, 414),  # an unfinished target already too long
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 2000, 431),  # unfinished header
    ],
    ids=["long-target", "big-header", "many-headers", "partial-target", "partial-header"],
)
def test_limits_from_config_answer_and_close(site: Site, raw: bytes, status: int) -> None:
    with running(root=site.root, max_request_line=100, max_header_bytes=300, max_headers=5) as s:
        statuses, closed = answer(s.port, raw)
        assert statuses == [status] and closed, (statuses, closed)
        # Just under every limit is served, and on a connection that stays open.
        fine = b"GET /" + b"a" * 90 + b" HTTP/1.1\r\nHost: t\r\n" + b"X-N: 1\r\n" * 4 + b"\r\n"
        statuses, closed = answer(s.port, fine, timeout=0.3)
        assert statuses == [404] and not closed


def test_pipelined_requests_past_the_cap_get_429_then_close(site: Site) -> None:
    with running(root=site.root, max_pipelined=4) as server:
        statuses, closed = answer(server.port, HELLO * 4, timeout=0.5)
        assert statuses == [200] * 4 and not closed, "4 pipelined requests are within the cap"
        statuses, closed = answer(server.port, HELLO * 50)
        assert statuses == [200] * 4 + [429] and closed, statuses


def test_unknown_upgrade_is_answered_then_closed(site: Site) -> None:
    """An Upgrade the server does not speak ends the exchange: whatever follows the
    head is not HTTP to us, so the connection must close rather than go deaf."""
    upgrade = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    with running(root=site.root) as server:
        statuses, closed = answer(server.port, upgrade + HELLO, timeout=3)
        assert statuses == [200] and closed, (statuses, closed)
        connect_ = b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org\r\n\r\n"
        statuses, closed = answer(server.port, connect_ + HELLO, timeout=3)
        assert len(statuses) == 1 and 400 <= statuses[0] < 500 and closed, (statuses, closed)


# Timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_header_timeout_cuts_a_trickling_client(site: Site, loop: str) -> None:
    with running(root=site.root, loop=loop, header_timeout=1.0) as server:
        with connect(server.port) as sock:
            started = time.monotonic()
            sock.settimeout(0.25)  # paces the trickle: one byte every 0.25 s
            for byte in HELLO:
                try:
                    sock.send(bytes([byte]))
                    if sock.recv(1024) == b"":
                        break
                except TimeoutError:
                    continue
                except ConnectionError:
                    break
            else:
                pytest.fail("a head trickled for its whole length without being cut off")
            elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 2.5, f"cut after {elapsed:.2f}s with a 1s header timeout"


async def _trickle(port: int, pause: float) -> float:
    """Send a head one byte per `pause` seconds; return when the server cut it off."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        for byte in HELLO[:-2] + b"X-Slow: " + b"z" * 200:
            try:
                await loop.sock_sendall(sock, bytes([byte]))
                async with asyncio.timeout(pause):
                    data = await loop.sock_recv(sock, 1024)
            except TimeoutError:
                continue
            except ConnectionError:
                return time.monotonic()
            assert data == b"", f"a trickling client got an answer: {data!r}"
            return time.monotonic()
        raise AssertionError("the trickle was never cut off")
    finally:
        sock.close()


@pytest.mark.parametrize("loop", LOOPS)
async def test_slowloris_does_not_starve_a_normal_client(site: Site, loop: str) -> None:
    """200 connections trickling heads: a normal GET is served within a second, and
    the header timeout cuts every trickler off."""
    header_timeout = 2.0
    with running(root=site.root, loop=loop, header_timeout=header_timeout) as server:
        started = time.monotonic()
        tricklers = [asyncio.create_task(_trickle(server.port, 0.5)) for _ in range(200)]
        await asyncio.sleep(0.6)  # let every trickler connect and send a few bytes
        assert not any(t.done() for t in tricklers), "a trickler ended before the timeout"
        asked = time.monotonic()
        response = await asyncio.to_thread(get, server.port, "/hello.txt")
        served_in = time.monotonic() - asked
        assert response.body == b"hello\n"
        assert served_in < 1.0, f"a normal client waited {served_in:.2f}s"
        async with asyncio.timeout(header_timeout + 3):
            cut_at = await asyncio.gather(*tricklers)
    latest = max(cut_at) - started
    earliest = min(cut_at) - started
    assert earliest >= header_timeout - 0.5, f"a trickler was cut after {earliest:.2f}s"
    assert latest <= header_timeout + 1.5, f"a trickler lasted {latest:.2f}s"


@pytest.mark.parametrize("loop", LOOPS)
def test_keepalive_idle_timeout_closes_an_idle_connection(site: Site, loop: str) -> None:
    with running(root=site.root, loop=loop, keepalive_timeout=0.5) as server:
        with connect(server.port) as sock, sock.makefile("rb") as reader:
            sock.sendall(HELLO)
            first = read_response(reader)
            assert first is not None and first.body == b"hello\n"
            time.sleep(0.2)  # idle, but less than the timeout: still open
            sock.sendall(HELLO)
            second = read_response(reader)
            assert second is not None and second.body == b"hello\n"
            idle_from = time.monotonic()
            rest, closed = recv_until_closed(sock, 3.0)
            idle = time.monotonic() - idle_from
    assert closed and rest == b"", "an idle keep-alive connection was never closed"
    assert 0.4 <= idle <= 2.0, f"closed after {idle:.2f}s idle with a 0.5s timeout"


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_send_stall_timeout_cuts_a_client_that_stops_reading(
    site: Site, strategy: str, loop: str
) -> None:
    with running(root=site.root, strategy=strategy, loop=loop, send_timeout=0.5) as server:
        before = open_fds()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        with sock:
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            first = sock.recv(16)  # the transfer has begun; from now on, read nothing
            wait_for(lambda: open_fds() <= before + 1, 5.0, "stalled connection dropped")
            received, closed = recv_until_closed(sock, 10.0)
        assert closed, "the connection stayed open after the stall"
        head, _, body = (first + received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert len(body) < SIZES["big.bin"], "the whole file was sent to a stalled client"
        assert get(server.port, "/hello.txt").body == b"hello\n"


# Connection cap -------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_max_connections_holds_the_rest_in_the_backlog(site: Site, loop: str) -> None:
    with running(root=site.root, loop=loop, max_connections=2) as server:
        first, second, third = (connect(server.port) for _ in range(3))
        try:
            for sock in (first, second):
                sock.sendall(HELLO)
                assert status_codes(sock.recv(4096)) == [200]
            third.sendall(HELLO)
            third.settimeout(0.7)
            with pytest.raises(TimeoutError):
                third.recv(4096)  # waits in the backlog: neither served nor refused
            first.close()
            third.settimeout(5.0)
            with third.makefile("rb") as reader:
                response = read_response(reader)
            assert response is not None and response.body == b"hello\n"
        finally:
            for sock in (first, second, third):
                sock.close()


async def test_many_keepalive_requests_on_one_server(site: Site) -> None:
    """A sanity check of the async client the soak tests use, against a live server."""
    with running(root=site.root) as server:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        with sock:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            for _ in range(20):
                await loop.sock_sendall(sock, HELLO)
                assert await read_response_async(sock) == (200, b"hello\n")
