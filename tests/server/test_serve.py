"""Functional tests of `zcserve serve` over real sockets.

Tests that move body bytes (whole files, ranges, HEAD, keep-alive, pipelining,
aborts, offsets past 4 GiB) run on every strategy x loop (`live`). Status and
header semantics are decided before any copy strategy runs: they run against the
default server on each loop (`default_live`), plus one smoke pass per strategy."""

from __future__ import annotations

import hashlib
import socket

import pytest

from tests.support.httpclient import connect, exchange, get, one_connection, read_response
from tests.support.site import SIZES, SPARSE_SIZE, SPARSE_TAIL, Live, Site

RANGE_FILE_SIZE = SIZES["64k1.bin"]


@pytest.mark.parametrize("name", list(SIZES))
def test_full_get_is_byte_exact(live: Live, site: Site, name: str) -> None:
    response = get(live.port, f"/{name}")
    assert response.status == 200
    assert int(response.headers["content-length"]) == SIZES[name]
    assert hashlib.sha256(response.body).hexdigest() == site.hashes[name]


def test_headers(default_live: Live, site: Site) -> None:
    response = get(default_live.port, "/hello.txt")
    headers = response.headers
    assert response.body == b"hello\n"
    assert headers["content-type"].startswith("text/plain")
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
    assert headers["last-modified"].endswith("GMT")
    assert headers["date"].endswith("GMT")
    assert headers["server"] == "zcserve"
    assert get(default_live.port, "/one.bin").headers["content-type"] == "application/octet-stream"


def test_head_sends_no_body(live: Live) -> None:
    with connect(live.port) as sock, sock.makefile("rb") as reader:
        sock.sendall(
            b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        head = read_response(reader, head=True)
        after = read_response(reader)
    assert head is not None and head.status == 200
    assert head.headers["content-length"] == str(SIZES["big.bin"])
    assert after is not None and after.body == b"hello\n", "HEAD leaked body bytes"


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-0", 0, 0),  # first byte
        ("bytes=100-199", 100, 199),  # a middle slice
        ("bytes=65000-", 65000, 64 * 1024),  # open-ended to the last byte
        ("bytes=-10", 64 * 1024 + 1 - 10, 64 * 1024),  # suffix
        ("bytes=65530-99999999", 65530, 64 * 1024),  # end past EOF is clipped
        ("bytes=-999999", 0, 64 * 1024),  # suffix longer than the file
    ],
)
def test_single_range(live: Live, site: Site, spec: str, start: int, end: int) -> None:
    response = get(live.port, "/64k1.bin", {"Range": spec})
    assert response.status == 206, spec
    assert response.headers["content-range"] == f"bytes {start}-{end}/{64 * 1024 + 1}"
    assert response.body == site.read("64k1.bin")[start : end + 1]


@pytest.mark.parametrize("spec", ["bytes=70000-", "bytes=65537-65540", "bytes=-0"])
def test_unsatisfiable_range_is_416(default_live: Live, spec: str) -> None:
    response = get(default_live.port, "/64k1.bin", {"Range": spec})
    assert response.status == 416, spec
    assert response.headers["content-range"] == f"bytes */{64 * 1024 + 1}"


@pytest.mark.parametrize("spec", ["bytes=0-1,x-y", "items=0-1", "bytes=5-2", "bytes=x-y"])
def test_invalid_range_gives_whole_file(default_live: Live, site: Site, spec: str) -> None:
    response = get(default_live.port, "/64k1.bin", {"Range": spec})
    assert response.status == 200, spec
    assert response.body == site.read("64k1.bin")


