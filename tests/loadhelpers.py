"""Servers for the load generator's tests: a scriptable HTTP server that counts what
it sent, run on its own loop in a thread, and `zcserve serve` as a child process.

The scriptable server answers every request the same way (`Behaviour`), after an
optional delay (or a delay of its own per request, in order of arrival, so a
latency distribution is known by construction), and counts requests and body
bytes so tests compare the load generator's figures with the truth; given an
`ssl.SSLContext` it speaks https.
Everything binds 127.0.0.1 port 0 and says when it is ready; nothing waits with a
fixed sleep.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from zcserve.bench.child import start_serve

READY_TIMEOUT = 10.0


class Behaviour(enum.Enum):
    OK = "ok"
    STATUS_500 = "status_500"
    CLOSE_MID_BODY = "close_mid_body"
    LONG_BODY = "long_body"
    CHANGING_BODY = "changing_body"
    """Each response's first 8 bytes are its number: every body differs from the first."""
    LAST_BYTE_CHANGES = "last_byte_changes"
    """The first response carries `body`; every later one differs in its last byte only."""
    CHUNKED = "chunked"
    SILENT = "silent"
    """Read requests, never answer: the client must time out."""
    HANG_UP = "hang_up"
    """Close the connection as soon as a request arrives: the client sees a reset."""
    CLOSE_AFTER = "close_after"
    """Answer with `Connection: close` and close: every request needs a new connection."""


@dataclass
class Counts:
    requests: int = 0
    """Responses begun (a response cut short counts too)."""
    received: int = 0
    """Requests read, answered or not; numbers them in order of arrival."""
    body_bytes: int = 0
    connections: int = 0
    """Connections made; with TLS, handshakes the server completed."""
    peers: set[str] = field(default_factory=set)
    """Source addresses that sent requests."""
    alpn: set[str | None] = field(default_factory=set)
    """With TLS: the ALPN protocols the connections agreed on."""


class _Responder(asyncio.Protocol):
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.counts.connections += 1
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.server.counts.alpn.add(ssl_object.selected_alpn_protocol())
        self.server.open.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            delay = self.server.next_delay()
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self.respond)
            else:
                self.respond()

    def respond(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        server = self.server
        behaviour = server.behaviour
        if behaviour is Behaviour.SILENT:
            return
        if behaviour is Behaviour.HANG_UP:
            transport.close()
            return
        counts = server.counts
        counts.requests += 1
        counts.peers.add(transport.get_extra_info("peername")[0])
        body = server.body
        if behaviour is Behaviour.CHANGING_BODY:
            body = counts.requests.to_bytes(8, "big") + body[8:]
        elif behaviour is Behaviour.LAST_BYTE_CHANGES and counts.requests > 1:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        status = "500 Internal Server Error" if behaviour is Behaviour.STATUS_500 else "200 OK"
        if behaviour is Behaviour.CHUNKED:
            half = len(body) // 2
            chunks = b"".join(
                f"{len(part):x}\r\n".encode() + part + b"\r\n"
                for part in (body[:half], body[half:])
                if part
            )
            head = f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            counts.body_bytes += len(body)
            transport.write(head + chunks + b"0\r\n\r\n")
            return
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if behaviour is Behaviour.CLOSE_AFTER:
            head = head[:-2] + b"Connection: close\r\n\r\n"
            counts.body_bytes += len(body)
            transport.write(head + body)
            transport.close()
            return
        if behaviour is Behaviour.CLOSE_MID_BODY:
            sent = body[: len(body) // 2]
            counts.body_bytes += len(sent)
            transport.write(head + sent)
            transport.close()
            return
        counts.body_bytes += len(body)
        extra = b"EXTRA BYTES" if behaviour is Behaviour.LONG_BODY else b""
        transport.write(head + body + extra)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.open.discard(self)


class ScriptedServer:
    """An HTTP/1.1 server on its own loop in a thread; use as a context manager."""

    def __init__(
        self,
        behaviour: Behaviour = Behaviour.OK,
        *,
        body: bytes = b"x" * 4096,
        delay: float = 0,
        delays: Sequence[float] = (),
        ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.body = body
        self.delay = delay
        self.delays = tuple(delays)
        """Seconds before answering the request that arrives i-th (from 0, over every
        connection); requests past the end wait `delay`."""
        self.ssl = ssl
        self.counts = Counts()
        self.open: set[_Responder] = set()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-server", daemon=True)
        self._error: BaseException | None = None

    def next_delay(self) -> float:
        """The delay of the request that just arrived (on the server's loop)."""
        index = self.counts.received
        self.counts.received += 1
        return self.delays[index] if index < len(self.delays) else self.delay

    @property
    def url(self) -> str:
        scheme = "http" if self.ssl is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}/file"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by __enter__ / __exit__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        server = await loop.create_server(
            lambda: _Responder(self),
            "127.0.0.1",
            0,
            backlog=4096,
            reuse_address=True,
            ssl=self.ssl,
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        await server.wait_closed()
        for responder in list(self.open):
            if responder.transport is not None:
                responder.transport.abort()
        for _ in range(100):  # connection_lost runs on the next loop iterations
            if not self.open:
                break
            await asyncio.sleep(0)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT):
            raise RuntimeError("scripted server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(READY_TIMEOUT)
        if self._error is not None:
            raise self._error


@contextmanager
def refused_port() -> Iterator[int]:
    """A port nobody listens on, held (bound, not listening) so nobody takes it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextmanager
def zcserve_child(*args: str) -> Iterator[str]:
    """Run `python -m zcserve serve ARGS --port 0`; yield its URL; stop it by PID."""
    with start_serve([*args, "--port", "0"], stderr=subprocess.DEVNULL) as child:
        yield child.url


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for CN=localhost, IP 127.0.0.1 and DNS localhost."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        context.set_alpn_protocols(["http/1.1"])
        return context


def make_certificate(folder: Path, name: str = "localhost") -> Certificate:
    """A fresh self-signed certificate and key in `folder`, made by the openssl command."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Certificate(cert=cert, key=key)
