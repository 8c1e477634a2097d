"""Request validation (RFC 9112) and `Expect: 100-continue` (RFC 9110 10.1.1):
first on bytes through the parser, then against a live server on both loops."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import connect, recv_until_closed, status_codes
from tests.support.servers import start_server
from tests.support.site import DEFAULT_STRATEGY, LOOPS, Live, Site
from tests.support.timing import DEADLINE
from tests.support.tls import Transport
from zcserve.errors import HttpError
from zcserve.server.http import MAX_BODY, Request, RequestParser

pytestmark = pytest.mark.timeout(60)

HELLO = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
EXPECT_WAIT = 1.0
"""curl waits this long for an answer to `Expect: 100-continue` before it sends the
body anyway: an answer must come well before it."""

INVALID = [
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Host lines (9112 3.2)
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nhost: a\r\n\r\n", 400),  # the same, repeated
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),  # a space in Host
    (b"GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n", 400),  # userinfo in Host
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),  # a path in Host
    (b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400),  # a port that is not digits
    (b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", 400),  # HTTP/1.1 without Host
    # Only plain chunked is understood (9112 6.1): 501.
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    ),  # the same codings on two lines
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),  # 1.0 has no TE
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n", 413),  # past MAX_BODY
]
IDS = [
    "two-hosts",
    "host-repeated-later",
    "host-space",
    "host-at",
    "host-slash",
    "host-bad-port",
    "no-host",
    "te-gzip-chunked",
    "te-two-lines",
    "te-in-http10",
    "length-past-max",
]

VALID_HOSTS = [b"example.com", b"example.com:8080", b"127.0.0.1:1", b"[::1]:80", b"", b"a-b_c~d"]


@pytest.mark.parametrize(("raw", "status"), INVALID, ids=IDS)
def test_invalid_framing_maps_to_a_status(raw: bytes, status: int) -> None:
    got = RequestParser().feed(raw)
    assert got and isinstance(got[-1], HttpError), got
    assert got[-1].status == status, got[-1]


@pytest.mark.parametrize("host", VALID_HOSTS, ids=lambda h: h.decode() or "empty")
def test_valid_hosts_pass(host: bytes) -> None:
    [request] = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert isinstance(request, Request) and request.headers["host"] == host.decode()


def test_http10_without_host_and_a_plain_chunked_body_pass() -> None:
    got = RequestParser().feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nHost: not-a-second-host\r\n\r\n"
        b"GET / HTTP/1.0\r\n\r\n"
    )
    assert [type(r) for r in got] == [Request, Request], got
    first = got[0]
    assert isinstance(first, Request)
    assert "x-trailer" not in first.headers, "trailer fields must not join the head's"


def test_expect_with_a_body_completes_the_request_at_once() -> None:
    parser = RequestParser()
    [request] = parser.feed(
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    )
    assert isinstance(request, Request) and request.path == b"/a"
    assert not request.keep_alive, "the unread body makes keep-alive unsafe"
    assert parser.failed and parser.in_head, "what follows is the body: drained, not parsed"


def test_expect_without_a_body_changes_nothing() -> None:
    got = RequestParser().feed(b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n" * 2)
    assert [r.keep_alive for r in got if isinstance(r, Request)] == [True, True], got


def test_large_body_limit_is_the_constant() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % MAX_BODY
    assert RequestParser().feed(raw) == []  # announced within the limit: read on


# Against a live server -------------------------------------------------------------------


@pytest.fixture(scope="module", params=LOOPS, ids=lambda loop: f"default-{loop}")
def default_live(
    request: pytest.FixtureRequest, site: Site, transport: Transport
) -> Iterator[Live]:
    """conftest's `default_live` (the default strategy on each loop), over `transport`."""
    loop: str = request.param
    options = transport.options()
    thread = start_server(root=site.root, strategy=DEFAULT_STRATEGY, loop=loop, **options)
    yield Live(thread.port, DEFAULT_STRATEGY, loop, thread)
    thread.stop()


