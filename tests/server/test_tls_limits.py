"""TLS connections under limits: what an idle one costs, one header deadline for the
handshake and the head, plain HTTP on the TLS port, and the last response on a
connection arriving whole behind a pipelined request."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpclient import recv_until_closed, status_codes
from tests.support.servers import ServerThread, start_child, start_server
from tests.support.site import LOOPS, SIZES, Site
from tests.support.timing import DEADLINE, wait_for
from tests.support.tls import Certificate
from zcserve.server.http import PLAIN_HTTP_ON_TLS_PORT

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("openssl") is None, reason="the openssl command makes the test certificate"
    ),
]

KiB = 1024
IDLE_CONNECTIONS = 300
IDLE_BUDGET = 40 * KiB
"""What one TLS connection that has sent nothing may cost the server (it was ~110 KiB:
a zero-filled 64 KiB buffer, the receive buffer and an SSLObject, all at accept)."""
LAST = b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
MORE = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"


def https_hello(port: int, certificate: Certificate) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as plain:
        with certificate.client_context().wrap_socket(plain, server_hostname="localhost") as tls:
            tls.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            chunks = []
            while data := tls.recv(65536):
                chunks.append(data)
    return b"".join(chunks)


@pytest.fixture
def tls_threads(site: Site, certificate: Certificate) -> Iterator[list[ServerThread]]:
    started: list[ServerThread] = []
    yield started
    for server in started:
        server.stop()


# Memory of an idle connection --------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_tls_connection_costs_little(
    site: Site, certificate: Certificate, tmp_path: Path, loop: str
) -> None:
    """Measured as the RSS growth of a server child over 300 connections that send
    nothing: RSS, not tracemalloc, because OpenSSL's allocations are invisible to
    tracemalloc. Warm-up connections first, so the loop's own tables and the TLS
    library are grown and loaded before the baseline is read; 300 connections make
    the allocator's noise (a few hundred KiB) small beside the budget (12 MiB)."""
    args = ("--loop", loop, *certificate.flags(), "--header-timeout", "60")
    with start_child(site.root, *args, log_dir=tmp_path) as child:
        for _ in range(5):
            assert https_hello(child.port, certificate).endswith(b"hello\n")
        warm = [socket.create_connection(("127.0.0.1", child.port)) for _ in range(50)]
        wait_for(lambda: child.connections() >= 50, DEADLINE, "warm-up connections held")
        for sock in warm:
            sock.close()
        wait_for(lambda: child.connections() == 0, DEADLINE, "warm-up connections closed")
        assert https_hello(child.port, certificate).endswith(b"hello\n")
        base = child.rss()
        idle = []
        try:
            for _ in range(IDLE_CONNECTIONS):
                idle.append(socket.create_connection(("127.0.0.1", child.port)))
            wait_for(
                lambda: child.connections() >= IDLE_CONNECTIONS,
                DEADLINE,
                "the server holds every idle connection",
            )
            # A full exchange after them: the loop has run every accepted connection's
            # coroutine up to its first wait.
            assert https_hello(child.port, certificate).endswith(b"hello\n")
            growth = child.rss() - base
        finally:
            for sock in idle:
                sock.close()
        assert child.stop() == 0
    per_connection = growth / IDLE_CONNECTIONS
    assert per_connection < IDLE_BUDGET, (
        f"an idle TLS connection costs {per_connection / KiB:.1f} KiB "
        f"(budget {IDLE_BUDGET / KiB:.0f} KiB)"
    )


