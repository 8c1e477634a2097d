"""A response that ends its connection arrives whole, even when the client has
already pipelined more requests (RFC 9112 9.6): the server stops sending, drains,
and only then closes, so the kernel never answers with a reset."""

from __future__ import annotations

import hashlib
import select
import time

import pytest

from tests.support.httpclient import connect
from tests.support.servers import start_server
from tests.support.site import LOOPS, SIZES, Site
from tests.support.tls import Transport, skip_unless_carried

LAST = b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
MORE = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"


def _download(transport: Transport, port: int, request: bytes, more: bytes) -> tuple[bytes, bool]:
    """Send `request`; once its answer is flowing (the server is busy sending and
    reads nothing), send `more`, which then sits unread in the server's kernel queue;
    read the rest. A server that simply closes after the body makes the kernel answer
    those unread bytes with a reset that destroys the body still in flight."""
    with connect(port, transport=transport, timeout=20, rcvbuf=64 * 1024) as sock:
        sock.sendall(request)
        chunks = [sock.recv(64 * 1024)]
        sock.sendall(more)
        reset = False
        while True:
            try:
                chunk = sock.recv(64 * 1024)
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks), reset


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", ["sendfile", "fallback", "readwrite", "mmap", "splice"])
def test_connection_close_with_a_pipelined_request_delivers_the_whole_body(
    transport: Transport, site: Site, strategy: str, loop: str
) -> None:
    skip_unless_carried(transport, strategy)
    server = start_server(root=site.root, strategy=strategy, loop=loop, **transport.options())
    try:
        received, reset = _download(transport, server.port, LAST, MORE)
    finally:
        server.stop()
    head, _, body = received.partition(b"\r\n\r\n")
    assert not reset, f"reset after {len(body)} of {SIZES['big.bin']} body bytes"
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
    assert len(body) == SIZES["big.bin"]
    assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]


@pytest.mark.parametrize("loop", LOOPS)
def test_http10_with_a_pipelined_request_delivers_the_whole_body(
    transport: Transport, site: Site, loop: str
) -> None:
    server = start_server(root=site.root, loop=loop, **transport.options())
    try:
        received, reset = _download(
            transport,
            server.port,
            b"GET /big.bin HTTP/1.0\r\n\r\n",
            b"GET /hello.txt HTTP/1.0\r\n\r\n",
        )
    finally:
        server.stop()
    body = received.partition(b"\r\n\r\n")[2]
    assert not reset and hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_sending_only_crlf_is_cut_at_the_header_timeout(
    transport: Transport, site: Site, loop: str
) -> None:
    """llhttp skips blank lines before a request line, so no head ever starts; the
    bytes still count against the header timeout."""
    timeout = 1.0
    server = start_server(root=site.root, loop=loop, header_timeout=timeout, **transport.options())
    try:
        started = time.monotonic()  # before the accept: under TLS, before the handshake
        with connect(server.port, transport=transport) as sock:
            closed_at = None
            while time.monotonic() - started < timeout + 5:
                try:
                    sock.sendall(b"\r\n")
                    ready, _, _ = select.select([sock], [], [], 0.1)
                    gone = bool(ready) and sock.recv(1024) == b""
                except OSError:  # reset: the server closed with CRLFs unread
                    gone = True
                if gone:
                    closed_at = time.monotonic()
                    break
    finally:
        server.stop()
    assert closed_at is not None, "still open 5 s past the header timeout"
    # The sweep ticks every 0.25 s; allow a loaded machine its margin.
    assert timeout - 0.05 <= closed_at - started <= timeout + 3
