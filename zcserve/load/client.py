"""One process's share of a load run: its connections, their request loops, its counters.

Everything on the hot path is a callback, not a coroutine: a response completes
in `data_received`, the next request is written from there (closed model) or from
a timer at its intended time (open model). Coroutines only connect.

Latency runs from `min(intended, sent)`: in the closed model the request is sent
the moment it is intended; in the open model a request delayed by a busy
connection still counts from its slot in the schedule (wrk2's correction for
coordinated omission), while one that a coarse timer (uvloop's are in whole
milliseconds) fires slightly early counts from when it really left.

A TLS handshake is timed on its own (`LiveStats.handshake`) and kept out of the
request latency: a request that had to reconnect first counts from its start
moved later by the handshake's duration (the TCP connect stays in, as without TLS).
Initial connections' handshakes count in the measurement unless there is a warm-up.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from zcserve.load.http import ResponseError, ResponseReader
from zcserve.load.plan import Route, WorkerPlan
from zcserve.load.stats import LiveStats, LoadResult
from zcserve.load.tls import HandshakeError, client_context
from zcserve.runtime import cpu_seconds

CONNECT_BACKOFF = 0.01
"""Seconds to wait after a failed connect before the next attempt, so a dead
server costs a few hundred attempts a second per connection, not a busy loop."""
PROGRESS_INTERVAL = 0.25
"""Seconds between progress reports, timeout sweeps and histogram flushes."""
CLOSE_WAIT = 1.0
"""Seconds to wait at the end for closed connections to release their sockets."""
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_now = time.monotonic


class WorkerLink(Protocol):
    """How a worker talks to whoever started it (the same process or the parent)."""

    def attach(self, stop: Callable[[], None]) -> None:
        """Remember how to stop the worker early (Ctrl-C in the parent)."""

    def ready(self) -> None:
        """Every connection is open (or failed); waiting for the start signal."""

    async def wait_go(self) -> float:
        """Wait for the start signal; return the shared start time (`time.monotonic`)."""

    def progress(self, requests: int, errors: int) -> None:
        """Totals of the current phase so far."""


class _Wire(asyncio.Protocol):
    """One TCP connection's protocol; forwards to its `Connection` while current.

    A new `_Wire` per TCP connection, so late callbacks of a dropped connection are
    told apart from the current one by identity. Plain `data_received`: a
    BufferedProtocol reading into one reused bytearray measured the same (about
    10-13 us of client CPU per 4 KiB response under uvloop, noise included), and
    httptools copies each body piece into bytes either way.
    """

    __slots__ = ("owner", "transport", "closed")

    def __init__(self, owner: Connection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = owner.worker.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.owner.on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)
        self.owner.worker.wires.discard(self)
        self.owner.on_lost(self)


class Connection:
    """One client slot: a keep-alive connection to one origin and its request loop.

    One request is in flight at a time. After an error the TCP connection is
    dropped and reopened before the next request.
    """

    __slots__ = (
        "worker",
        "route",
        "source",
        "position",
        "wire",
        "reader",
        "in_flight",
        "stats",
        "started_at",
        "sent_at",
        "expected",
        "first_slot",
        "slot",
        "timer",
        "idle",
    )

    def __init__(self, worker: Worker, index: int, route: Route, source: str | None) -> None:
        self.worker = worker
        self.route = route
        self.source = source
        self.position = (index // len(worker.plan.routes)) % len(route.requests)
        self.wire: _Wire | None = None
        self.reader = ResponseReader(hash_bodies=worker.plan.hash_bodies)
        self.in_flight = False
        self.stats = worker.warmup_stats
        self.started_at = 0.0
        self.sent_at = 0.0
        self.expected: bytes | None = None
        self.first_slot = index * worker.interval / worker.plan.total_connections
        """Open model: seconds after the start of this connection's first request."""
        self.slot = 0
        """Open model: how many of this connection's slots have been taken."""
        self.timer: asyncio.TimerHandle | None = None
        self.idle = True

    # connecting ---------------------------------------------------------------

    async def connect(self, stats: LiveStats) -> float:
        """Open a new connection; return the seconds its TLS handshake took (0 without
        TLS), counted in `stats`. Raises OSError: TimeoutError, HandshakeError, ..."""
        worker = self.worker
        loop = worker.loop
        route = self.route
        sock = socket.socket(route.family, socket.SOCK_STREAM)
        handshake = 0.0
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source is not None:
                # Let connect() pick the port per destination, not bind() per address.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            async with worker.connect_slots, asyncio.timeout(worker.plan.timeout):
                await loop.sock_connect(sock, route.address)
                if route.tls:
                    # Inside the slot and the timeout: a handshake is part of connecting.
                    began = _now()
                    wire = await self._handshake(sock)
                    handshake = _now() - began
                else:
                    _, wire = await loop.create_connection(lambda: _Wire(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        if wire.closed.done():
            raise ConnectionResetError("closed by the server as it was opened")
        if route.tls:
            stats.handshake(handshake)
        worker.wires.add(wire)
        self.wire = wire
        self.reader = ResponseReader(hash_bodies=worker.plan.hash_bodies)
        return handshake

    async def _handshake(self, sock: socket.socket) -> _Wire:
        try:
            _, wire = await self.worker.loop.create_connection(
                lambda: _Wire(self),
                sock=sock,
                ssl=self.worker.ssl_context,
                server_hostname=self.route.server_hostname,
            )
        except OSError as exc:  # ssl.SSLError included; a timeout is a cancellation here
            raise HandshakeError(str(exc)) from exc
        return wire

    async def _connect_then_send(self, intended: float, stats: LiveStats) -> None:
        try:
            handshake = await self.connect(stats)
        except OSError as exc:
            stats.failed += 1
            if isinstance(exc, TimeoutError):
                stats.error("timeout")
            else:
                stats.error("tls" if isinstance(exc, HandshakeError) else "connect")
            await asyncio.sleep(CONNECT_BACKOFF)
            self.next(_now())
            return
        self.send(intended + handshake, stats)

    # the request loop ---------------------------------------------------------

    def begin(self, now: float) -> None:
        self.idle = False
        self.next(now)

    def next(self, now: float) -> None:
        """Take the next request from the worker's budget and send or schedule it."""
        worker = self.worker
        if worker.rate is None:
            stats = worker.take(now)
            if stats is None:
                self.go_idle()
            else:
                self.send(now, stats)
            return
        # Multiplied, not summed, so the schedule does not drift over a long run.
        intended = worker.origin + self.first_slot + self.slot * worker.interval
        stats = worker.take(intended)
        if stats is None:
            self.go_idle()
            return
        self.slot += 1
        if intended > now:
            self.timer = worker.loop.call_later(intended - now, self._fire, intended, stats)
        else:
            self.send(intended, stats)

    def _fire(self, intended: float, stats: LiveStats) -> None:
        self.timer = None
        self.send(intended, stats)

    def send(self, intended: float, stats: LiveStats) -> None:
        wire = self.wire
        if wire is None or wire.transport is None or wire.transport.is_closing():
            self.wire = None
            self.worker.spawn(self._connect_then_send(intended, stats))
            return
        route = self.route
        position = self.position
        self.expected = route.digests[position]
        self.position = position + 1 if position + 1 < len(route.requests) else 0
        self.stats = stats
        now = _now()
        self.sent_at = now
        self.started_at = intended if intended < now else now
        self.in_flight = True
        wire.transport.write(route.requests[position])

    def on_data(self, wire: _Wire, data: bytes) -> None:
        if wire is not self.wire:
            return
        reader = self.reader
        if not self.in_flight:
            self.stats.error("long_body")
            self.drop()
            return
        before = reader.body_bytes
        try:
            done = reader.feed(data)
        except ResponseError as exc:
            self._count_window(reader.body_bytes - before)
            if not reader.done:
                self._fail(exc.kind)
                return
            self._record(_now())
            self.stats.error(exc.kind)
            self.drop(abort=True)
            self.next(_now())
            return
        self._count_window(reader.body_bytes - before)
        if done:
            now = _now()
            self._record(now)
            if not reader.keep_alive:
                self.drop()
            else:
                reader.reset()
            self.next(now)

    def _count_window(self, arrived: int) -> None:
        worker = self.worker
        if arrived and worker.measuring and _now() < worker.stop_at:
            worker.window_bytes += arrived

    def _record(self, now: float) -> None:
        """Count the complete response the reader holds."""
        reader = self.reader
        stats = self.stats
        self.in_flight = False
        pending = stats.pending
        micros = int((now - self.started_at) * 1_000_000)
        pending[micros] = pending.get(micros, 0) + 1
        stats.requests += 1
        stats.body_bytes += reader.body_bytes
        status = reader.status
        if status < 200 or status >= 300:
            stats.error(f"status_{status}")
        if self.expected is not None and reader.digest() != self.expected:
            stats.error("verify")

    def _fail(self, kind: str) -> None:
        """The request in flight got no complete response."""
        self.in_flight = False
        self.stats.failed += 1
        self.stats.error(kind)
        self.drop(abort=True)
        self.next(_now())

    def on_lost(self, wire: _Wire) -> None:
        if wire is not self.wire:
            return
        self.wire = None
        if not self.in_flight:
            return
        kind = self.reader.eof_error()
        if kind is not None:
            self._fail(kind)
            return
        now = _now()
        self._record(now)
        self.next(now)

    def timed_out(self) -> None:
        self._fail("timeout")

    def drop(self, *, abort: bool = False) -> None:
        """Forget the current TCP connection; the next request opens a new one."""
        wire = self.wire
        self.wire = None
        if wire is not None and wire.transport is not None:
            if abort:
                wire.transport.abort()
            else:
                wire.transport.close()

    def go_idle(self) -> None:
        if not self.idle:
            self.idle = True
            self.worker.connection_idle()

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.go_idle()


class Worker:
    """Runs `plan` in the current event loop and returns its `LoadResult`."""

    def __init__(self, plan: WorkerPlan, loop: asyncio.AbstractEventLoop) -> None:
        self.plan = plan
        self.loop = loop
        self.rate = plan.rate
        self.interval = plan.total_connections / plan.rate if plan.rate else 0.0
        self.warmup_stats = LiveStats()
        """Counts of requests intended before the measurement starts; thrown away."""
        self.stats = LiveStats()
        """Counts of requests intended from the measurement start on: the result."""
        self.remaining: int | None = plan.requests
        self.measure_at = math.inf
        self.stop_at = math.inf
        self.origin = 0.0
        """The common start time of every process (`time.monotonic`)."""
        self.measuring = False
        self.measure_start = 0.0
        self.window_bytes = 0
        """Body bytes that arrived between the measurement start and the deadline."""
        self.measure_end = 0.0
        self.cpu_start = 0.0
        self.busy = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.connect_slots = asyncio.Semaphore(plan.connect_concurrency)
        self.ssl_context: ssl.SSLContext | None = None
        if any(route.tls for route in plan.routes):
            self.ssl_context = client_context(insecure=plan.insecure, cacert=plan.cacert)
        self.wires: set[_Wire] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.link: WorkerLink | None = None
        routes = plan.routes
        sources = plan.sources
        self.connections = [
            Connection(
                self,
                index,
                routes[index % len(routes)],
                sources[index % len(sources)] if sources else None,
            )
            for index in range(plan.first_connection, plan.first_connection + plan.connections)
        ]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # the budget -----------------------------------------------------------------

    def take(self, when: float) -> LiveStats | None:
        """The stats to count a request intended at `when` in, or None: no more requests.

        The phase follows the intended time, so in the open model exactly the slots
        from the end of the warm-up to the deadline are measured."""
        if when >= self.stop_at:
            return None
        if when < self.measure_at:
            return self.warmup_stats
        remaining = self.remaining
        if remaining is not None:
            if remaining <= 0:
                return None
            self.remaining = remaining - 1
        return self.stats

    def connection_idle(self) -> None:
        self.busy -= 1
        if self.busy <= 0 and self.measuring and not self.done.done():
            self.measure_end = _now()
            self.done.set_result(None)

    def stop(self) -> None:
        """End early: no new requests; those in flight finish."""
        self.stop_at = -math.inf
        if not self.measuring:
            self._measure()
        for connection in self.connections:
            connection.cancel_timer()

    # phases ---------------------------------------------------------------------

    async def run(self, link: WorkerLink) -> LoadResult:
        self.link = link
        link.attach(self.stop)
        # The first handshakes belong to the measurement unless a warm-up comes first.
        opening = self.warmup_stats if self.plan.warmup > 0 else self.stats
        await asyncio.gather(*(self._open(c, opening) for c in self.connections))
        link.ready()
        start = await link.wait_go()
        # uvloop rounds timers to the millisecond and may wake early: wait it out, so
        # the first requests are not taken for warm-up (intended before the start).
        while (delay := start - _now()) > 0:
            await asyncio.sleep(delay)
        plan = self.plan
        now = _now()
        self.origin = start
        self.measure_at = start + plan.warmup
        if plan.duration is not None and self.stop_at != -math.inf:
            # From the common clock, so every process stops at the same moment.
            self.stop_at = self.measure_at + plan.duration
        self.busy = len(self.connections)
        self._tick()
        if plan.warmup > 0:
            self.loop.call_later(start + plan.warmup - now, self._measure)
        else:
            self._measure()
        for connection in self.connections:
            connection.begin(now)
        await self.done
        return await self._finish()

    async def _open(self, connection: Connection, stats: LiveStats) -> None:
        try:
            await connection.connect(stats)
        except OSError:
            pass  # retried, and counted, when the connection first sends

    def _measure(self) -> None:
        """The measurement starts: note the time and the CPU used so far."""
        if self.measuring:
            return
        # The scheduled moment, not when this callback ran: -d 10s measures 10 s.
        self.measure_start = min(_now(), self.measure_at)
        self.cpu_start = cpu_seconds()
        self.measuring = True
        if self.busy <= 0 and not self.done.done():
            self.measure_end = self.measure_start
            self.done.set_result(None)

    def _tick(self) -> None:
        """Sweep timeouts, flush latencies, report progress; every PROGRESS_INTERVAL."""
        if self.done.done():
            return
        now = _now()
        limit = now - self.plan.timeout
        for connection in self.connections:
            if connection.in_flight and connection.sent_at < limit:
                connection.timed_out()
        self.warmup_stats.flush()
        stats = self.stats if self.measuring else self.warmup_stats
        stats.flush()
        if self.link is not None:
            self.link.progress(stats.requests, stats.error_total)
        interval = min(PROGRESS_INTERVAL, self.plan.timeout / 4)
        self.loop.call_later(interval, self._tick)

    async def _finish(self) -> LoadResult:
        cpu = cpu_seconds() - self.cpu_start
        for connection in self.connections:
            connection.drop()
        closing = [wire.closed for wire in self.wires]
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_WAIT)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = self.stats
        stats.flush()
        plan = self.plan
        return LoadResult(
            urls=plan.urls,
            model="closed" if plan.rate is None else "open",
            connections=plan.connections,
            processes=1,
            duration=max(self.measure_end - self.measure_start, 0.0),
            requests=stats.requests,
            failed=stats.failed,
            body_bytes=stats.body_bytes,
            errors=dict(sorted(stats.errors.items())),
            histogram=stats.histogram.encode().decode("ascii"),
            cpu_seconds=cpu,
            target_rate=plan.rate,
            warmup=plan.warmup,
            loop=plan.loop,
            verified=plan.hash_bodies,
            tls_handshakes=stats.handshakes,
            handshake_histogram=stats.handshake_histogram.encode().decode("ascii"),
            window_bytes=self.window_bytes,
            window_seconds=self._window_seconds(),
        )

    def _window_seconds(self) -> float:
        end = min(self.stop_at, self.measure_end) if self.stop_at > 0 else self.measure_end
        return max(end - self.measure_start, 0.0)


class LocalLink:
    """The link for a worker run in the caller's own event loop."""

    def __init__(self, on_progress: Callable[[int, int], None] | None = None) -> None:
        self.on_progress = on_progress
        self.stop: Callable[[], None] | None = None

    def attach(self, stop: Callable[[], None]) -> None:
        self.stop = stop

    def request_stop(self) -> None:
        """End the run early; what was measured is still returned."""
        if self.stop is not None:
            self.stop()

    def ready(self) -> None:
        pass

    async def wait_go(self) -> float:
        return _now()

    def progress(self, requests: int, errors: int) -> None:
        if self.on_progress is not None:
            self.on_progress(requests, errors)


async def run_worker(plan: WorkerPlan, link: WorkerLink) -> LoadResult:
    """Run one worker's share of the load in the running loop."""
    worker = Worker(plan, asyncio.get_running_loop())
    return await worker.run(link)
