"""Multi-range: `Range: bytes=0-9,100-109` gets 206 multipart/byteranges, each part
moved by the copy strategy; overlapping and adjacent ranges coalesced; more than
--max-ranges gets the whole file."""

from __future__ import annotations

import email.parser
import email.policy
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.httpclient import Response, exchange, get, read_response
from tests.support.servers import ServerThread, start_server
from tests.support.site import LOOPS, Live, Site
from tests.support.tls import Certificate
from zcserve.server.files import FULL, UNSATISFIABLE, ByteRange, RangeKind, parse_ranges

BIG = 24 * 1024 * 1024


def partial(start: int, end: int) -> ByteRange:
    return ByteRange(RangeKind.PARTIAL, start, end)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9,100-109", 1000, [partial(0, 9), partial(100, 109)]),
        # the client's order is kept (RFC 9110 15.3.7.2)
        ("bytes=100-109,0-9", 1000, [partial(100, 109), partial(0, 9)]),
        ("bytes=0-9,5-19", 1000, [partial(0, 19)]),  # overlapping
        ("bytes=0-9,10-19", 1000, [partial(0, 19)]),  # adjacent
        ("bytes=0-9,11-19", 1000, [partial(0, 9), partial(11, 19)]),  # a gap stays
        ("bytes=500-,0-0,-10", 1000, [partial(500, 999), partial(0, 0)]),  # suffix inside
        ("bytes=0-99,10-20,30-40,50-60", 1000, [partial(0, 99)]),  # all in one
        ("bytes=0-0,0-0,0-0", 1000, [partial(0, 0)]),  # repeats cost nothing
        ("bytes=0-9, 2000-3000 ,20-29", 1000, [partial(0, 9), partial(20, 29)]),
        ("bytes=2000-3000,5000-", 1000, [UNSATISFIABLE]),
        ("bytes=0-9,x-y", 1000, [FULL]),  # one invalid range: the header is ignored
        ("bytes=9-0,20-29", 1000, [FULL]),
        ("items=0-9,20-29", 1000, [FULL]),
        ("bytes=0-1,2-3", 0, [UNSATISFIABLE]),  # an empty file, as for one range
        ("bytes=-5,-3", 0, [FULL]),  # satisfiable, yet no part can say "0 bytes"
        ("bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(16)), 1000,
         [partial(i * 10, i * 10) for i in range(16)]),
        ("bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(17)), 1000, [FULL]),
    ],
)  # fmt: skip
def test_parse_ranges(header: str, size: int, expected: list[ByteRange]) -> None:
    assert parse_ranges(header, size) == expected


