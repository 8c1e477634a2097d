"""The sans-I/O HTTP module, on plain bytes."""

from __future__ import annotations

import pytest

from tests.support.parsed import summary
from zcserve.errors import HttpError
from zcserve.server.http import Limits, Request, RequestParser, error_response, render_head


def feed_all(data: bytes, limits: Limits | None = None) -> list[Request | HttpError]:
    return RequestParser(limits).feed(data)


def test_simple_get() -> None:
    [request] = feed_all(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nX-Y: 1\r\nX-Y: 2\r\n\r\n")
    assert isinstance(request, Request)
    assert request.method == "GET" and request.path == b"/a%20b" and request.query == b"x=1"
    assert request.headers["x-y"] == "1, 2" and request.keep_alive and request.version == "1.1"


def test_byte_at_a_time_and_pipelining() -> None:
    parser = RequestParser()
    raw = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.0\r\n\r\n"
    got: list[Request | HttpError] = []
    for i in range(len(raw)):
        got += parser.feed(raw[i : i + 1])
    assert [(r.method, r.path, r.keep_alive) for r in got if isinstance(r, Request)] == [
        ("GET", b"/1", True),
        ("HEAD", b"/2", False),
    ]


def test_body_of_a_get_is_skipped() -> None:
    got = feed_all(
        b"GET /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [r.path for r in got if isinstance(r, Request)] == [b"/1", b"/2"]


def test_a_request_repeated_three_times_is_not_parsed_again() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    parser = RequestParser()
    fed = [parser.feed(raw) for _ in range(5)]
    assert all(feed == fed[0] for feed in fed) and isinstance(fed[0][0], Request)
    assert fed[0][0] is not fed[1][0] is not fed[2][0], "parsed while not yet a repeat"
    assert fed[2][0] is fed[3][0] is fed[4][0], "a repeat should reuse the request parsed before"
    assert parser.repeat is fed[2][0]


def test_requests_that_differ_keep_no_request_alive() -> None:
    parser = RequestParser()
    for index in range(5):
        parser.feed(b"GET /a?%d HTTP/1.1\r\nHost: h\r\n\r\n" % index)
    assert parser.repeat is None


@pytest.mark.parametrize(
    ("before", "why"),
    [
        (b"G", "a method begun: the repeat continues it (GGET)"),
        (b"GET /a HTTP/1.1\r\nHost", "a head begun"),
        (b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n", "a body owed"),
        (b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "a last request"),
    ],
)
def test_a_repeat_after_a_partial_feed_is_parsed_as_what_it_continues(
    before: bytes, why: str
) -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    parser = RequestParser()
    for _ in range(3):
        parser.feed(raw)
    assert parser.repeat is not None  # remembered
    got = parser.feed(before) + parser.feed(raw)
    assert [summary(item) for item in got] == [
        summary(item) for item in RequestParser().feed(raw * 3 + before + raw)[3:]
    ], why


def test_bytes_that_were_a_body_are_not_remembered_as_a_request() -> None:
    """A head that owes, as its body, exactly its own bytes: fed again, those bytes
    end the request they are the body of, and look like a request that came twice.
    They were not parsed at rest, so they are not a repeat: the third feed is a new
    head, owing its body again."""
    template = b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
    owing = next(template % n for n in range(1, 200) if len(template % n) == n)
    parser = RequestParser()
    got = [[summary(item) for item in parser.feed(owing)] for _ in range(4)]
    request = summary(RequestParser().feed(owing * 2)[0])
    assert got == [[], [request], [], [request]]


def test_the_end_of_a_split_head_is_not_remembered_as_a_request() -> None:
    parser = RequestParser()
    for _ in range(3):  # at rest after each: the third would be kept if it parsed
        parser.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    parser.feed(b"GET /a HTTP/1.1\r\nHo")
    assert isinstance(parser.feed(b"st: h\r\n\r\n")[0], Request)
    [refused] = parser.feed(b"st: h\r\n\r\n")
    assert isinstance(refused, HttpError) and refused.status == 400
    assert parser.repeat is None or parser.repeat.path == b"/a"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # start of a TLS ClientHello
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),  # a version we do not speak
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", 414),  # request line too long
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 17000 + b"\r\n\r\n", 431),  # huge header
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"A: b\r\n" * 101 + b"\r\n", 431),  # too many
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 40000, 431),  # a head that never ends
        (b"GET / HTTP/1.1\r\nHo st: h\r\n\r\n", 400),  # space in a header name
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n", 400),  # bad length
    ],
)
def test_bad_requests_map_to_a_status(raw: bytes, status: int) -> None:
    got = feed_all(raw)
    assert got and isinstance(got[-1], HttpError), got
    assert got[-1].status == status


def test_a_body_counts_as_part_of_the_request_head_deadline() -> None:
    parser = RequestParser()
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab") == []
    assert parser.in_head, "a trickled body must stay under the header deadline"
    [request] = parser.feed(b"cde")
    assert isinstance(request, Request) and not parser.in_head


def test_large_bodies_are_refused() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000
    got = RequestParser().feed(raw)
    assert isinstance(got[-1], HttpError) and got[-1].status == 413


def test_parser_stops_after_an_error() -> None:
    parser = RequestParser()
    assert isinstance(parser.feed(b"BAD\x00 REQUEST\r\n\r\n")[0], HttpError)
    assert parser.failed and parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []


def test_pipelining_cap() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 5
    got = feed_all(raw, Limits(max_pipelined=3))
    assert [type(r) for r in got] == [Request, Request, Request, HttpError]
    assert isinstance(got[-1], HttpError) and got[-1].status == 429


def test_render_head() -> None:
    head = render_head(200, [("Content-Length", "5")], keep_alive=False)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nDate: ")
    assert b"\r\nContent-Length: 5\r\nConnection: close\r\n\r\n" in head
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
    assert b"Connection: keep-alive" in render_head(200, [], keep_alive=True, version="1.0")


def test_error_response_405_has_allow() -> None:
    data = error_response(405)
    assert b"Allow: GET, HEAD" in data and data.endswith(b"405 Method Not Allowed\n")
