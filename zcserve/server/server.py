"""The server: the listening socket, the accept loop and each connection's life.

This is the only server-side module that owns sockets and the event loop. A
connection reads into one small reused buffer, feeds the sans-I/O parser, answers
requests in order (pipelining), and hands file bodies to the copy strategy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from zcserve.errors import (
    ConfigError,
    FileShrankError,
    HttpError,
    SendStalledError,
    TransferError,
)
from zcserve.runtime import loop_factory, raise_nofile_limit
from zcserve.server.accesslog import AccessLog
from zcserve.server.config import ServerConfig
from zcserve.server.filecache import OpenFileCache
from zcserve.server.files import OpenedFile, Root
from zcserve.server.http import (
    Limits,
    Request,
    RequestParser,
    error_body,
    error_response,
    without_keep_alive,
)
from zcserve.server.metrics import (
    SNAPSHOT_INTERVAL,
    Metrics,
    MetricsEndpoint,
    SnapshotWriter,
    parse_address,
)
from zcserve.server.respond import plan_reply
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import AutoStrategy, CopyOptions, CopyStrategy, make_strategy
from zcserve.server.tls import TlsStream, server_context

log = logging.getLogger("zcserve")

RECV_BUFFER = 8 * 1024
"""Per-connection receive buffer, reused for every read. It is resident for the
connection's whole life (bytearray zero-fills it), so it is sized like nginx's
large_client_header_buffers (8k), not uvicorn's 64 KiB: 10,000 idle connections
then cost about 80 MiB here rather than 640 MiB. Longer heads take several reads."""
FILE_SWEEP_INTERVAL = 0.5
"""Seconds between closing the open-file cache's idle descriptors."""
ACCEPT_BACKOFF = 0.1
"""Seconds to wait before accepting again when the process is out of descriptors."""
EMFILE_LOG_INTERVAL = 60.0
"""Seconds between two "backing off" warnings: a server hovering at its descriptor
limit fails and succeeds alternately, and must not log once per failure."""

_PEER_GONE = (TransferError, OSError)
"""A peer that left, stalled or broke: TimeoutError and ConnectionError are OSErrors."""


