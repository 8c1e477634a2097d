"""Preconditions (RFC 9110 13): If-Match and If-Unmodified-Since answer 412 when
false, and all four are evaluated in 13.2.2's order, on the open-file cache's fast
path and without the cache alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.httpclient import connect, one_connection, read_response
from tests.support.servers import start_server
from tests.support.site import LOOPS, SIZES, Live, Site
from zcserve.server.files import OpenedFile, Precondition, preconditions

OLD = "Mon, 01 Jan 1990 00:00:00 GMT"
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"
ETAG = "<etag>"
MODIFIED = "<last-modified>"
"""Placeholders in the cases below for the file's real validators."""


# (headers, status): each placeholder is replaced by /hello.txt's validator.
CASES: list[tuple[dict[str, str], int]] = [
    ({"If-Match": ETAG}, 200),
    ({"If-Match": '"other"'}, 412),
    ({"If-Match": "*"}, 200),  # any existing file
    ({"If-Match": f'"other", {ETAG}'}, 200),  # one of a list
    ({"If-Match": f"W/{ETAG}"}, 412),  # strong comparison: a weak tag never matches
    ({"If-Unmodified-Since": MODIFIED}, 200),
    ({"If-Unmodified-Since": FUTURE}, 200),
    ({"If-Unmodified-Since": OLD}, 412),
    ({"If-Unmodified-Since": "not a date"}, 200),  # ignored (13.1.4)
    # 13.2.2 step 2: If-Unmodified-Since only when If-Match is absent.
    ({"If-Match": ETAG, "If-Unmodified-Since": OLD}, 200),
    ({"If-Match": '"other"', "If-Unmodified-Since": FUTURE}, 412),
    # Steps 1-2 come before 3-4: a failed precondition wins over a 304.
    ({"If-Match": '"other"', "If-None-Match": ETAG}, 412),
    ({"If-Unmodified-Since": OLD, "If-Modified-Since": MODIFIED}, 412),
    ({"If-Match": ETAG, "If-None-Match": ETAG}, 304),
    ({"If-Unmodified-Since": MODIFIED, "If-Modified-Since": MODIFIED}, 304),
    ({"If-Match": "*", "If-None-Match": '"other"'}, 200),
    # Step 5 last: a Range is honoured only once the preconditions pass.
    ({"If-Match": ETAG, "Range": "bytes=1-2"}, 206),
    ({"If-Match": '"other"', "Range": "bytes=1-2"}, 412),
    ({"If-Unmodified-Since": OLD, "Range": "bytes=1-2", "If-Range": ETAG}, 412),
]


def filled(headers: dict[str, str], etag: str, modified: str) -> dict[str, str]:
    return {
        name: value.replace(ETAG, etag).replace(MODIFIED, modified)
        for name, value in headers.items()
    }


def check_cases(port: int, method: str = "GET") -> None:
    """Every case on one connection, each after a plain GET of the same file (which
    puts it in the open-file cache, when there is one) and before a GET of another
    file: a 412 or 304 that sent a stray body byte would garble it."""
    with connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        first = read_response(reader)
    assert first is not None and first.status == 200
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    requests = []
    for headers, _ in CASES:
        requests += [
            ("GET", "/hello.txt", {}),
            (method, "/hello.txt", filled(headers, etag, modified)),
            ("GET", "/one.bin", {}),
        ]
    responses = one_connection(port, requests)
    for (headers, status), got, after in zip(CASES, responses[1::3], responses[2::3], strict=True):
        assert got.status == status, headers
        assert got.headers.get("connection") != "close", f"{headers}: closed after {status}"
        if status == 412:
            assert got.reason == "Precondition Failed", headers
            assert got.body == (b"" if method == "HEAD" else b"412 Precondition Failed\n")
        elif status == 200 and method == "GET":
            assert got.body == b"hello\n", headers
        elif status == 206 and method == "GET":
            assert got.body == b"el" and got.headers["content-range"] == "bytes 1-2/6", headers
        assert after.status == 200 and len(after.body) == SIZES["one.bin"], headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_preconditions_in_order(default_live: Live, method: str) -> None:
    check_cases(default_live.port, method)


@pytest.fixture(scope="module", params=LOOPS)
def uncached_port(request: pytest.FixtureRequest, site: Site) -> Iterator[int]:
    """A server without the open-file cache: every request takes the slow path."""
    server = start_server(root=site.root, loop=request.param, open_file_cache=0)
    yield server.port
    server.stop()


def test_preconditions_without_the_open_file_cache(uncached_port: int) -> None:
    check_cases(uncached_port)


def test_preconditions_then_bytes_on_every_strategy(live: Live, site: Site) -> None:
    """A passed precondition sends the body through the strategy: whole and ranged,
    after and before a 412 on the same connection."""
    port, data = live.port, site.read("64k1.bin")
    first = one_connection(port, [("GET", "/64k1.bin", {})])[0]
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    responses = one_connection(
        port,
        [
            ("GET", "/64k1.bin", {"If-Match": etag}),
            ("GET", "/64k1.bin", {"If-Match": '"stale"'}),
            ("GET", "/64k1.bin", {"If-Unmodified-Since": modified, "Range": "bytes=100-"}),
            ("GET", "/64k1.bin", {"If-Unmodified-Since": OLD}),
            ("GET", "/64k1.bin", {"If-Match": "*", "Range": "bytes=-7"}),
        ],
    )
    assert [r.status for r in responses] == [200, 412, 206, 412, 206]
    assert responses[0].body == data
    assert responses[2].body == data[100:]
    assert responses[4].body == data[-7:]


# Without sockets ---------------------------------------------------------------------

FILE = OpenedFile(-1, "x.txt", 10, 1_700_000_000.5, 1_700_000_000_500_000_000)
FILE_DATE = "Tue, 14 Nov 2023 22:13:20 GMT"  # FILE's mtime, to the second


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        ({}, Precondition.PASSED),
        ({"if-match": FILE.etag}, Precondition.PASSED),
        ({"if-match": "*"}, Precondition.PASSED),
        ({"if-match": '"a", "b"'}, Precondition.FAILED),
        ({"if-match": "W/" + FILE.etag}, Precondition.FAILED),
        ({"if-unmodified-since": FILE_DATE}, Precondition.PASSED),  # not modified since
        ({"if-unmodified-since": "Tue, 14 Nov 2023 22:13:19 GMT"}, Precondition.FAILED),
        ({"if-unmodified-since": "garbage"}, Precondition.PASSED),
        ({"if-match": "*", "if-unmodified-since": OLD}, Precondition.PASSED),
        ({"if-match": '"a"', "if-none-match": FILE.etag}, Precondition.FAILED),
        ({"if-match": FILE.etag, "if-none-match": FILE.etag}, Precondition.NOT_MODIFIED),
        ({"if-none-match": '"a"', "if-modified-since": FILE_DATE}, Precondition.PASSED),
        ({"if-modified-since": FILE_DATE}, Precondition.NOT_MODIFIED),
    ],
)
def test_preconditions_outcome(headers: dict[str, str], outcome: Precondition) -> None:
    assert preconditions(headers, FILE) is outcome