# One header deadline -----------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_one_header_deadline_covers_the_handshake_and_the_head(
    site: Site, certificate: Certificate, loop: str, tls_threads: list[ServerThread]
) -> None:
    """A client that spends most of the header timeout before its handshake, then
    sends half a head, is cut at the header timeout counted from the connection,
    not a second one counted from the handshake."""
    header_timeout, before_handshake = 2.0, 1.5
    server = start_server(
        root=site.root, loop=loop, **certificate.options(),
        header_timeout=header_timeout,
    )  # fmt: skip
    tls_threads.append(server)
    dialled = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as plain:
        connected = time.monotonic()
        time.sleep(before_handshake)
        with certificate.client_context().wrap_socket(plain, server_hostname="localhost") as tls:
            tls.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n")
            try:
                data = tls.recv(1024)
            except (ConnectionError, ssl.SSLError):
                data = b""
            cut = time.monotonic()
    assert data == b"", f"a half head got an answer: {data!r}"
    assert cut - dialled >= header_timeout - 0.05, f"cut after {cut - dialled:.2f}s"
    assert cut - connected <= header_timeout + 1.0, (
        f"cut {cut - connected:.2f}s after the connection with a {header_timeout:g}s "
        "header timeout: the handshake restarted the clock"
    )


# Plain HTTP on the TLS port ---------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_plain_http_on_the_tls_port_gets_a_clear_400(
    site: Site, certificate: Certificate, loop: str, tls_threads: list[ServerThread]
) -> None:
    server = start_server(root=site.root, loop=loop, **certificate.options())
    tls_threads.append(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
        received, closed = recv_until_closed(sock, DEADLINE)
    assert closed and status_codes(received) == [400], received[:300]
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and body == PLAIN_HTTP_ON_TLS_PORT
    # Not a method: still a TLS handshake, which fails; nothing is answered in clear.
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        sock.sendall(b"\x00\x01garbage\r\n\r\n")
        received, closed = recv_until_closed(sock, DEADLINE)
    assert closed and b"HTTP/1.1" not in received
    assert https_hello(server.port, certificate).endswith(b"hello\n"), (
        "the server must keep serving"
    )


# The last response, whole ----------------------------------------------------------------------


def _tls_download(port: int, certificate: Certificate) -> tuple[bytes, str | None]:
    """Ask for LAST; once its body flows, pipeline MORE, which then waits unread in
    the server's kernel queue; read to the end. Returns the bytes and how the
    connection ended badly (None: a clean end)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    raw.settimeout(20)
    raw.connect(("127.0.0.1", port))
    with certificate.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(LAST)
        chunks = [tls.recv(64 * KiB)]
        tls.sendall(MORE)
        while True:
            try:
                chunk = tls.recv(64 * KiB)
            except (ConnectionError, ssl.SSLError) as exc:
                return b"".join(chunks), repr(exc)
            if not chunk:
                return b"".join(chunks), None
            chunks.append(chunk)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", ["auto", "fallback", "readwrite"])
def test_tls_connection_close_with_a_pipelined_request_delivers_the_whole_body(
    site: Site, certificate: Certificate, strategy: str, loop: str, tls_threads: list[ServerThread]
) -> None:
    server = start_server(
        root=site.root,
        strategy=strategy,
        loop=loop,
        **certificate.options(),
    )
    tls_threads.append(server)
    received, broken = _tls_download(server.port, certificate)
    head, _, body = received.partition(b"\r\n\r\n")
    assert broken is None, f"{broken} after {len(body)} of {SIZES['big.bin']} body bytes"
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
    assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_download_finishes_through_shutdown_with_a_pipelined_request(
    site: Site, certificate: Certificate, tmp_path: Path, loop: str
) -> None:
    """SIGTERM while a TLS client that pipelined a second request downloads: the
    response in flight arrives whole, then the connection closes, and exit is 0."""
    size = SIZES["big.bin"]
    args = ("--loop", loop, *certificate.flags())
    with start_child(site.root, *args, log_dir=tmp_path) as child:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", child.port))
        broken = None
        with certificate.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            chunks = [tls.recv(64 * KiB)]
            tls.sendall(MORE)  # waits unread in the server's kernel queue
            child.proc.send_signal(signal.SIGTERM)
            while True:
                try:
                    chunk = tls.recv(1 << 20)
                except (ConnectionError, ssl.SSLError) as exc:
                    broken = repr(exc)
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        assert child.proc.wait(DEADLINE) == 0
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert len(body) >= size, f"{broken} after {len(body)} of {size} body bytes"
    assert hashlib.sha256(body[:size]).hexdigest() == site.hashes["big.bin"]
    assert "Traceback" not in child.log()
