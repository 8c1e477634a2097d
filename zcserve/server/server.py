"""The server: the listening socket, accept, shutdown and drain.

Each accepted socket's life belongs to `connection`; this module decides when
connections start and how they end as a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

from zcserve.errors import ConfigError
from zcserve.runtime import loop_factory, raise_nofile_limit
from zcserve.server.accesslog import AccessLog
from zcserve.server.config import MEMORY_CACHE_DEFAULT, ServerConfig
from zcserve.server.connection import HttpConnection, close_socket
from zcserve.server.decorate import make_planner
from zcserve.server.filecache import MemoryCache, OpenFileCache
from zcserve.server.files import OpenedFile, Root
from zcserve.server.http import Limits, plain_http_on_tls_port
from zcserve.server.listing import RenderedPage
from zcserve.server.metrics import (
    SNAPSHOT_INTERVAL,
    Metrics,
    MetricsEndpoint,
    SnapshotWriter,
    parse_address,
)
from zcserve.server.outbox import Outbox
from zcserve.server.respond import ListingPending
from zcserve.server.sockio import SocketStream, bind, url_of
from zcserve.server.strategies import CopyOptions, ReadAllStrategy, make_strategy
from zcserve.server.tls import TlsHandshake, TlsStream, server_context

log = logging.getLogger("zcserve")

DEADLINE_TICK = 0.25
"""Seconds between two checks of connection deadlines: a timeout fires up to this
late (nginx's timer_resolution plays the same part)."""
FILE_SWEEP_INTERVAL = 0.5
"""Seconds between closing the open-file cache's idle descriptors."""
ACCEPT_BATCH = 64
"""Connections accepted per wake-up at most, so a flood cannot starve the others."""
ACCEPT_BACKOFF = 0.1
"""Seconds to wait before accepting again when the process is out of descriptors."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each one stops accepting and drains. SIGHUP too: its default action would kill
the process mid-response (a closed terminal, or a supervisor told to reload), and
zcserve has no configuration to reload. See `stop_signals`."""
LISTING_THREADS = 1
"""Listings rendered at once, in a pool of their own. One: a second rendering
thread competes with the loop's for the GIL and the cores, and doubled the
slowest wait of a small request beside ten large listings (BENCHMARKS §10)."""
EMFILE_LOG_INTERVAL = 60.0
"""Seconds between two "backing off" warnings: a server hovering at its descriptor
limit fails and succeeds alternately, and must not log once per failure."""


_paused_by = 0
_pause_lock = threading.Lock()


def _collector_paused(build: Callable[[], RenderedPage]) -> RenderedPage:
    """`build()` with the cyclic collector off. A large listing makes 100,000
    objects; each full collection they set off held the GIL for 10-50 ms, and the
    loop's thread waited. What it makes is freed by reference counts anyway."""
    global _paused_by
    with _pause_lock:
        _paused_by += 1
        gc.disable()
    try:
        return build()
    finally:
        with _pause_lock:
            _paused_by -= 1
            if not _paused_by:
                gc.enable()


def stop_signals() -> tuple[int, ...]:
    """The `STOP_SIGNALS` to handle: all of them, except SIGHUP when it was ignored
    when the process started (`nohup`), which means "keep running after a hangup"."""
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return tuple(s for s in STOP_SIGNALS if s != signal.SIGHUP)
    return STOP_SIGNALS


class Server:
    """Serves one root with one copy strategy on a listening socket it is given."""

    def __init__(self, config: ServerConfig, *, snapshot_dir: str | None = None) -> None:
        self.config = config
        self.snapshot_dir = snapshot_dir
        self.root = Root(
            config.root,
            listing=config.listing,
            hidden=config.hidden,
            listing_max=config.listing_max,
        )
        # A tenth of the descriptor limit at most, so the cache never starves accept.
        capacity = min(config.open_file_cache, raise_nofile_limit() // 10)
        memory = None
        if config.strategy == "memory" or config.memory_cache is not None:
            memory = MemoryCache(
                config.memory_cache or MEMORY_CACHE_DEFAULT, config.memory_file_max
            )
        self.files = OpenFileCache(self.root, capacity, valid=config.cache_valid, memory=memory)
        self.strategy = make_strategy(
            config.strategy,
            CopyOptions(
                config.chunk_size, config.sendfile_chunk, config.readall_max, config.readall_budget
            ),
        )
        self.limits = Limits(
            max_request_line=config.max_request_line,
            max_header_bytes=config.max_header_bytes,
            max_header_count=config.max_headers,
            max_pipelined=config.max_pipelined,
        )
        self.access_log = AccessLog.open(config.access_log, config.access_log_format)
        self.plan = make_planner(
            config.headers,
            cors=config.cors,
            max_ranges=config.max_ranges,
            precompressed=config.precompressed,
        )
        self.tls = _tls_context(config)
        self.metrics = Metrics()
        if isinstance(self.strategy, ReadAllStrategy):
            self.strategy.on_held = self._readall_held
        self.metrics_on = config.metrics is not None or snapshot_dir is not None
        self.timed = self.metrics_on or self.access_log.timed
        self.repeats = not config.precompressed
        self.outbox = Outbox()
        """Answers made in this loop pass, sent together at its end."""
        self._connections: set[HttpConnection | TlsHandshake] = set()
        """Every open connection, a TLS handshake included: the one registry."""
        self.closing = False
        self._stop: asyncio.Event | None = None
        self._listener: socket.socket | None = None
        self._accepting = False
        self._all_closed: asyncio.Event | None = None
        self._emfile_warned = -EMFILE_LOG_INTERVAL
        self._listing_threads: ThreadPoolExecutor | None = None
        self._listings_rendering: dict[Hashable, asyncio.Future[RenderedPage]] = {}

    def render_listing(self, pending: ListingPending) -> asyncio.Future[RenderedPage]:
        """Render a listing page in a thread of its own pool (not the default one,
        which `readwrite` reads files in); requests for the same page share it."""
        rendering = self._listings_rendering.get(pending.key)
        if rendering is not None:
            return rendering
        if self._listing_threads is None:
            self._listing_threads = ThreadPoolExecutor(
                LISTING_THREADS, thread_name_prefix="zcserve-listing"
            )
        rendering = asyncio.get_running_loop().run_in_executor(
            self._listing_threads, _collector_paused, pending.build
        )
        self._listings_rendering[pending.key] = rendering

        def keep(done: asyncio.Future[RenderedPage]) -> None:
            del self._listings_rendering[pending.key]
            if not done.cancelled() and done.exception() is None:
                pending.keep(done.result())

        rendering.add_done_callback(keep)
        return rendering

    def _readall_held(self, held: int) -> None:
        self.metrics.readall_held = held

    # lifecycle ------------------------------------------------------------------

    async def serve(
        self, listener: socket.socket, *, ready: Callable[[], object] | None = None
    ) -> None:
        """Accept until `shutdown`, then drain in-flight responses for `grace` seconds.

        `ready` is called once the stop signals are handled, so whoever hears of it
        may signal at once: the signal is never lost to a default action."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._loop = loop
        self._listener = listener
        self._all_closed = asyncio.Event()
        for signum in stop_signals():
            try:
                loop.add_signal_handler(signum, self.shutdown)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        self._accept_when_ready()
        if ready is not None:
            ready()
        snapshots = self._start_snapshots()
        sweeper = asyncio.create_task(self._sweep())
        await self._stop.wait()
        self._pause_accepting()
        self._listener = None
        listener.close()
        await self._drain()
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        self.files.clear()
        self.access_log.close()
        if self._listing_threads is not None:
            self._listing_threads.shutdown(wait=False, cancel_futures=True)
        if snapshots is not None:
            snapshots.cancel()
            await asyncio.gather(snapshots, return_exceptions=True)

    async def _sweep(self) -> None:
        """The one timer of a server, as nginx's timer resolution: every tick, close
        the connections past their deadline; now and then, idle cached files."""
        loop = asyncio.get_running_loop()
        ticks_per_file_sweep = max(1, round(FILE_SWEEP_INTERVAL / DEADLINE_TICK))
        tick = 0
        while True:
            await asyncio.sleep(DEADLINE_TICK)
            now = loop.time()
            for connection in [c for c in self._connections if c.deadline <= now]:
                connection.check_deadline(now)
            tick += 1
            if tick % ticks_per_file_sweep == 0:
                self.files.sweep()
            memory = self.files.memory
            if memory is not None:
                self.metrics.memory_held = memory.held
                self.metrics.memory_evictions = memory.evictions

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

    def shutdown(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        if self.closing:
            return
        self.closing = True
        log.info("shutting down: %d connections open", self._open_connections())
        for connection in [c for c in self._connections if not c.busy]:
            connection.close()
        if self._stop is not None:
            self._stop.set()

    def _open_connections(self) -> int:
        return len(self._connections)

    async def _drain(self) -> None:
        """Let responses in flight finish for `grace` seconds, then cut them."""
        assert self._all_closed is not None
        if self._open_connections():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.grace):
                    await self._all_closed.wait()
        for connection in list(self._connections):
            connection.close()
        # A connection whose body coroutine was cancelled closes when it lets go.
        for _ in range(100):
            if not self._connections:
                break
            await asyncio.sleep(0.01)

    # accepting ------------------------------------------------------------------

    def _accept_when_ready(self) -> None:
        if not self._accepting and self._listener is not None and not self.closing:
            self._loop.add_reader(self._listener.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting and self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._accepting = False

    def _accept(self) -> None:
        """Accept what the backlog holds, up to a batch; a callback, as connections are."""
        listener = self._listener
        assert listener is not None
        for _ in range(ACCEPT_BATCH):
            if self._open_connections() >= self.config.max_connections:
                # Leave the rest in the kernel's backlog until a connection closes.
                self._pause_accepting()
                return
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    now = self._loop.time()
                    if now - self._emfile_warned >= EMFILE_LOG_INTERVAL:
                        log.warning("accept: %s; backing off", os.strerror(exc.errno))
                        self._emfile_warned = now
                    self._pause_accepting()
                    self._loop.call_later(ACCEPT_BACKOFF, self._accept_when_ready)
                    return
                if exc.errno in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL):
                    log.error("accept: the listening socket is gone (%s)", exc)
                    self._pause_accepting()
                    return
                # accept(2) says to retry on network errors (ENETDOWN, EPERM from a
                # firewall, ...): one lost connection must not stop the server.
                log.debug("accept: %s", exc)
                continue
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: object) -> None:
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            close_socket(sock)
            return
        self.metrics.connections_total += 1
        self.metrics.active_connections += 1
        peer = str(address[0]) if isinstance(address, tuple) else "-"
        # One header deadline, counted from the accept, covers the first byte, the TLS
        # handshake and the first head.
        deadline = self._loop.time() + self.config.header_timeout
        if self.tls is not None:
            handshake = TlsHandshake(
                sock,
                self._loop,
                self.tls,
                deadline=deadline,
                send_timeout=self.config.send_timeout,
                peer=peer,
                on_ready=self._handshaken,
                on_plain=self._refuse_plain_http,
                on_close=self._forget,
                count_error=self.metrics.error,
            )
            self._connections.add(handshake)
            handshake.start()
            return
        connection = self._connection(self._stream(sock), peer, deadline)
        if self.config.raw_file is None:
            connection.start()
            return
        try:
            file = _open_raw(self.config.raw_file)
        except OSError as exc:  # out of descriptors (EMFILE) included: close, go on
            log.debug("raw transfer not started: %s", exc)
            connection.close()
            return
        connection.start_raw(file)

    def _stream(self, sock: socket.socket) -> SocketStream:
        return SocketStream(sock, self._loop, send_timeout=self.config.send_timeout)

    def _connection(self, stream: SocketStream, peer: str, deadline: float) -> HttpConnection:
        connection = HttpConnection(self, stream, self._forget, peer, deadline=deadline)
        self._connections.add(connection)
        return connection

    def _handshaken(self, handshake: TlsHandshake, stream: TlsStream) -> None:
        """The TLS handshake is done: the connection core takes the stream over."""
        self._connections.discard(handshake)
        self._connection(stream, handshake.peer, handshake.deadline).start()

    def _refuse_plain_http(self, handshake: TlsHandshake) -> None:
        """Plain HTTP on the TLS port: answer as nginx does, with a 400 in clear text,
        rather than a handshake failure the client cannot read; then close."""
        self._connections.discard(handshake)
        stream = self._stream(handshake.sock)
        self._connection(stream, handshake.peer, handshake.deadline).refuse(
            plain_http_on_tls_port()
        )

    def _forget(self, connection: HttpConnection | TlsHandshake) -> None:
        self._connections.discard(connection)
        self.metrics.active_connections -= 1
        open_now = self._open_connections()
        if open_now < self.config.max_connections:
            self._accept_when_ready()
        if self._all_closed is not None and self.closing and open_now == 0:
            self._all_closed.set()


def _open_raw(path: str) -> OpenedFile:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return OpenedFile(fd, os.path.basename(path), os.fstat(fd).st_size, 0, 0)


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        return server_context(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from None


Announce = Callable[[str, str | None], object]
"""Called once the server listens, with its URL and its metrics URL (or None)."""


def run(
    config: ServerConfig,
    *,
    announce: Announce | None = None,
    reuse_port: bool = False,
    snapshot_dir: str | None = None,
    supervisor_pipe: int | None = None,
) -> int:
    """Bind, serve until SIGINT/SIGTERM/SIGHUP, return 0. `announce` hears the URLs
    once listening; `snapshot_dir` is where a supervised worker leaves its metrics;
    end of file on `supervisor_pipe` means the supervisor is gone: drain and exit."""
    raise_nofile_limit()
    factory = loop_factory(config.loop)
    listener = bind(config.host, config.port, config.backlog, reuse_port=reuse_port)
    server = Server(config, snapshot_dir=snapshot_dir)
    endpoint = None
    if config.metrics is not None:
        # Served on the server's own loop, which owns the counters it reads.
        endpoint = MetricsEndpoint(parse_address(config.metrics), server.metrics.exposition)
    scheme = "https" if config.tls else "http"

    def listening() -> None:
        if announce is not None:
            announce(url_of(listener, scheme), endpoint.url if endpoint is not None else None)

    async def serve() -> None:
        if endpoint is not None:
            await endpoint.open()
        if supervisor_pipe is not None:
            _shutdown_on_eof(supervisor_pipe, server)
        try:
            await server.serve(listener, ready=listening)
        finally:
            if endpoint is not None:
                await endpoint.close()

    started = time.monotonic()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve())
    log.info("stopped after %.1fs", time.monotonic() - started)
    sys.stdout.flush()
    return 0


def _shutdown_on_eof(fd: int, server: Server) -> None:
    """Shut `server` down when `fd` (a pipe nobody writes to) reaches end of file."""
    loop = asyncio.get_running_loop()

    def gone() -> None:
        loop.remove_reader(fd)
        server.shutdown()

    loop.add_reader(fd, gone)
