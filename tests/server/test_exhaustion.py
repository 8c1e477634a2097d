"""A server short of something: descriptors for a body's pipe or reopened file, a
disk for its access log, time to finish before it exits. Each costs what it must
(a 503, log lines, the connection after its response), never a response cut short."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
from pathlib import Path

import pytest

from tests.support.httpclient import connect, get, read_response, recv_until_closed, status_codes
from tests.support.metrics import scrape
from tests.support.servers import start_child
from tests.support.site import LOOPS, SIZES, Site
from tests.support.timing import DEADLINE, wait_for
from tests.support.tls import Transport, skip_unless_carried
from zcserve.server.strategies import STRATEGY_NAMES

pytestmark = pytest.mark.timeout(120)

NOFILE = 64
"""The child's descriptor limit: small enough to run out of with a few clients."""


# Out of descriptors after the file is open ---------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_out_of_descriptors_for_the_body_is_503_never_a_short_200(
    transport: Transport, site: Site, tmp_path: Path, strategy: str, loop: str
) -> None:
    """The file comes from the open-file cache (no descriptor needed), but the body
    needs one more (readwrite reopens the file, splice takes a pipe pair): with
    none left, the answer is a 503, or a complete 200, never a 200 whose body
    never comes."""
    skip_unless_carried(transport, strategy)
    size = SIZES["64k1.bin"]
    args = ("--strategy", strategy, "--loop", loop, *transport.flags())
    with start_child(site.root, *args, nofile=NOFILE, log_dir=tmp_path) as child:
        keeper = connect(child.port, transport=transport)
        hogs: list[socket.socket] = []
        try:
            with keeper.makefile("rb") as reader:
                # A HEAD opens the file into the cache without taking a body's pipe.
                keeper.sendall(b"HEAD /64k1.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                head = read_response(reader, head=True)
                assert head is not None and head.status == 200
                # TCP only, over either transport: a hog holds a descriptor and says
                # nothing (a TLS handshake would wait for an accept that never comes).
                hogs = [connect(child.port) for _ in range(2 * NOFILE)]
                wait_for(lambda: "backing off" in child.log(), DEADLINE, "descriptors used up")
                keeper.sendall(b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                keeper.settimeout(DEADLINE)
                try:
                    response = read_response(reader)
                except (AssertionError, ConnectionError, TimeoutError) as exc:
                    raise AssertionError(f"no whole response: {exc!r}") from None
            assert response is not None, "closed without an answer"
            assert response.status in (200, 503), response.status
            if response.status == 200:
                assert len(response.body) == size, (
                    f"a 200 with {len(response.body)} of {size} body bytes"
                )
                assert response.sha256 == site.hashes["64k1.bin"]
        finally:
            keeper.close()
            for sock in hogs:
                sock.close()
        assert get(child.port, "/64k1.bin", transport=transport).sha256 == site.hashes["64k1.bin"]
        assert child.stop() == 0
    assert "Traceback" not in child.log()


# An access log on a full disk -----------------------------------------------------------------

LOST_LINE = re.compile(r"access log: cannot write")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_full_disk_costs_log_lines_never_responses(
    transport: Transport, site: Site, tmp_path: Path, loop: str
) -> None:
    args = ("--loop", loop, "--access-log", "/dev/full", "--metrics", "127.0.0.1:0")
    with start_child(site.root, *args, *transport.flags(), log_dir=tmp_path) as child:
        pipelined = (
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /no-such-file HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        with connect(child.port, transport=transport) as sock:
            sock.sendall(pipelined)
            received, closed = recv_until_closed(sock, DEADLINE)
        assert status_codes(received) == [200, 404, 200] and closed, received[-300:]
        assert received.endswith(b"\r\n\r\nhello\n")
        with connect(child.port, transport=transport) as sock:  # an error answer is lost too
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            received, closed = recv_until_closed(sock, DEADLINE)
        assert status_codes(received) == [400] and closed
        metrics_url = child.metrics_url
        assert metrics_url is not None
        wait_for(
            lambda: scrape(metrics_url).get("zcserve_access_log_errors_total", 0) >= 4,
            DEADLINE,
            "every lost line counted",
        )
        assert child.stop(signal.SIGTERM) == 0
    log = child.log()
    assert len(LOST_LINE.findall(log)) == 1, log
    assert "Traceback" not in log, log


# Shutdown while a pipelining client downloads ---------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_shutdown_mid_pipeline_delivers_the_response_in_flight(
    transport: Transport, site: Site, tmp_path: Path, strategy: str, loop: str
) -> None:
    """SIGTERM while a client that pipelined a second request downloads 24 MiB: the
    download arrives whole (the pipelined bytes do not turn the close into a
    reset), the second request is not answered, and the exit is 0."""
    skip_unless_carried(transport, strategy)
    size = SIZES["big.bin"]
    args = ("--strategy", strategy, "--loop", loop, *transport.flags())
    with start_child(site.root, *args, log_dir=tmp_path) as child:
        with connect(child.port, transport=transport, timeout=20, rcvbuf=64 * 1024) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            first = sock.recv(64 * 1024)
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")  # waits unread
            child.proc.send_signal(signal.SIGTERM)
            rest, closed = recv_until_closed(sock, 30.0)
        assert child.proc.wait(DEADLINE) == 0
    head, _, body = (first + rest).partition(b"\r\n\r\n")
    assert closed and head.startswith(b"HTTP/1.1 200 ")
    assert len(body) >= size, f"the connection ended after {len(body)} of {size} body bytes"
    assert hashlib.sha256(body[:size]).hexdigest() == site.hashes["big.bin"]
    assert status_codes(body[size:]) in ([], [200]), body[size : size + 200]
    assert "Traceback" not in child.log()
