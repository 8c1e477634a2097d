"""Servers for the load generator's tests: a scriptable HTTP server that counts what
it sent, run on its own loop in a thread, and hostile peers. (zcserve itself comes
from tests/support/servers.py.)

The scriptable server answers every request the same way (`Behaviour`), after an
optional delay (or a delay of its own per request, in order of arrival, so a
latency distribution is known by construction), and counts requests and body
bytes so tests compare the load generator's figures with the truth; given an
`ssl.SSLContext` it speaks https.
Everything binds 127.0.0.1 port 0 and says when it is ready; nothing waits with a
fixed sleep: a test waits for what a server saw (`ScriptedServer.wait_for`).

Hostile peers for the bounds of the load generator: behaviours that never end a
head, send interim responses or close quietly; a slow acceptor (`accept_interval`,
`backlog`); `stuck_listener` (a full backlog: connects hang); `TrickleServer`
(bytes one by one, for `--raw`).
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.support.timing import READY_TIMEOUT


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
    CLOSE_QUIETLY = "close_quietly"
    """Answer as keep-alive (no `Connection: close`), then close at once: the client's
    next request meets a closed connection before any byte of a response."""
    ENDLESS_HEAD = "endless_head"
    """Begin a head and never end it: one header value that grows, as fast as the
    client reads, until the client leaves."""
    INTERIM = "interim"
    """100 Continue and 103 Early Hints at once, the final response after `delay`."""
    SWITCHING = "switching"
    """101 Switching Protocols (no body), then silence."""


ENDLESS_CHUNK = b"a" * 16384


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
    targets: list[bytes] = field(default_factory=list)
    """The request targets (path and query) as they arrived, the first 1000."""


class _Responder(asyncio.Protocol):
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.endless = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.counts.connections += 1
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.server.counts.alpn.add(ssl_object.selected_alpn_protocol())
        self.server.open.add(self)
        self.server.changed()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            request, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            targets = self.server.counts.targets
            if len(targets) < 1000:
                targets.append(request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"")
            delay = self.server.next_delay()
            if self.server.behaviour is Behaviour.INTERIM and self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 100 Continue\r\n\r\n"
                    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                )
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self.respond)
            else:
                self.respond()
            self.server.changed()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.endless:
            self.flood()

    def flood(self) -> None:
        """ENDLESS_HEAD: more of the header value, until the transport's buffer is full."""
        transport = self.transport
        while not self.paused and transport is not None and not transport.is_closing():
            transport.write(ENDLESS_CHUNK)

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
        server.changed()
        if behaviour is Behaviour.ENDLESS_HEAD:
            self.endless = True
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Endless: ")
            self.flood()
            return
        if behaviour is Behaviour.SWITCHING:
            transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: nothing\r\n\r\n")
            return
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
        if behaviour is Behaviour.CLOSE_QUIETLY:
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
        self.server.changed()


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
        accept_interval: float = 0.0,
        backlog: int = 4096,
    ) -> None:
        self.behaviour = behaviour
        self.body = body
        self.delay = delay
        self.delays = tuple(delays)
        """Seconds before answering the request that arrives i-th (from 0, over every
        connection); requests past the end wait `delay`."""
        self.ssl = ssl
        self.accept_interval = accept_interval
        """A slow acceptor: seconds between two accepts (0: accept at once)."""
        self.backlog = backlog
        self.counts = Counts()
        self._changed = threading.Condition()
        self.open: set[_Responder] = set()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-server", daemon=True)
        self._error: BaseException | None = None

    def changed(self) -> None:
        """The counts changed (on the server's loop): wake `wait_for`."""
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Counts], bool], timeout: float = READY_TIMEOUT) -> bool:
        """Wait (in the test's thread) until `predicate(counts)` holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.counts), timeout)

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
        if self.accept_interval > 0:
            await self._serve_slowly(loop, self._stop)
        else:
            server = await loop.create_server(
                lambda: _Responder(self),
                "127.0.0.1",
                0,
                backlog=self.backlog,
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

    async def _serve_slowly(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        """Accept one connection every `accept_interval` seconds from a `backlog` queue."""
        listener = socket.socket()
        listener.setblocking(False)
        listener.bind(("127.0.0.1", 0))
        listener.listen(self.backlog)
        self.port = listener.getsockname()[1]

        async def accept() -> None:
            while True:
                sock, _ = await loop.sock_accept(listener)
                await loop.connect_accepted_socket(lambda: _Responder(self), sock, ssl=self.ssl)
                await asyncio.sleep(self.accept_interval)  # the pace: behaviour, not a wait

        acceptor = loop.create_task(accept())
        self._ready.set()
        try:
            await stop.wait()
        finally:
            acceptor.cancel()
            await asyncio.gather(acceptor, return_exceptions=True)
            listener.close()

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
def stuck_listener() -> Iterator[int]:
    """A port that takes one connection (the load generator's probe) into a backlog of
    one and never accepts: every later connect hangs (its SYN is dropped)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class TrickleServer:
    """Accepts connections (one at a time) and sends each a byte every `interval`
    seconds, `limit` bytes in all, then closes: a download that never ends in time
    (but does end, so a client without a whole-transfer deadline still returns)."""

    def __init__(self, *, interval: float = 0.05, limit: int = 100) -> None:
        self.interval = interval
        self.limit = limit
        self.sent = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickle-server", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                for _ in range(self.limit):
                    if self._stop.wait(self.interval):  # the pace: behaviour, not a wait
                        break
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        break
                    self.sent += 1

    def __enter__(self) -> TrickleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(READY_TIMEOUT)
        self.listener.close()


class StallingTLSServer:
    """Completes the TLS handshake of the first connection (the load generator's
    probe), then accepts every later one and never reads from it: their handshakes
    stall. Counts the stalled connections; closes everything on exit."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.stalled = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stalling-tls", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/file"

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            if not first:
                self._held.append(conn)
                self.stalled += 1
                continue
            first = False
            conn.settimeout(READY_TIMEOUT)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)  # the probe's close_notify (or its close)
            except OSError:
                pass

    def __enter__(self) -> StallingTLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(READY_TIMEOUT)
        for conn in self._held:
            conn.close()
        self.listener.close()