@pytest.mark.parametrize(("raw", "status"), INVALID, ids=IDS)
def test_invalid_framing_is_answered_then_closed(
    transport: Transport, default_live: Live, raw: bytes, status: int
) -> None:
    with connect(default_live.port, transport=transport) as sock:
        sock.sendall(raw)
        received, closed = recv_until_closed(sock, DEADLINE)
    assert status_codes(received) == [status] and closed, received[:300]


def _answer_to_expect(transport: Transport, port: int, head: bytes) -> tuple[bytes, float]:
    """Send `head` (announcing a body) and never the body: the whole answer, up to
    the server's close, and how long it took (the TLS handshake left out)."""
    with connect(port, transport=transport) as sock:
        started = time.monotonic()
        sock.sendall(head)
        received, closed = recv_until_closed(sock, DEADLINE)
        took = time.monotonic() - started
    assert closed, f"no close after {received[:200]!r}"
    return received, took


@pytest.mark.serial
@pytest.mark.parametrize(
    ("head", "status", "body"),
    [
        (b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n", 200, b"hello\n"),
        (b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n", 405, None),
        (b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n", 405, None),
        (b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n", 413, None),
    ],
    ids=["get", "post", "post-chunked", "too-large"],
)
def test_expect_100_continue_gets_the_final_status_at_once(
    transport: Transport, default_live: Live, head: bytes, status: int, body: bytes | None
) -> None:
    expect = head + b"Expect: 100-continue\r\n\r\n"
    received, took = _answer_to_expect(transport, default_live.port, expect)
    assert status_codes(received) == [status], received[:300]
    assert b"Connection: close" in received.partition(b"\r\n\r\n")[0]
    if body is not None:
        assert received.endswith(b"\r\n\r\n" + body)
    assert took < EXPECT_WAIT / 2, f"answered after {took:.2f}s: the client waited"


def test_body_sent_after_the_final_answer_is_drained(
    transport: Transport, default_live: Live
) -> None:
    """A client that sends its body anyway, after the answer, gets no reset."""
    with connect(default_live.port, transport=transport) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\nExpect: 100-continue\r\n\r\n"
        )
        first = sock.recv(4096)
        sock.sendall(b"x" * 60000)
        rest, closed = recv_until_closed(sock, DEADLINE)
    assert status_codes(first + rest) == [405] and closed


@pytest.mark.serial
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_expect_post_gets_405_without_waiting(
    transport: Transport, default_live: Live, tmp_path: Path
) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"u" * 4096)
    if transport.certificate is None:
        scheme, trust = "http", []
    else:
        scheme, trust = "https", ["--cacert", transport.certificate.cert]
    started = time.monotonic()
    result = subprocess.run(
        ["curl", "-sS", *trust, "-o", "/dev/null", "-w", "%{http_code}",
         "-H", "Expect: 100-continue", "--data-binary", f"@{upload}",
         f"{scheme}://127.0.0.1:{default_live.port}/hello.txt"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    took = time.monotonic() - started
    assert result.stdout == "405", (result.stdout, result.stderr)
    assert took < EXPECT_WAIT, f"curl took {took:.2f}s: it waited out its expect timeout"


def test_valid_host_keeps_the_connection_open(transport: Transport, default_live: Live) -> None:
    with connect(default_live.port, transport=transport) as sock, sock.makefile("rb") as reader:
        for host in (b"localhost", b"127.0.0.1:8080", b"[::1]"):
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            line = reader.readline()
            assert line.startswith(b"HTTP/1.1 200 "), (host, line)
            while reader.readline() not in (b"\r\n", b""):
                pass
            assert reader.read(6) == b"hello\n"


def test_tcp_reset_never_hides_an_error(transport: Transport, default_live: Live) -> None:
    """The 400 for a second Host arrives though the request goes on after it."""
    with connect(default_live.port, transport=transport, timeout=DEADLINE) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + HELLO * 50)
        received, closed = recv_until_closed(sock, DEADLINE)
    assert status_codes(received) == [400] and closed
