"""Hostile input, generated: random bytes and mutations of valid requests, fed to the
parser and sent to a live server. Every connection gets a 4xx (or 501/505) or a
valid answer and is closed; the server stays up and its descriptors return.

Repeatable in CI: `derandomize=True` and no example database. `make test` runs a
couple of hundred examples per test; `make soak` runs 5,000 to 10,000."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.httpclient import get, recv_until_closed, status_codes
from tests.support.parsed import summary
from tests.support.servers import start_server
from tests.support.site import LOOPS, Site
from tests.support.stress import open_fds, settled_fds
from tests.support.timing import wait_for
from zcserve.errors import HttpError
from zcserve.server.http import Limits, Request, RequestParser

FAST_EXAMPLES = 200
SOAK_EXAMPLES = 5000

VALID = [
    b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /64k1.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n",
    b"GET /with%20index/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b'GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: "x"\r\n\r\n'
    b"GET /one.bin?q=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET http://t/page.html HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
]
"""Well-formed requests the mutations start from (pipelined, HTTP/1.0, absolute-form)."""

TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\xff",
    b"%",
    b"%2e%2e/",
    b"/../",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"Host: x\r\n",
    b"\r\n\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: h2c\r\nConnection: Upgrade\r\n",
    b"Range: bytes=9999999999999999999-\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n",
    b"a" * 9000,  # past the 8 KiB target limit
    b"X-A: 1\r\n" * 120,  # past the 100-header limit
]
"""Bytes that parsers are known to trip on, spliced in by the mutations."""

# 501 and 505 are the only 5xx a request can earn; 500 would be a server bug.
FOR_GARBAGE = set(range(400, 500)) | {501, 505}
FOR_MUTANTS = FOR_GARBAGE | {200, 206, 301, 304, 416}


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "token", "repeat"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        else:
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end] * draw(st.integers(1, 4))
    return bytes(data)


garbage = st.binary(max_size=4096)


def _check_parser(data: bytes, split: int, limits: Limits) -> None:
    whole = RequestParser(limits).feed(data)
    for index, item in enumerate(whole):
        if isinstance(item, HttpError):
            assert item.status in FOR_GARBAGE, item
            assert index == len(whole) - 1, "nothing may follow an error"
        else:
            assert isinstance(item, Request) and item.method and item.version in ("1.0", "1.1")
    # Bytes arriving in two pieces give the same requests and statuses.
    parser = RequestParser(limits)
    pieces = parser.feed(data[:split]) + parser.feed(data[split:])
    assert [summary(item) for item in pieces] == [summary(item) for item in whole]


def _fuzz_parser(examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True)
    @given(data=st.one_of(garbage, mutants()), cut=st.floats(0, 1))
    def check(data: bytes, cut: float) -> None:
        _check_parser(data, int(len(data) * cut), Limits())

    check()


REPEATED = VALID[0]
OWES_A_BODY = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n"
PIECES = [
    REPEATED, REPEATED, REPEATED[:1], REPEATED[:9], REPEATED[9:], b"\r\n", b"\r\n\r\n",
    VALID[2], OWES_A_BODY, REPEATED + OWES_A_BODY,
]  # fmt: skip
"""Feeds that make a keep-alive client's repeat, and the partial or stray bytes, or
an owed body, that must keep the parser from taking a repeat for one."""


def _fuzz_repeats(examples: int) -> None:
    """The parser's repeat shortcut never changes what is parsed: feeds in any
    order, repeats among them, give what all their bytes give in one feed (where
    the shortcut cannot act)."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True)
    @given(feeds=st.lists(st.one_of(st.sampled_from(PIECES), mutants()), max_size=8))
    def check(feeds: list[bytes]) -> None:
        parser = RequestParser()
        pieces = [item for data in feeds for item in parser.feed(data)]
        whole = RequestParser().feed(b"".join(feeds))
        assert [summary(item) for item in pieces] == [summary(item) for item in whole]

    check()


def _fuzz_server(site: Site, loop: str, examples: int) -> None:
    server = start_server(root=site.root, loop=loop, header_timeout=5.0)
    try:
        # Warm up without caching a file: the open-file cache closes idle descriptors
        # after 2 s, so the count comes back to exactly this once fuzzing stops.
        assert get(server.port, "/no-such-file").status == 404
        base = settled_fds(server.port)

        def exchange(data: bytes, allowed: set[int]) -> None:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                try:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server answered and reset before reading it all
                received, closed = recv_until_closed(sock, 5.0)
            assert closed, f"connection left open after {data[:200]!r}"
            statuses = status_codes(received)
            assert set(statuses) <= allowed, (statuses, data[:200])
            assert received.startswith(b"HTTP/1.1 ") or received == b"", received[:200]

        fuzz: Callable[[], None]
        fuzz_settings = settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        )

        @fuzz_settings
        @given(data=garbage)
        def random_bytes(data: bytes) -> None:
            exchange(data, FOR_GARBAGE)

        @fuzz_settings
        @given(data=mutants())
        def mutated(data: bytes) -> None:
            exchange(data, FOR_MUTANTS)

        for fuzz in (random_bytes, mutated):
            fuzz()
        assert get(server.port, "/hello.txt").body == b"hello\n", "server down after fuzzing"
        wait_for(lambda: open_fds() == base, 10.0, "descriptors back to the start")
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_fuzz_parser() -> None:
    _fuzz_parser(FAST_EXAMPLES * 5)


@pytest.mark.timeout(120)
def test_fuzz_parser_repeats() -> None:
    _fuzz_repeats(FAST_EXAMPLES * 5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", LOOPS)
def test_fuzz_server(site: Site, loop: str) -> None:
    _fuzz_server(site, loop, FAST_EXAMPLES)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_fuzz_parser_soak() -> None:
    _fuzz_parser(SOAK_EXAMPLES * 2)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_fuzz_parser_repeats_soak() -> None:
    _fuzz_repeats(SOAK_EXAMPLES * 2)


@pytest.mark.soak
@pytest.mark.timeout(900)
@pytest.mark.parametrize("loop", LOOPS)
def test_fuzz_server_soak(site: Site, loop: str) -> None:
    _fuzz_server(site, loop, SOAK_EXAMPLES)