def bind(
    host: str, port: int, backlog: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A non-blocking listening socket, or `ConfigError` saying why not. Without
    `listen` the socket only holds the port (the supervisor's placeholder)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


@dataclass(slots=True)
class _Connection:
    """What shutdown needs to know of a connection: is a response in flight?"""

    busy: bool = False


class Server:
    """Serves one root with one copy strategy on a listening socket it is given."""

    def __init__(self, config: ServerConfig, *, snapshot_dir: str | None = None) -> None:
        self.config = config
        self.snapshot_dir = snapshot_dir
        self.root = Root(config.root, listing=config.listing)
        # A tenth of the descriptor limit at most, so the cache never starves accept.
        capacity = min(config.open_file_cache, raise_nofile_limit() // 10)
        self.files = OpenFileCache(self.root, capacity)
        self.strategy = make_strategy(
            config.strategy, CopyOptions(config.chunk_size, config.sendfile_chunk)
        )
        self.limits = Limits(
            max_request_line=config.max_request_line,
            max_header_bytes=config.max_header_bytes,
            max_header_count=config.max_headers,
            max_pipelined=config.max_pipelined,
        )
        self.access_log = AccessLog.open(config.access_log)
        self.tls = _tls_context(config)
        self.metrics = Metrics()
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._closing = False
        self._stop: asyncio.Event | None = None
        self._capacity: asyncio.Event | None = None
        self._emfile_warned = -EMFILE_LOG_INTERVAL

    # lifecycle ------------------------------------------------------------------

    async def serve(self, listener: socket.socket) -> None:
        """Accept until `shutdown`, then drain in-flight responses for `grace` seconds."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self.shutdown)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        accepter = asyncio.create_task(self._accept_loop(loop, listener))
        snapshots = self._start_snapshots()
        sweeper = asyncio.create_task(self._sweep_files())
        await self._stop.wait()
        accepter.cancel()
        listener.close()
        await asyncio.gather(accepter, return_exceptions=True)
        await self._drain()
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        self.files.clear()
        self.access_log.close()
        if snapshots is not None:
            snapshots.cancel()
            await asyncio.gather(snapshots, return_exceptions=True)

    async def _sweep_files(self) -> None:
        while True:
            await asyncio.sleep(FILE_SWEEP_INTERVAL)
            self.files.sweep()

    def _start_snapshots(self) -> asyncio.Task[None] | None:
        """Under a supervisor, write this worker's metrics where it can merge them."""
        if self.snapshot_dir is None:
            return None
        writer = SnapshotWriter(self.snapshot_dir, self.metrics)

        async def keep_writing() -> None:
            try:
                while True:
                    writer.write()
                    await asyncio.sleep(SNAPSHOT_INTERVAL)
            finally:
                writer.write()

        return asyncio.create_task(keep_writing())

    async def exposition(self) -> str:
        """The metrics page, rendered on the loop that owns the counters."""
        return self.metrics.exposition()

    def shutdown(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        if self._closing:
            return
        self._closing = True
        log.info("shutting down: %d connections open", len(self._connections))
        for task, state in self._connections.items():
            if not state.busy:
                task.cancel()
        if self._stop is not None:
            self._stop.set()

    async def _drain(self) -> None:
        tasks = list(self._connections)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.config.grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _accept_loop(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        assert self._capacity is not None
        handler = self._serve_raw if self.config.raw_file else self._serve_http
        while True:
            if len(self._connections) >= self.config.max_connections:
                # Leave the rest in the kernel's backlog until a connection closes.
                self._capacity.clear()
                await self._capacity.wait()
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if loop.time() - self._emfile_warned >= EMFILE_LOG_INTERVAL:
                        log.warning("accept: %s; backing off", os.strerror(exc.errno))
                        self._emfile_warned = loop.time()
                    await asyncio.sleep(ACCEPT_BACKOFF)
                    continue
                if exc.errno in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL):
                    raise  # the listener itself is gone
                # accept(2) says to retry on network errors (ENETDOWN, EPERM from a
                # firewall, ...): one lost connection must not stop the server.
                log.debug("accept: %s", exc)
                continue
            try:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                _close_socket(sock)
                continue
            state = _Connection()
            self.metrics.connections_total += 1
            self.metrics.active_connections += 1
            task = loop.create_task(handler(sock, state))
            self._connections[task] = state
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)
        self.metrics.active_connections -= 1
        if self._capacity is not None and len(self._connections) < self.config.max_connections:
            self._capacity.set()

    # one connection ---------------------------------------------------------------

    async def _open_stream(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop
    ) -> SocketStream:
        if self.tls is None:
            return SocketStream(sock, loop, send_timeout=self.config.send_timeout)
        stream = TlsStream(sock, loop, self.tls, send_timeout=self.config.send_timeout)
        async with asyncio.timeout(self.config.header_timeout):
            await stream.handshake()
        return stream

    async def _serve_http(self, sock: socket.socket, state: _Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            stream = await self._open_stream(sock, loop)
        except _PEER_GONE as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake with %s failed: %s", _peer_host(sock), exc)
            _close_socket(sock)
            return
        parser = RequestParser(self.limits)
        buffer = bytearray(RECV_BUFFER)
        view = memoryview(buffer)
        pending: deque[Request | HttpError] = deque()
        peer = _peer_host(sock)
        # The first head must arrive within the header timeout of the accept.
        head_deadline: float | None = loop.time() + self.config.header_timeout
        try:
            while not self._closing or pending:
                if not pending:
                    received = stream.recv_ready(buffer)
                    if received is None and head_deadline is not None:
                        async with asyncio.timeout_at(head_deadline):
                            received = await stream.recv_into(buffer)
                    elif received is None:
                        async with asyncio.timeout(self.config.keepalive_timeout):
                            received = await stream.recv_into(buffer)
                    if received == 0:
                        return
                    pending.extend(parser.feed(view[:received]))
                    if parser.in_head:
                        if head_deadline is None:
                            head_deadline = loop.time() + self.config.header_timeout
                    else:
                        head_deadline = None
                    continue
                item = pending.popleft()
                if isinstance(item, HttpError):
                    self.metrics.response(item.status, 0.0)
                    await stream.send_all(error_response(item.status, keep_alive=False))
                    self.access_log.write(peer, None, item.status, len(error_body(item.status)))
                    await _linger(stream, buffer)
                    return
                state.busy = True
                keep_alive = await self._respond(stream, item, peer)
                state.busy = False
                if not keep_alive:
                    return
        except TimeoutError:
            self.metrics.error("timeout")
            log.debug("connection from %s timed out", peer)
        except _PEER_GONE as exc:
            self.metrics.error(_error_kind(exc))
            log.debug("connection from %s ended: %s", peer, exc)
        except Exception:
            self.metrics.error("internal")
            # A bug between responses costs this connection only, never the server;
            # `_respond` handles its own, so no response is half sent here.
            log.exception("unexpected error on the connection from %s", peer)
            with contextlib.suppress(*_PEER_GONE):
                await stream.send_all(error_response(500, keep_alive=False))
        finally:
            view.release()
            _close_socket(sock)

    async def _respond(self, stream: SocketStream, request: Request, peer: str) -> bool:
        """Answer one request; return whether the connection may carry another."""
        sent_before = stream.bytes_sent
        started = stream.loop.time()
        try:
            if self._closing:  # say so, rather than drop the connection unannounced
                request = without_keep_alive(request)
            reply = plan_reply(request, self.files)
        except Exception:
            # Nothing is sent yet, so any failure, an OSError from the file system
            # included, is the server's own: a 500, not the silence of a lost peer.
            return await self._fail(stream, request, peer, sent_before)
        try:
            if reply.file is not None:
                strategy = self._strategy_for(stream)
                await stream.send_all(reply.head, more=self.config.cork)
                body_start = stream.bytes_sent
                try:
                    await strategy.send(stream, reply.file, reply.offset, reply.count)
                finally:
                    self.metrics.sent(strategy.name, stream.bytes_sent - body_start)
            else:
                await stream.send_all(reply.head + reply.body if reply.body else reply.head)
        except _PEER_GONE:
            raise
        except Exception:
            return await self._fail(stream, request, peer, sent_before, len(reply.head))
        finally:
            reply.close()
        body_sent = stream.bytes_sent - sent_before - len(reply.head)
        self.metrics.response(reply.status, stream.loop.time() - started)
        self.access_log.write(peer, request, reply.status, body_sent)
        return reply.keep_alive and not self._closing

    def _strategy_for(self, stream: SocketStream) -> CopyStrategy:
        if isinstance(self.strategy, AutoStrategy):
            chosen = self.strategy.choose(stream)
            if chosen is self.strategy.fallback:
                self.metrics.fallbacks += 1
            return chosen
        return self.strategy

    async def _fail(
        self, stream: SocketStream, request: Request, peer: str, sent_before: int, head: int = 0
    ) -> bool:
        """Log the exception being handled with its traceback; answer 500 if nothing of
        the response is sent yet. The connection must close either way."""
        log.exception("unexpected error answering %s %r", request.method, request.target)
        self.metrics.error("internal")
        self.metrics.response(500, 0.0)
        if stream.bytes_sent == sent_before:
            await stream.send_all(error_response(500, keep_alive=False))
            self.access_log.write(peer, request, 500, len(error_body(500)))
        else:
            self.access_log.write(peer, request, 500, stream.bytes_sent - sent_before - head)
        return False

    async def _serve_raw(self, sock: socket.socket, state: _Connection) -> None:
        """The classic experiment: no HTTP; send the whole file, then close."""
        assert self.config.raw_file is not None
        loop = asyncio.get_running_loop()
        stream = SocketStream(sock, loop, send_timeout=self.config.send_timeout)
        state.busy = True
        file: OpenedFile | None = None
        try:
            fd = os.open(self.config.raw_file, os.O_RDONLY | os.O_CLOEXEC)
            file = OpenedFile(
                fd, os.path.basename(self.config.raw_file), os.fstat(fd).st_size, 0, 0
            )
            if file.size:
                await self.strategy.send(stream, file, 0, file.size)
        except _PEER_GONE as exc:  # out of descriptors (EMFILE) included: close, go on
            log.debug("raw transfer ended early: %s", exc)
        finally:
            if file is not None:
                file.close()
            _close_socket(sock)


LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024


async def _linger(stream: SocketStream, buffer: bytearray) -> None:
    """Close the way nginx's lingering_close does: after an error the client may
    still be sending; closing with unread input makes the kernel send a reset that
    can destroy the error response in flight (RFC 9112 9.6). Stop sending, then
    read and discard for a short, capped while."""
    try:
        stream.sock.shutdown(socket.SHUT_WR)
        drained = 0
        async with asyncio.timeout(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                received = stream.recv_ready(buffer)
                if received is None:
                    received = await stream.recv_into(buffer)
                if not received:
                    return
                drained += received
    except (TimeoutError, OSError):
        return


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, FileShrankError):
        return "file_shrank"
    if isinstance(exc, SendStalledError):
        return "send_stalled"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionError):
        return "reset"
    return "io"


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        return server_context(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from None


def _peer_host(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "-"
    return str(peer[0]) if isinstance(peer, tuple) else "-"


def _close_socket(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:  # pragma: no cover - close on a dead socket
        pass


Announce = Callable[[str, str | None], object]
"""Called once the server listens, with its URL and its metrics URL (or None)."""


def run(
    config: ServerConfig,
    *,
    announce: Announce | None = None,
    reuse_port: bool = False,
    snapshot_dir: str | None = None,
) -> int:
    """Bind, serve until SIGINT/SIGTERM, return 0. `announce` hears the URLs once
    listening; `snapshot_dir` is where a supervised worker leaves its metrics."""
    raise_nofile_limit()
    factory = loop_factory(config.loop)
    listener = bind(config.host, config.port, config.backlog, reuse_port=reuse_port)
    server = Server(config, snapshot_dir=snapshot_dir)
    started = time.monotonic()
    with asyncio.Runner(loop_factory=factory) as runner:
        endpoint = None
        if config.metrics is not None:
            loop = runner.get_loop()
            endpoint = MetricsEndpoint(
                parse_address(config.metrics),
                lambda: asyncio.run_coroutine_threadsafe(server.exposition(), loop).result(10),
            ).start()
        if announce is not None:
            scheme = "https" if config.tls else "http"
            announce(url_of(listener, scheme), endpoint.url if endpoint is not None else None)
        try:
            runner.run(server.serve(listener))
        finally:
            if endpoint is not None:
                endpoint.stop()
    log.info("stopped after %.1fs", time.monotonic() - started)
    sys.stdout.flush()
    return 0
