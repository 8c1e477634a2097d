"""--header and --cors over real sockets: which answers carry the added headers,
the CORS preflight, and flags refused at start-up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.httpclient import exchange, get
from tests.support.servers import ServerThread, start_child, start_server, zcserve_command
from tests.support.site import LOOPS, Site
from zcserve.errors import ConfigError
from zcserve.server.config import ServerConfig
from zcserve.server.decorate import make_planner, parse_header
from zcserve.server.respond import plan_reply
from zcserve.server.strategies import STRATEGY_NAMES

ADDED = ("Cache-Control: max-age=60", "X-Served-By:   zcserve test  ")
CORS_ORIGIN = "access-control-allow-origin"
EXPOSED = "Content-Range, Content-Length, ETag, Accept-Ranges"


@pytest.fixture(scope="module", params=LOOPS)
def decorated(request: pytest.FixtureRequest, site: Site) -> Iterator[ServerThread]:
    server = start_server(root=site.root, loop=request.param, headers=ADDED, listing=True)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=LOOPS)
def cors(request: pytest.FixtureRequest, site: Site) -> Iterator[ServerThread]:
    server = start_server(root=site.root, loop=request.param, cors=True)
    yield server
    server.stop()


def test_no_flag_plans_with_plan_reply_itself() -> None:
    # The hot path does no extra work unless a flag asks for it.
    assert make_planner() is plan_reply
    assert make_planner((), cors=False) is plan_reply


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/hello.txt", {}, 200),
        ("/64k1.bin", {"Range": "bytes=10-19"}, 206),
        ("/plain", {}, 301),
        ("/plain/", {}, 200),  # a listing
        ("/empty.bin", {}, 200),
    ],
)
def test_header_on_success_and_redirects(
    decorated: ServerThread, path: str, headers: dict[str, str], status: int
) -> None:
    for method in ("GET", "HEAD"):
        response = get(decorated.port, path, headers, method=method)
        assert response.status == status
        assert response.headers["cache-control"] == "max-age=60"
        assert response.headers["x-served-by"] == "zcserve test"


def test_header_on_304(decorated: ServerThread) -> None:
    etag = get(decorated.port, "/hello.txt").headers["etag"]
    response = get(decorated.port, "/hello.txt", {"If-None-Match": etag})
    assert response.status == 304 and response.headers["cache-control"] == "max-age=60"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/missing.txt", {}, 404),
        ("/hello.txt", {"Range": "bytes=100-"}, 416),
        ("/hello.txt", {"If-Match": '"nope"'}, 412),
    ],
)
def test_no_header_on_errors(
    decorated: ServerThread, path: str, headers: dict[str, str], status: int
) -> None:
    response = get(decorated.port, path, headers)
    assert response.status == status
    assert "cache-control" not in response.headers and "x-served-by" not in response.headers


def test_header_spliced_into_a_cached_head_keeps_the_body_whole(
    decorated: ServerThread, site: Site
) -> None:
    raw = b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\n\r\n" * 3
    responses = exchange(decorated.port, raw, count=3)
    assert [r.status for r in responses] == [200, 200, 200]
    for response in responses:
        assert response.sha256 == site.hashes["64k1.bin"]
        assert response.headers["cache-control"] == "max-age=60"


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_added_headers_with_every_strategy(site: Site, strategy: str) -> None:
    server = start_server(root=site.root, strategy=strategy, headers=ADDED, cors=True)
    try:
        whole = get(server.port, "/64k1.bin")
        part = get(server.port, "/big.bin", {"Range": "bytes=1000000-1999999"})
    finally:
        server.stop()
    assert whole.sha256 == site.hashes["64k1.bin"]
    assert part.body == site.read("big.bin")[1000000:2000000]
    for response in (whole, part):
        assert response.headers["cache-control"] == "max-age=60"
        assert response.headers[CORS_ORIGIN] == "*"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/hello.txt", {}, 200),
        ("/64k1.bin", {"Range": "bytes=0-9"}, 206),
        ("/missing", {}, 404),  # a script may read why its fetch failed
    ],
)
def test_cors_headers(cors: ServerThread, path: str, headers: dict[str, str], status: int) -> None:
    response = get(cors.port, path, {"Origin": "http://example.test", **headers})
    assert response.status == status
    assert response.headers[CORS_ORIGIN] == "*"
    assert response.headers["access-control-expose-headers"] == EXPOSED


def preflight(port: int, **extra: str) -> list[str]:
    lines = [
        "OPTIONS /64k1.bin HTTP/1.1",
        "Host: t",
        "Origin: http://example.test",
        "Access-Control-Request-Method: GET",
        *(f"{name.replace('_', '-')}: {value}" for name, value in extra.items()),
    ]
    return lines


def test_preflight_answered_with_204_and_the_connection_kept(cors: ServerThread) -> None:
    lines = preflight(cors.port, Access_Control_Request_Headers="Range, If-None-Match")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    answer, after = exchange(cors.port, raw, count=2)
    assert answer.status == 204 and answer.body == b""
    assert "content-length" not in answer.headers
    assert answer.headers[CORS_ORIGIN] == "*"
    assert answer.headers["access-control-allow-methods"] == "GET, HEAD"
    assert answer.headers["access-control-allow-headers"] == "range, if-none-match"
    assert after.status == 200 and after.body == b"hello\n"


@pytest.mark.parametrize(
    "asked",
    [
        "Range, X Bad",  # a space inside a name
        "Range, X:Bad",  # a colon
        "Range, <script>",
    ],
)
def test_preflight_never_echoes_an_invalid_header_name(cors: ServerThread, asked: str) -> None:
    lines = preflight(cors.port, Access_Control_Request_Headers=asked, Connection="close")
    (answer,) = exchange(cors.port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    assert answer.status == 204
    assert "access-control-allow-headers" not in answer.headers


def test_options_without_preflight_headers_is_405(cors: ServerThread) -> None:
    response = get(cors.port, "/hello.txt", method="OPTIONS")
    assert response.status == 405 and response.headers["allow"] == "GET, HEAD"


def test_without_cors_a_preflight_is_405(site: Site) -> None:
    server = start_server(root=site.root)
    try:
        lines = preflight(server.port, Connection="close")
        (answer,) = exchange(server.port, ("\r\n".join(lines) + "\r\n\r\n").encode())
        plain = get(server.port, "/hello.txt", {"Origin": "http://example.test"})
    finally:
        server.stop()
    assert answer.status == 405 and CORS_ORIGIN not in answer.headers
    assert CORS_ORIGIN not in plain.headers


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Cache-Control max-age=60", "expected 'Name: value'"),
        ("Bad Name: x", "is not a header name"),
        (": x", "is not a header name"),
        ("X-Split: a\r\nX-Injected: b", "without CR or LF"),
        ("X-Split: a\nb", "without CR or LF"),
        ("X-Empty:", "without CR or LF"),
        ("Content-Length: 5", "zcserve sets Content-Length itself"),
        ("connection: close", "zcserve sets connection itself"),
    ],
)
def test_bad_header_refused_at_startup(site: Site, header: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(root=site.root, headers=(header,))
    result = subprocess.run(
        zcserve_command("serve", site.root, "--port", "0", "--header", header),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zcserve serve: error: --header "), lines
    assert message in lines[0]


def test_header_from_the_environment(site: Site) -> None:
    env = {"ZCSERVE_HEADER": "Cache-Control: no-store", "ZCSERVE_CORS": "1"}
    with start_child(site.root, "-p", "0", port=None, env=env) as child:
        response = get(child.port, "/hello.txt")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers[CORS_ORIGIN] == "*"


def test_parse_header_strips_spaces() -> None:
    assert parse_header("X-A:  b c ") == ("X-A", "b c")
