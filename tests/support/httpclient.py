"""A deliberately small blocking HTTP/1.1 client for tests: exact bytes out,
exact responses back, nothing hidden."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from tests.conftest import Transport

TIMEOUT = 20.0


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
    port: int, host: str = "127.0.0.1", *, transport: Transport | None = None
) -> socket.socket:
    """A connected socket; over `transport` (TLS, say) when given, handshake done."""
    if transport is not None:
        assert host == "127.0.0.1", "a transport connects to 127.0.0.1"
        return transport.connect(port, TIMEOUT)
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
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
