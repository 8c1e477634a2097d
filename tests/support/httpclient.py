"""A deliberately small HTTP/1.1 client for tests: exact bytes out, exact responses
back, nothing hidden; and the one `connect` every test client socket comes from."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from tests.support.timing import CLIENT_TIMEOUT

if TYPE_CHECKING:
    from tests.support.tls import Transport


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def connect(
    port: int,
    host: str = "127.0.0.1",
    *,
    transport: Transport | None = None,
    timeout: float = CLIENT_TIMEOUT,
    rcvbuf: int = 0,
    source: str | None = None,
    blocking: bool = True,
) -> socket.socket:
    """A client socket connected to `host`:`port`; over `transport` when given (TLS:
    the handshake done).

    `rcvbuf` shrinks its receive buffer before it connects, so a server's response
    waits in flight; `source` is the local address to connect from (another
    127.0.0.x, where one address would run out of ports). `blocking=False` hands
    the connected socket to an event loop (`loop.sock_recv` and friends): on
    loopback a connect completes at once while the listen backlog has room."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
        context = None if transport is None else transport.client_context()
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        if not blocking:
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def read_response(reader: BinaryIO, *, head: bool = False) -> Response | None:
    """One response from `reader`; None if the connection closed before a status line."""
    status_line = reader.readline()
    if not status_line:
        return None
    version, status, *reason = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    assert version.startswith("HTTP/1."), status_line
    headers: dict[str, str] = {}
    while True:
        line = reader.readline()
        assert line, "connection closed inside a head"
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    code = int(status)
    body = b""
    if not head and code != 304 and "content-length" in headers:
        length = int(headers["content-length"])
        body = reader.read(length)
    elif not head and code != 304 and headers.get("connection") == "close":
        body = reader.read()
    return Response(code, reason[0] if reason else "", headers, body)


def exchange(
    port: int,
    raw: bytes,
    *,
    count: int = 1,
    head: bool = False,
    transport: Transport | None = None,
) -> list[Response]:
    """Send `raw` in one write, read up to `count` responses, then close."""
    with connect(port, transport=transport) as sock, sock.makefile("rb") as reader:
        sock.sendall(raw)
        responses = []
        for _ in range(count):
            response = read_response(reader, head=head)
            if response is None:
                break
            responses.append(response)
        return responses


def get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    *,
    transport: Transport | None = None,
) -> Response:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    responses = exchange(port, raw, head=method == "HEAD", transport=transport)
    assert responses, f"no response to {method} {path}"
    return responses[0]


def one_connection(port: int, requests: list[tuple[str, str, dict[str, str]]]) -> list[Response]:
    """Send `requests` (method, path, headers) one after the other on one
    keep-alive connection; a stray body byte would garble the next response."""
    responses = []
    with connect(port) as sock, sock.makefile("rb") as reader:
        for method, path, headers in requests:
            lines = [
                f"{method} {path} HTTP/1.1",
                "Host: t",
                *(f"{k}: {v}" for k, v in headers.items()),
            ]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            response = read_response(reader, head=method == "HEAD")
            assert response is not None, f"closed before answering {method} {path}"
            responses.append(response)
    return responses


def raw_get(port: int, target: bytes) -> bytes:
    """Everything the server sends for a GET of `target` (any bytes), until it closes."""
    with connect(port) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def recv_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything `sock` receives until EOF or a reset, within `timeout` seconds.

    Returns the bytes and whether the connection really ended (False: timed out)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            return b"".join(chunks), False
        except ConnectionError:
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)


def status_codes(received: bytes) -> list[int]:
    """Every status code in a byte stream of responses (bodies here are plain text)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


async def read_response_async(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response with a Content-Length, read from the
    non-blocking `sock` on the running loop."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError(f"closed inside a head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    assert match is not None, head
    length = int(match.group(1))
    while len(body) < length:
        chunk = await loop.sock_recv(sock, max(65536, length - len(body)))
        if not chunk:
            raise ConnectionError(f"closed after {len(body)} of {length} body bytes")
        body += chunk
    assert len(body) == length, "more bytes than Content-Length"
    return int(head.split(b" ", 2)[1]), body