def test_if_range(default_live: Live, site: Site) -> None:
    port, data = default_live.port, site.read("64k1.bin")
    first = get(port, "/64k1.bin")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    for validator in (etag, modified):
        ranged = get(port, "/64k1.bin", {"Range": "bytes=0-9", "If-Range": validator})
        assert ranged.status == 206, validator
        assert ranged.headers["content-range"] == f"bytes 0-9/{RANGE_FILE_SIZE}"
        assert ranged.body == data[:10], validator
    stale = get(port, "/64k1.bin", {"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status == 200 and stale.body == data
    weak = get(port, "/64k1.bin", {"Range": "bytes=0-9", "If-Range": "W/" + etag})
    assert weak.status == 200, "a weak validator must not satisfy If-Range"
    assert weak.body == data and "content-range" not in weak.headers


def test_conditional_get(default_live: Live, site: Site) -> None:
    port = default_live.port
    first = get(port, "/hello.txt")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    old = "Mon, 01 Jan 1990 00:00:00 GMT"
    cases: list[tuple[dict[str, str], int]] = [
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": f'"x", W/{etag}'}, 304),  # weak comparison
        ({"If-None-Match": "*"}, 304),
        ({"If-Modified-Since": modified}, 304),
        ({"If-Modified-Since": old}, 200),
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
        ({"If-None-Match": '"nope"', "If-Modified-Since": modified}, 200),
    ]
    # On one connection, each followed by a plain GET: a 304 that sent body
    # bytes would garble the response after it.
    requests = [
        r for headers, _ in cases for r in (("GET", "/hello.txt", headers), ("GET", "/one.bin", {}))
    ]
    responses = one_connection(port, requests)
    for (headers, status), got, after in zip(cases, responses[::2], responses[1::2], strict=True):
        assert got.status == status, headers
        if status == 304:
            assert got.headers["etag"] == etag, headers
        else:
            assert got.body == b"hello\n", headers
        assert after.status == 200 and after.body == site.read("one.bin"), headers


def test_keep_alive_serves_several_requests(live: Live, site: Site) -> None:
    with connect(live.port) as sock, sock.makefile("rb") as reader:
        for name in ("hello.txt", "64k1.bin", "one.bin", "empty.bin", "hello.txt"):
            sock.sendall(f"GET /{name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            response = read_response(reader)
            assert response is not None and response.status == 200
            assert response.body == site.read(name)
            assert response.headers.get("connection") != "close"


def test_pipelined_requests_answered_in_order(live: Live, site: Site) -> None:
    names = ["64k1.bin", "hello.txt", "one.bin"]
    raw = b"".join(f"GET /{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for n in names)
    responses = exchange(live.port, raw, count=3)
    assert [r.body for r in responses] == [site.read(n) for n in names]


def test_connection_close_and_http10(default_live: Live) -> None:
    with connect(default_live.port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = read_response(reader)
        assert response is not None and response.headers["connection"] == "close"
        assert reader.read() == b"", "server kept the connection open"
    with connect(default_live.port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        assert read_response(reader) is not None
        assert reader.read() == b"", "HTTP/1.0 without keep-alive must close"
    with connect(default_live.port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        first, second = read_response(reader), read_response(reader)
        assert first is not None and first.headers["connection"] == "keep-alive"
        assert second is not None and second.body == b"hello\n"


def test_errors(default_live: Live) -> None:
    port = default_live.port
    assert get(port, "/missing.txt").status == 404
    post = get(port, "/hello.txt", method="POST")
    assert post.status == 405 and post.headers["allow"] == "GET, HEAD"
    assert get(port, "/plain/").status == 404, "folder without index and no --listing"
    assert get(port, "/fifo").status in (403, 404)
    bad = exchange(port, b"GARBAGE\r\n\r\n")
    assert bad and bad[0].status in (400, 501)
    assert exchange(port, b"GET / HTTP/1.1\r\n\r\n")[0].status == 400, "missing Host"
    long_line = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    assert exchange(port, long_line)[0].status == 414
    big_headers = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: " + b"b" * 20_000 + b"\r\n\r\n"
    assert exchange(port, big_headers)[0].status == 431
    many = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    assert exchange(port, many + b"\r\n")[0].status == 431
    after = get(port, "/hello.txt")
    assert after.status == 200 and after.body == b"hello\n", "server must keep serving after errors"


def test_semantics_smoke(live: Live, site: Site) -> None:
    """One pass per strategy x loop over replies decided before any copy: 404,
    304, 416, 301, 405, each followed on the same connection by a body the
    strategy sends, which must come out whole and in order."""
    port, data = live.port, site.read("64k1.bin")
    etag = get(port, "/64k1.bin").headers["etag"]
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "/missing.txt", {}),
        ("GET", "/hello.txt", {}),
        ("GET", "/64k1.bin", {"If-None-Match": etag}),
        ("GET", "/64k1.bin", {"Range": "bytes=-10", "If-Range": etag}),
        ("GET", "/64k1.bin", {"Range": "bytes=70000-"}),
        ("GET", "/64k1.bin", {"Range": "bytes=0-1,5-6"}),
        ("GET", "/with%20index", {}),
        ("GET", "/with%20index/", {}),
        ("POST", "/hello.txt", {}),
        ("GET", "/one.bin", {}),
    ]
    responses = one_connection(port, requests)
    assert [r.status for r in responses] == [404, 200, 304, 206, 416, 206, 301, 200, 405, 200]
    assert responses[1].body == b"hello\n"
    assert responses[3].body == data[-10:]
    multipart = responses[5]  # two parts, each moved by the strategy
    assert multipart.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert data[0:2] in multipart.body and data[5:7] in multipart.body
    assert responses[7].body == b"<p>index</p>\n"
    assert responses[9].body == site.read("one.bin")


def test_error_close_lingers_so_the_response_survives(default_live: Live) -> None:
    """Unread input at close would make the kernel reset the connection; zcserve
    shuts down its side and drains first, so the client reads 431 and then EOF."""
    with connect(default_live.port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"v" * 60_000 + b"\r\n\r\n")
        response = read_response(reader)
        assert response is not None and response.status == 431
        assert reader.read() == b""  # EOF, not ECONNRESET


def test_directories(default_live: Live) -> None:
    index = get(default_live.port, "/with%20index/")
    assert index.status == 200 and index.body == b"<p>index</p>\n"
    redirect = get(default_live.port, "/with%20index")
    assert redirect.status == 301 and redirect.headers["location"] == "/with%20index/"
    # Never echoed: a leading "//" would make a protocol-relative (open) redirect.
    doubled = get(default_live.port, "//with%20index")
    assert doubled.status == 301 and doubled.headers["location"] == "/with%20index/"


def test_sparse_file_past_4gib(live: Live) -> None:
    start = SPARSE_SIZE - len(SPARSE_TAIL)
    response = get(live.port, "/sparse.bin", {"Range": f"bytes={start}-"})
    assert response.status == 206
    assert response.headers["content-range"] == f"bytes {start}-{SPARSE_SIZE - 1}/{SPARSE_SIZE}"
    assert response.body == SPARSE_TAIL
    head = get(live.port, "/sparse.bin", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(SPARSE_SIZE)


def test_client_abort_mid_body_keeps_server_serving(live: Live) -> None:
    for _ in range(5):
        with connect(live.port) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            sock.recv(1000)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    assert get(live.port, "/hello.txt").body == b"hello\n"