def multipart_parts(response: Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/byteranges body, parsed strictly byte by byte."""
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", response.headers["content-type"])
    assert match, response.headers
    delimiter = b"--" + match[1].encode()
    body = response.body
    assert len(body) == int(response.headers["content-length"])
    assert body.startswith(delimiter + b"\r\n") and body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2 : -len(delimiter) - 6]
    parts = []
    for chunk in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, _, data = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        parts.append((fields, data))
    return parts


def assert_parts(response: Response, content: bytes, ranges: list[tuple[int, int]]) -> None:
    assert response.status == 206, response
    parts = multipart_parts(response)
    assert [fields["Content-Range"] for fields, _ in parts] == [
        f"bytes {start}-{end}/{len(content)}" for start, end in ranges
    ]
    for (_, data), (start, end) in zip(parts, ranges, strict=True):
        assert data == content[start : end + 1], (start, end)


def test_parts_moved_by_every_strategy(live: Live, site: Site) -> None:
    content = site.read("big.bin")
    ranges = [(0, 9), (100, 109), (1_000_000, 3_999_999), (BIG - 100, BIG - 1)]
    header = "bytes=" + ",".join(f"{a}-{b}" for a, b in ranges)
    response = get(live.port, "/big.bin", {"Range": header})
    assert_parts(response, content, ranges)
    fields = multipart_parts(response)[0][0]
    assert fields["Content-Type"] == "application/octet-stream"
    assert response.headers["etag"] and response.headers["accept-ranges"] == "bytes"


def test_pipelined_after_a_multipart_body(live: Live, site: Site) -> None:
    """The framing is exact: the next response on the connection starts right after."""
    raw = (
        b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0,-1,30000-30100\r\n\r\n"
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first, second = exchange(live.port, raw, count=2)
    content = site.read("64k1.bin")
    assert_parts(first, content, [(0, 0), (len(content) - 1, len(content) - 1), (30000, 30100)])
    assert second.status == 200 and second.body == b"hello\n"


@pytest.mark.parametrize("loop", LOOPS)
def test_coalesced_into_one_is_a_plain_206(site: Site, loop: str) -> None:
    server = start_server(root=site.root, loop=loop)
    try:
        response = get(server.port, "/64k1.bin", {"Range": "bytes=0-9,5-19,20-29"})
    finally:
        server.stop()
    assert response.status == 206
    assert response.headers["content-range"] == f"bytes 0-29/{64 * 1024 + 1}"
    assert response.body == site.read("64k1.bin")[:30]


@pytest.fixture(scope="module", params=LOOPS)
def default_server(request: pytest.FixtureRequest, site: Site) -> Iterator[ServerThread]:
    server = start_server(root=site.root, loop=request.param)
    yield server
    server.stop()


def test_unsatisfiable_ranges_are_dropped_or_416(default_server: ServerThread, site: Site) -> None:
    content = site.read("64k1.bin")
    some = get(default_server.port, "/64k1.bin", {"Range": "bytes=0-1,999999-,10-11"})
    assert_parts(some, content, [(0, 1), (10, 11)])
    none = get(default_server.port, "/64k1.bin", {"Range": "bytes=999999-,888888-"})
    assert none.status == 416 and none.headers["content-range"] == f"bytes */{len(content)}"


def test_more_than_max_ranges_gets_the_whole_file(default_server: ServerThread, site: Site) -> None:
    header = "bytes=" + ",".join(f"{i * 100}-{i * 100 + 1}" for i in range(17))
    response = get(default_server.port, "/64k1.bin", {"Range": header})
    assert response.status == 200 and response.sha256 == site.hashes["64k1.bin"]
    sixteen = "bytes=" + ",".join(f"{i * 100}-{i * 100 + 1}" for i in range(16))
    assert get(default_server.port, "/64k1.bin", {"Range": sixteen}).status == 206


def test_head_and_if_range(default_server: ServerThread, site: Site) -> None:
    header = {"Range": "bytes=0-9,100-109"}
    full = get(default_server.port, "/64k1.bin", header)
    head = get(default_server.port, "/64k1.bin", header, method="HEAD")
    assert head.status == 206 and head.body == b""
    assert head.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert head.headers["content-length"] == full.headers["content-length"]
    stale = get(default_server.port, "/64k1.bin", {**header, "If-Range": '"old"'})
    assert stale.status == 200 and stale.sha256 == site.hashes["64k1.bin"]
    fresh = get(default_server.port, "/64k1.bin", {**header, "If-Range": full.headers["etag"]})
    assert fresh.status == 206


def test_python_email_parser_reads_the_parts(default_server: ServerThread, site: Site) -> None:
    response = get(default_server.port, "/64k1.bin", {"Range": "bytes=0-99,200-299"})
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.body
    )
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert [part["Content-Range"] for part in parts] == [
        f"bytes 0-99/{64 * 1024 + 1}",
        f"bytes 200-299/{64 * 1024 + 1}",
    ]


@pytest.mark.parametrize("loop", LOOPS)
def test_max_ranges_flag(site: Site, loop: str) -> None:
    server = start_server(root=site.root, loop=loop, max_ranges=2)
    try:
        two = get(server.port, "/64k1.bin", {"Range": "bytes=0-0,10-10"})
        three = get(server.port, "/64k1.bin", {"Range": "bytes=0-0,10-10,20-20"})
    finally:
        server.stop()
    assert two.status == 206 and three.status == 200


@pytest.mark.parametrize("strategy", ["auto", "fallback", "readwrite"])
@pytest.mark.parametrize("loop", LOOPS)
def test_multipart_over_tls(site: Site, certificate: Certificate, loop: str, strategy: str) -> None:
    server = start_server(
        root=site.root,
        loop=loop,
        strategy=strategy,
        **certificate.options(),
    )
    context = certificate.client_context()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as plain:
            with context.wrap_socket(plain, server_hostname="localhost") as tls:
                tls.sendall(
                    b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                    b"Range: bytes=0-99,5000000-6999999\r\n\r\n"
                )
                with tls.makefile("rb") as reader:
                    response = read_response(reader)
    finally:
        server.stop()
    assert response is not None
    assert_parts(response, site.read("big.bin"), [(0, 99), (5_000_000, 6_999_999)])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_gets_the_parts(default_server: ServerThread, site: Site) -> None:
    result = subprocess.run(
        ["curl", "-sS", "-r", "0-9,100-109", "-D", "-",
         f"http://127.0.0.1:{default_server.port}/64k1.bin"],
        capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    content = site.read("64k1.bin")
    assert content[:10] in body and content[100:110] in body
    assert body.endswith(b"--\r\n")
