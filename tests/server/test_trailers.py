"""Trailer fields after a chunked body get the head's byte limit: a trailer that
never ends is answered 431 and closed, and holds neither the loop nor memory."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import pytest

from tests.support.httpclient import get, status_codes
from tests.support.servers import start_server
from tests.support.site import LOOPS, Site
from tests.support.timing import wait_for
from zcserve.errors import HttpError
from zcserve.server.http import Limits, RequestParser

pytestmark = pytest.mark.timeout(60)

FLOOD_HEAD = (
    b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Flood: "
)
BLOCK = b"a" * 65536
FLOODERS = 3
ANSWER_WITHIN = 1.0
"""A normal GET must be answered within this, whatever the flooders do."""
FLOOD_FOR = 20.0
"""How long a flooder goes on if nothing stops it (the header timeout is longer)."""
CUT_WITHIN = 5.0
"""Each flooder must be answered or cut within this of its start."""


@pytest.mark.parametrize("piece", [1, 7, 8192, 100_000], ids=lambda n: f"feed-{n}")
def test_a_trailer_that_never_ends_is_431(piece: int) -> None:
    parser = RequestParser()
    data = FLOOD_HEAD + b"a" * 60_000
    got = []
    for start in range(0, len(data), piece):
        got += parser.feed(data[start : start + piece])
    assert len(got) == 1 and isinstance(got[0], HttpError) and got[0].status == 431, got


def test_many_trailer_lines_count_against_the_header_limit() -> None:
    limits = Limits(max_header_bytes=1000)
    lines = b"".join(b"X-T%d: %s\r\n" % (n, b"v" * 50) for n in range(40))
    got = RequestParser(limits).feed(FLOOD_HEAD[: -len(b"X-Flood: ")] + lines + b"\r\n")
    assert len(got) == 1 and isinstance(got[0], HttpError) and got[0].status == 431, got


def test_a_long_chunked_body_is_not_a_trailer() -> None:
    """Chunk data without a line end must not count as an unfinished trailer line."""
    body = b"".join(b"%x\r\n%s\r\n" % (size, b"x" * size) for size in (1, 9000, 20000, 30000))
    raw = b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    raw += b"0\r\nX-End: 1\r\n\r\n"
    for piece in (3, 8192, len(raw)):
        parser = RequestParser()
        got = []
        for start in range(0, len(raw), piece):
            got += parser.feed(raw[start : start + piece])
        assert len(got) == 1 and not isinstance(got[0], HttpError), (piece, got)


@dataclass
class Flooded:
    sent: int = 0
    received: bytes = b""
    ended: float | None = None
    """When the server answered or cut the connection (monotonic)."""


def _flood(port: int, result: Flooded, stop: threading.Event) -> None:
    """Send a trailer line that never ends, as fast as the server takes it, until the
    server answers or cuts the connection (or `FLOOD_FOR` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setblocking(False)
        sock.sendall(FLOOD_HEAD)
        result.sent += len(FLOOD_HEAD)
        started = time.monotonic()
        while not stop.is_set() and time.monotonic() - started < FLOOD_FOR:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                result.received += data
                break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                result.sent += sock.send(BLOCK)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
        else:
            return
        result.ended = time.monotonic()


@pytest.mark.serial
@pytest.mark.parametrize("loop", LOOPS)
def test_endless_trailers_neither_hold_the_loop_nor_stay(site: Site, loop: str) -> None:
    """Three clients stream endless trailers; a normal GET is answered within a
    second all along, and each flooder is answered 431 or cut soon."""
    with start_server(root=site.root, loop=loop, header_timeout=60.0) as server:
        results = [Flooded() for _ in range(FLOODERS)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=_flood, args=(server.port, r, stop), daemon=True)
            for r in results
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            wait_for(
                lambda: all(r.sent > 256 * 1024 or r.ended for r in results),
                10.0,
                "every flooder under way",
            )
            slowest = 0.0
            for _ in range(5):
                asked = time.monotonic()
                assert get(server.port, "/hello.txt").body == b"hello\n"
                slowest = max(slowest, time.monotonic() - asked)
            assert slowest < ANSWER_WITHIN, f"a GET waited {slowest:.2f}s beside the flooders"
            wait_for(lambda: all(r.ended for r in results), CUT_WITHIN, "every flooder cut")
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    for result in results:
        assert result.ended is not None and result.ended - started < CUT_WITHIN
        statuses = status_codes(result.received)
        assert statuses in ([], [431]), (statuses, result.received[:200])
