"""readall, the lab's naive server: exact bytes in HTTP, raw and TLS mode on both
loops, no way out of the root, never a short body behind a full Content-Length,
and its size cap, a 503 before any byte of a head."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import (
    connect,
    exchange,
    get,
    raw_get,
    read_response,
    recv_until_closed,
)
from tests.support.servers import ServerThread, start_server
from tests.support.site import LOOPS, SECRET, SIZES, Site
from tests.support.tls import Certificate
from zcserve.errors import ConfigError
from zcserve.server import strategies
from zcserve.server.config import ServerConfig
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import READALL_MAX, STRATEGIES, AutoStrategy, CopyOptions

CAP = 64 * 1024
"""A --readall-max that one.bin and hello.txt fit under and 64k1.bin (64 KiB + 1) not."""


@pytest.fixture(scope="module", params=LOOPS)
def readall(request: pytest.FixtureRequest, site: Site) -> Iterator[ServerThread]:
    server = start_server(root=site.root, strategy="readall", loop=request.param)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=LOOPS)
def capped(request: pytest.FixtureRequest, site: Site) -> Iterator[ServerThread]:
    server = start_server(root=site.root, strategy="readall", loop=request.param, readall_max=CAP)
    yield server
    server.stop()


# Functional ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SIZES))
def test_whole_files_are_byte_exact(readall: ServerThread, site: Site, name: str) -> None:
    response = get(readall.port, f"/{name}")
    assert response.status == 200
    assert int(response.headers["content-length"]) == SIZES[name]
    assert response.sha256 == site.hashes[name], f"{name}: wrong bytes"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),  # the first byte
        ("bytes=100-65535", 100, 65536),  # a middle slice
        ("bytes=-17", 64 * 1024 + 1 - 17, 64 * 1024 + 1),  # a suffix
        ("bytes=65000-", 65000, 64 * 1024 + 1),  # an open end
    ],
)
def test_ranges_are_byte_exact(
    readall: ServerThread, site: Site, header: str, start: int, end: int
) -> None:
    response = get(readall.port, "/64k1.bin", {"Range": header})
    assert response.status == 206, header
    assert response.body == site.read("64k1.bin")[start:end], header


def test_head_sends_no_body_and_keep_alive_goes_on(readall: ServerThread, site: Site) -> None:
    raw = (
        b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    with connect(readall.port) as sock, sock.makefile("rb") as reader:
        sock.sendall(raw)
        head = read_response(reader, head=True)
        after = read_response(reader)
    assert head is not None and head.status == 200
    assert int(head.headers["content-length"]) == SIZES["big.bin"] and head.body == b""
    assert after is not None and after.sha256 == site.hashes["64k1.bin"]


def test_pipelined_requests_come_back_in_order(readall: ServerThread, site: Site) -> None:
    names = ("one.bin", "64k1.bin", "hello.txt")
    raw = b"".join(f"GET /{name} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for name in names)
    responses = exchange(readall.port, raw, count=len(names))
    assert [r.body for r in responses] == [site.read(name) for name in names]


@pytest.mark.parametrize(
    "target",
    [
        b"/../outside/secret.txt",  # plain dot-dot
        b"/%2e%2e/outside/secret.txt",  # percent-encoded dots
        b"/..%2foutside%2fsecret.txt",  # encoded slashes
        b"/link-out.txt",  # symlink to a file outside
        b"/dir-out/secret.txt",  # symlinked folder outside
    ],
)
def test_traversal_is_refused(readall: ServerThread, target: bytes) -> None:
    received = raw_get(readall.port, target)
    assert SECRET not in received, target
    assert not received.startswith(b"HTTP/1.1 200"), target


@pytest.mark.parametrize("loop", LOOPS)
def test_raw_mode_sends_the_whole_file(tmp_path: Path, loop: str) -> None:
    path = tmp_path / "seed.bin"
    content = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(content)
    server = start_server(raw_file=str(path), strategy="readall", loop=loop)
    try:
        for _ in range(2):  # every connection gets the file, then the close
            with connect(server.port) as sock:
                received, closed = recv_until_closed(sock, 20.0)
            assert closed and received == content
    finally:
        server.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_downloads_are_byte_exact(site: Site, certificate: Certificate, loop: str) -> None:
    server = start_server(
        root=site.root,
        strategy="readall",
        loop=loop,
        **certificate.options(),
    )
    context = certificate.client_context()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as plain:
            with context.wrap_socket(plain, server_hostname="localhost") as tls:
                tls.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                chunks = []
                while data := tls.recv(1 << 20):
                    chunks.append(data)
    finally:
        server.stop()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]


# No silent truncation ------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_file_that_shrinks_before_the_read_ends_the_connection(
    tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head (with the stat's length) is out when the one read finds the file
    shorter: the connection closes, so the client sees fewer bytes than announced,
    never a body that looks whole."""
    size = 4 * 1024 * 1024
    path = tmp_path / "shrinks.bin"
    path.write_bytes(os.urandom(size))
    own = strategies._own_description

    def shrink_then_own(fd: int) -> int:  # after the stat, before the head and the read
        os.truncate(path, size // 2)
        return own(fd)

    monkeypatch.setattr(strategies, "_own_description", shrink_then_own)
    server = start_server(root=str(tmp_path), strategy="readall", loop=loop)
    try:
        with connect(server.port) as sock:
            sock.sendall(b"GET /shrinks.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            received, closed = recv_until_closed(sock, 10.0)
        assert closed, "the connection must end, not wait for bytes that never come"
        head, _, body = received.partition(b"\r\n\r\n")
        assert f"content-length: {size}".encode() in head.lower()
        assert len(body) < size, "a short file must not look like a whole body"
        monkeypatch.setattr(strategies, "_own_description", own)
        assert get(server.port, "/shrinks.bin").body == path.read_bytes()  # still serving
    finally:
        server.stop()


# The size cap ----------------------------------------------------------------------


def test_over_the_cap_is_503_before_any_head(capped: ServerThread, site: Site) -> None:
    with connect(capped.port) as sock:
        sock.sendall(b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received, closed = recv_until_closed(sock, 10.0)
    assert closed and received.startswith(b"HTTP/1.1 503 "), received[:100]
    assert received.count(b"HTTP/1.1 ") == 1, "a 200 head went out before the 503"
    assert site.read("64k1.bin")[:64] not in received


def test_under_the_cap_is_served_and_the_server_goes_on(capped: ServerThread, site: Site) -> None:
    assert get(capped.port, "/64k1.bin").status == 503
    assert get(capped.port, "/hello.txt").body == b"hello\n"
    ranged = get(capped.port, "/64k1.bin", {"Range": f"bytes=0-{CAP - 1}"})  # exactly the cap
    assert (ranged.status, ranged.body) == (206, site.read("64k1.bin")[:CAP])
    head = get(capped.port, "/big.bin", method="HEAD")  # reads nothing: no cap
    assert head.status == 200 and int(head.headers["content-length"]) == SIZES["big.bin"]
    assert get(capped.port, "/64k1.bin", {"Range": "bytes=0-"}).status == 503
    assert get(capped.port, "/one.bin").body == site.read("one.bin")


def test_a_raw_file_over_the_cap_is_refused_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "seed.bin"
    path.write_bytes(b"x" * (CAP + 1))
    with pytest.raises(ConfigError, match="over --readall-max 65536"):
        ServerConfig(raw_file=str(path), strategy="readall", readall_max=CAP)
    ServerConfig(raw_file=str(path), strategy="sendfile", readall_max=CAP)  # not its cap


def test_the_default_cap_is_2_gib() -> None:
    assert READALL_MAX == ServerConfig().readall_max == CopyOptions().readall_max == 2 * 1024**3


def test_auto_never_picks_readall() -> None:
    auto = AutoStrategy(CopyOptions())
    left, right = socket.socketpair()
    loop = asyncio.new_event_loop()
    try:
        stream = SocketStream(left, loop, send_timeout=1)
        plain = auto.choose(stream)
        stream.supports_sendfile = False  # as under TLS
        userspace = auto.choose(stream)
    finally:
        loop.close()
        left.close()
        right.close()
    assert (plain.name, userspace.name) == ("sendfile", "fallback")
    assert STRATEGIES["readall"].name == "readall"


def test_past_the_budget_a_request_gets_503_and_retry_after(site: Site) -> None:
    """A client that asks for 24 MiB and does not read keeps it held; while it does,
    the next request would pass the 30 MiB budget: 503 with Retry-After, before any
    head. Once the first is read whole, the budget is back and the next is served."""
    server = start_server(root=site.root, strategy="readall", readall_budget=30 * 1024 * 1024)
    metrics = server.server.metrics
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            stalled.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            give_up = time.monotonic() + 10
            while metrics.readall_held != SIZES["big.bin"]:
                assert time.monotonic() < give_up, f"held {metrics.readall_held}"
                time.sleep(0.01)
            refused = get(server.port, "/big.bin")
            assert refused.status == 503, refused.status
            assert refused.headers["retry-after"] == "1"
            assert refused.body == b"503 Service Unavailable\n"
            received, _ = recv_until_closed(stalled, 20)
        body = received.partition(b"\r\n\r\n")[2]
        assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]
        served = get(server.port, "/big.bin")
        assert served.status == 200 and served.sha256 == site.hashes["big.bin"]
        assert metrics.readall_held == 0
    finally:
        server.stop()
