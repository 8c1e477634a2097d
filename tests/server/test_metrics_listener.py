"""The `--metrics` listener under hostile clients (issue 13): idle connections cost
no thread, are closed after a timeout, and cannot lock a scrape out; requests are
bounded in size."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from tests.support.httpclient import recv_until_closed, status_codes
from tests.support.metrics import metrics_port_of
from tests.support.servers import start_child
from tests.support.site import Site
from zcserve.server.metrics import (
    METRICS_MAX_CONNECTIONS,
    METRICS_MAX_REQUEST,
    METRICS_TIMEOUT,
    MetricsEndpoint,
)

pytestmark = pytest.mark.timeout(120)

IDLE_CONNECTIONS = 200
THREADS_ALLOWED = 20
"""Threads the metrics process may gain while it holds the idle connections."""
SCRAPE_SECONDS = 1.0
"""A scrape must be answered within this while the idle connections are held."""
MARGIN = 3.0
"""Scheduling slack on a loaded machine, past the metrics timeout."""
PAGE = "# HELP test_metric A test.\ntest_metric 1\n"


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def scrape(port: int, request: bytes = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n") -> bytes:
    """The whole response to `request`, which must come within `SCRAPE_SECONDS`."""
    with socket.create_connection(("127.0.0.1", port), timeout=SCRAPE_SECONDS) as sock:
        sock.sendall(request)
        received, closed = recv_until_closed(sock, SCRAPE_SECONDS)
    assert closed, f"no complete answer within {SCRAPE_SECONDS:g}s: {received!r}"
    return received


def idle_connections(port: int, count: int, stack: ExitStack) -> list[socket.socket]:
    """`count` connections that send nothing, closed when `stack` closes."""
    sockets = []
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        sockets.append(sock)
    return sockets


@pytest.mark.parametrize(("workers", "loop"), [("1", "uvloop"), ("1", "asyncio"), ("2", "uvloop")])
def test_idle_connections_cost_no_thread_and_are_closed(
    site: Site, workers: str, loop: str
) -> None:
    """200 silent connections once meant 200 threads, kept for good, in the process
    serving metrics (the server on its loop, or the supervisor with workers)."""
    args = (site.root, "--workers", workers, "--loop", loop, "--metrics", "127.0.0.1:0")
    with start_child(*args) as child, ExitStack() as stack:
        port = metrics_port_of(child)
        before = threads_of(child.pid)
        idle = idle_connections(port, IDLE_CONNECTIONS, stack)
        started = time.monotonic()
        response = scrape(port)
        assert time.monotonic() - started < SCRAPE_SECONDS
        assert status_codes(response) == [200] and b"zcserve_requests_total" in response
        most = before
        for _ in range(20):  # threads, if any, were started as the connections came
            most = max(most, threads_of(child.pid))
            time.sleep(0.02)
        assert most - before < THREADS_ALLOWED, f"{before} threads, then {most}"
        # Every idle connection is closed within the timeout, none left open.
        for sock in idle:
            received, closed = recv_until_closed(sock, METRICS_TIMEOUT + MARGIN)
            assert closed and received == b"", "an idle metrics connection was kept"
        assert child.stop() == 0
    assert child.log() == "", "nothing is logged at the default level"


@contextmanager
def endpoint() -> Iterator[int]:
    """An in-process metrics endpoint on its own thread; yields its port."""
    served = MetricsEndpoint(("127.0.0.1", 0), lambda: PAGE).start()
    try:
        yield served.port
    finally:
        served.stop()


def test_a_silent_connection_is_closed_after_the_timeout() -> None:
    with endpoint() as port, socket.create_connection(("127.0.0.1", port)) as sock:
        opened = time.monotonic()
        received, closed = recv_until_closed(sock, METRICS_TIMEOUT + MARGIN)
        took = time.monotonic() - opened
    assert closed and received == b""
    assert METRICS_TIMEOUT - 0.1 <= took <= METRICS_TIMEOUT + MARGIN, took


def test_past_the_connection_cap_the_oldest_silent_one_makes_room() -> None:
    with endpoint() as port, ExitStack() as stack:
        idle = idle_connections(port, METRICS_MAX_CONNECTIONS + 5, stack)
        assert status_codes(scrape(port)) == [200]
        for sock in idle[:6]:  # the five over the cap, and one for the scrape
            received, closed = recv_until_closed(sock, SCRAPE_SECONDS)
            assert closed and received == b"", "the oldest silent connection was kept"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 200),
        (b"GET /?name=x HTTP/1.0\r\n\r\n", 200),  # the root and a query are fine
        (b"GET /metrics HTTP/1.1\n\n", 200),  # bare LF line ends
        (b"GET /other HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS ClientHello
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * METRICS_MAX_REQUEST, 431),  # endless head
    ],
)
def test_requests_are_answered_once_and_closed(request_bytes: bytes, status: int) -> None:
    with endpoint() as port:
        response = scrape(port, request_bytes)
    assert status_codes(response) == [status], response[:200]
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head + b"\r\n"
    if status == 200:
        assert body == PAGE.encode()
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head


def test_head_gets_no_body() -> None:
    with endpoint() as port:
        response = scrape(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_codes(head + b"\r\n") == [200] and body == b""
    assert f"Content-Length: {len(PAGE)}".encode() in head


def test_stop_without_start_returns_at_once() -> None:
    """A start-up that failed never started the endpoint; stopping it must not wait
    for a serving loop that never ran (the old `shutdown()` waited for ever)."""
    served = MetricsEndpoint(("127.0.0.1", 0), lambda: PAGE)
    started = time.monotonic()
    served.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
