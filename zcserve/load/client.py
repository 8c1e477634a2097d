"""One process's share of a load run: its connections, their request loops, its counters.

Everything on the hot path is a callback, not a coroutine: a response completes
in `buffer_updated`, the next request is written from there (closed model) or from
a timer at its intended time (open model). Coroutines only connect. When each
request is due, and which phase counts it, is the `Schedule`'s (schedule.py).

Receiving copies nothing after the kernel: each connection is an
`asyncio.BufferedProtocol` that reads into the worker's one receive buffer (the
loop reads one socket at a time and every byte is framed before the callback
returns, so one buffer serves every connection, TLS ones included: asyncio's and
uvloop's SSL transports decrypt straight into it). Body bytes are counted, and
hashed from a memoryview only when verifying.

A TLS handshake is timed on its own (`LiveStats.handshake`) and kept out of the
request latency: a request that had to reconnect first counts from its start
moved later by the handshake's duration (the TCP connect stays in, as without TLS).
Initial connections' handshakes count in the measurement unless there is a warm-up.

Nothing outlives the run's bounds. Opening the connections takes at most
`timeout` (waiting for a connect slot included); with a duration nothing runs past
the opening's start + warm-up + duration + timeout (`Schedule.hard_end`): in-flight
requests are then timed out, and in the open model the slots due in the window
but never sent are counted as `unsent`. `stop` (Ctrl-C) cancels connects and
timers at once and gives requests in flight `STOP_GRACE` to finish.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from zcserve.load.http import STATUS_KEYS, ResponseError, ResponseReader, unexpected_statuses
from zcserve.load.plan import Route, WorkerPlan
from zcserve.load.schedule import schedule_for
from zcserve.load.stats import LiveStats, LoadResult
from zcserve.load.tls import HandshakeError, client_context
from zcserve.runtime import cpu_seconds

RECEIVE_BUFFER = 64 * 1024
"""Bytes of the worker's one receive buffer. Measured against nginx (interleaved,
medians): 64 KiB read 1 MiB bodies 40 % faster than 256 KiB on one connection and
as fast on 64 (smaller reads hand the socket back to the kernel sooner, so the
sender keeps streaming), 64 MiB ones 13 % faster; 16 and 32 KiB cost more calls."""
CONNECT_BACKOFF = 0.01
"""Seconds to wait after a failed connect before the next attempt, so a dead
server costs a few hundred attempts a second per connection, not a busy loop."""
PROGRESS_INTERVAL = 0.25
"""Seconds between progress reports, timeout sweeps and histogram flushes."""
CLOSE_WAIT = 0.5
"""Seconds to wait at the end for closed connections to release their sockets;
those still open then are aborted."""
STOP_GRACE = 0.5
"""Seconds requests in flight get to finish after Ctrl-C before they are cut."""
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_now = time.monotonic


def connect_error_kind(exc: BaseException) -> str:
    """The error count a failed connect goes to."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "tls" if isinstance(exc, HandshakeError) else "connect"


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


class _Wire(asyncio.BufferedProtocol):
    """One TCP connection's protocol; forwards to its `Connection` while current.

    A new `_Wire` per TCP connection, so late callbacks of a dropped connection are
    told apart from the current one by identity. Every read lands in the worker's
    receive buffer (`get_buffer`) and is framed in `buffer_updated`.
    """

    __slots__ = ("owner", "transport", "closed", "buffer")

    def __init__(self, owner: Connection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = owner.dialer.loop.create_future()
        self.buffer = owner.dialer.view

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.owner.on_bytes(self, nbytes)

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost says what the end meant

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.owner.dialer.wires.discard(self)
        self.owner.on_lost(self)


class Dialer:
    """Opens a worker's connections and holds what they share: the event loop, the one
    receive buffer, the connect slots, the TLS context, the open wires, the connects."""

    def __init__(self, plan: WorkerPlan, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buffer = bytearray(RECEIVE_BUFFER)
        self.view = memoryview(self.buffer)
        self.hash_bodies = plan.hash_bodies
        self.no_body = plan.method == "HEAD"
        self.connect_slots = asyncio.Semaphore(plan.connect_concurrency)
        self.ssl_context: ssl.SSLContext | None = None
        if any(route.tls for route in plan.routes):
            self.ssl_context = client_context(insecure=plan.insecure, cacert=plan.cacert)
        self.wires: set[_Wire] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def reader(self) -> ResponseReader:
        """A new connection's response reader."""
        return ResponseReader(hash_bodies=self.hash_bodies, no_body=self.no_body)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def open(self, owner: Connection, deadline: float) -> tuple[_Wire, float]:
        """A new connection for `owner`, open by `deadline` (`time.monotonic`; the wait
        for a connect slot included), and the seconds its TLS handshake took (0 without
        TLS). Raises OSError: TimeoutError, HandshakeError, ..."""
        route = owner.route
        sock = socket.socket(route.family, socket.SOCK_STREAM)
        handshake = 0.0
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if owner.source is not None:
                # Let connect() pick the port per destination, not bind() per address.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((owner.source, 0))
            budget = max(deadline - _now(), 0.0)
            async with asyncio.timeout(budget), self.connect_slots:
                await self.loop.sock_connect(sock, route.address)
                if route.tls:
                    # Inside the slot and the timeout: a handshake is part of connecting.
                    began = _now()
                    wire = await self._handshake(owner, sock)
                    handshake = _now() - began
                else:
                    _, wire = await self.loop.create_connection(lambda: _Wire(owner), sock=sock)
        except BaseException:
            sock.close()
            raise
        if wire.closed.done():
            raise ConnectionResetError("closed by the server as it was opened")
        self.wires.add(wire)
        return wire, handshake

    async def _handshake(self, owner: Connection, sock: socket.socket) -> _Wire:
        try:
            _, wire = await self.loop.create_connection(
                lambda: _Wire(owner),
                sock=sock,
                ssl=self.ssl_context,
                server_hostname=owner.route.server_hostname,
            )
        except OSError as exc:  # ssl.SSLError included; a timeout is a cancellation here
            raise HandshakeError(str(exc)) from exc
        return wire

    async def close_all(self) -> None:
        """Give the closing wires `CLOSE_WAIT`, abort the rest, cancel the connects."""
        closing = [wire.closed for wire in self.wires]
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_WAIT)
        for wire in list(self.wires):
            if wire.transport is not None:
                wire.transport.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Connection:
    """One client slot: a keep-alive connection to one origin and its request loop.

    One request is in flight at a time; the schedule says when (`Schedule.take` calls
    back `send`, `send_later` or `go_idle`). After an error the TCP connection is
    dropped and reopened before the next request. A reused connection that closes
    before any byte of the response (the server closed it as the request went
    out) is reopened and the request sent once more: a `reconnect`, not a failure.
    """

    __slots__ = (
        "worker",
        "dialer",
        "schedule",
        "route",
        "source",
        "index",
        "taken",
        "position",
        "current",
        "wire",
        "reader",
        "in_flight",
        "stats",
        "intended",
        "started_at",
        "sent_at",
        "expected",
        "timer",
        "idle",
        "task",
        "retried",
        "open_error",
        "url_of",
        "status_base",
    )

    def __init__(
        self, worker: Worker, index: int, route: Route, source: str | None, position: int
    ) -> None:
        self.worker = worker
        self.dialer = worker.dialer
        self.schedule = worker.schedule
        self.route = route
        self.source = source
        self.index = index
        """This connection's number among every process's (open model: its slots)."""
        self.taken = 0
        """Open model: how many of this connection's slots have been taken."""
        self.position = position
        """The next request (of `route.requests`) to send."""
        self.current = position
        """The request in flight."""
        self.wire: _Wire | None = None
        self.reader = self.dialer.reader()
        self.in_flight = False
        self.stats = worker.warmup_stats
        self.intended = 0.0
        self.started_at = -1.0
        """When the request in flight started, for its latency; -1 before it does."""
        self.sent_at = 0.0
        """When the current attempt began, connect included: its timeout counts from here."""
        self.expected: bytes | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle = True
        self.task: asyncio.Task[None] | None = None
        """The connect the next request waits for."""
        self.retried = False
        self.open_error: str | None = None
        """Why opening this connection before the start failed, until it tries again."""
        self.url_of = route.url_indices or (0,) * len(route.requests)
        """Each request's URL (its index in the run's URLs)."""
        self.status_base = tuple(url * STATUS_KEYS for url in self.url_of)
        """Each request's key base in `LiveStats.statuses`."""

    # connecting ---------------------------------------------------------------

    async def connect(self, stats: LiveStats, deadline: float) -> float:
        """Open a new connection by `deadline` (see `Dialer.open`); return the seconds
        its TLS handshake took, counted in `stats`."""
        wire, handshake = await self.dialer.open(self, deadline)
        if self.route.tls:
            stats.handshake(handshake)
        self.wire = wire
        self.reader = self.dialer.reader()
        return handshake

    async def _connect_then_send(self) -> None:
        stats = self.stats
        self.open_error = None  # this attempt's outcome is counted instead
        try:
            try:
                handshake = await self.connect(stats, self.schedule.deadline(self.sent_at))
            except OSError as exc:
                self.task = None
                self._count_failed(stats)
                stats.error(connect_error_kind(exc))
                await asyncio.sleep(CONNECT_BACKOFF)
                self.schedule.take(self, _now())
                return
        except asyncio.CancelledError:
            self.task = None
            self._abandon()
            raise
        self.task = None
        if self.started_at < 0:
            self._transmit(self.intended + handshake, fresh=False)
        else:  # a retry: its handshake stays out of the latency too
            self.started_at += handshake
            self._transmit(self.started_at, fresh=False)

    # the request loop ---------------------------------------------------------

    def begin(self, now: float) -> None:
        self.idle = False
        self.schedule.take(self, now)

    def send_later(self, intended: float, stats: LiveStats, delay: float) -> None:
        """Send the next request in `delay` seconds, at `intended` (open model)."""
        self.timer = self.dialer.loop.call_later(delay, self._fire, intended, stats)

    def _fire(self, intended: float, stats: LiveStats) -> None:
        self.timer = None
        self.send(intended, stats)

    def send(self, intended: float, stats: LiveStats) -> None:
        """Send the next request (of the route's round robin), intended at `intended`."""
        position = self.position
        self.current = position
        self.position = position + 1 if position + 1 < len(self.route.requests) else 0
        self.stats = stats
        self.intended = intended
        self.started_at = -1.0
        self.retried = False
        self._transmit(intended)

    def _transmit(self, start: float, *, fresh: bool = True) -> None:
        """Write the current request, connecting first if need be; its latency counts
        from `min(start, now)` unless it already started (a retry). A `fresh` attempt
        starts its timeout now; after a connect, the connect's time is in it."""
        wire = self.wire
        now = _now()
        if fresh:
            self.sent_at = now
        if wire is None or wire.transport is None or wire.transport.is_closing():
            self.wire = None
            self.task = self.dialer.spawn(self._connect_then_send())
            return
        if self.started_at < 0:
            self.started_at = start if start < now else now
        self.expected = self.route.digests[self.current]
        self.in_flight = True
        wire.transport.write(self.route.requests[self.current])

    def on_bytes(self, wire: _Wire, nbytes: int) -> None:
        if wire is not self.wire:
            return
        if not self.in_flight:
            self.stats.error("long_body")
            self.drop(abort=True)
            return
        reader = self.reader
        before = reader.body_bytes
        try:
            stop = reader.receive(self.dialer.buffer, nbytes)
        except ResponseError as exc:
            self.worker.count_window(reader.body_bytes - before, _now())
            self.fail(exc.kind)
            return
        # One clock read per buffer, for the window's bytes and the latency alike.
        now = _now()
        arrived = reader.body_bytes - before
        if arrived:
            self.worker.count_window(arrived, now)
        if not reader.done:
            return
        self._record(now)
        if stop < nbytes:
            # Bytes after a complete response, none asked for: beyond its length.
            self.stats.error("long_body")
            self.drop(abort=True)
        elif not reader.keep_alive:  # the server closes: the next request reconnects
            self.stats.reconnects += 1
            self.drop()
        else:
            reader.reset()
        self.schedule.take(self, now)

    def _record(self, now: float) -> None:
        """Count the complete response the reader holds."""
        reader = self.reader
        stats = self.stats
        self.in_flight = False
        pending = stats.pending
        micros = int((now - self.started_at) * 1_000_000)
        pending[micros] = pending.get(micros, 0) + 1
        stats.requests += 1
        body_bytes = reader.body_bytes
        stats.body_bytes += body_bytes
        stats.header_bytes += reader.head_bytes
        status = reader.status
        statuses = stats.statuses
        key = self.status_base[self.current] + status
        statuses[key] = statuses.get(key, 0) + 1
        by_url = stats.by_url
        if by_url is not None:
            one = by_url[self.url_of[self.current]]
            one.pending[micros] = one.pending.get(micros, 0) + 1
            one.body_bytes += body_bytes
        if self.expected is not None and reader.digest() != self.expected:
            stats.error("verify")

    def _count_failed(self, stats: LiveStats) -> None:
        """Count the current request as failed (no complete response)."""
        stats.failed += 1
        if stats.by_url is not None:
            stats.by_url[self.url_of[self.current]].failed += 1

    def fail(self, kind: str) -> None:
        """The request in flight got no complete response: an error of `kind`."""
        self.in_flight = False
        self._count_failed(self.stats)
        self.stats.error(kind)
        self.drop(abort=True)
        self.schedule.take(self, _now())

    def on_lost(self, wire: _Wire) -> None:
        if wire is not self.wire:
            return
        self.wire = None
        if not self.in_flight:  # the server closed an idle connection
            self.stats.reconnects += 1
            return
        reader = self.reader
        if (
            not reader.started
            and reader.completed
            and not self.retried
            and not self.schedule.halted
        ):
            # A reused connection closed before any byte of the response: the server
            # closed it (idle keep-alive) as the request went out. Once more, anew.
            self.in_flight = False
            self.retried = True
            self.stats.reconnects += 1
            self._transmit(self.started_at)
            return
        kind = reader.eof_error()
        if kind is not None:
            self.fail(kind)
            return
        now = _now()
        self._record(now)
        self.schedule.take(self, now)

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

    # ending early ------------------------------------------------------------------

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.schedule.give_back(self)
            self.go_idle()

    def cancel_connect(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _abandon(self) -> None:
        """The connect for the current request was cancelled (Ctrl-C)."""
        if self.retried:
            # Sent once already, and never answered.
            self._count_failed(self.stats)
            self.stats.error("interrupted")
        else:
            self.schedule.give_back(self)
        self.go_idle()


class Worker:
    """Runs `plan` in the current event loop and returns its `LoadResult`."""

    def __init__(self, plan: WorkerPlan, loop: asyncio.AbstractEventLoop) -> None:
        self.plan = plan
        self.loop = loop
        self.dialer = Dialer(plan, loop)
        unexpected = unexpected_statuses(plan.expect_status)
        self.warmup_stats = LiveStats(len(plan.urls), unexpected)
        """Counts of requests intended before the measurement starts; thrown away."""
        self.stats = LiveStats(len(plan.urls), unexpected)
        """Counts of requests intended from the measurement start on: the result."""
        self.schedule = schedule_for(plan, self.warmup_stats, self.stats)
        self.open_start = 0.0
        self.open_failures = 0
        self.stopping = False
        """Ctrl-C (or the parent) asked to stop."""
        self.measuring = False
        self.measure_start = 0.0
        self.measure_end = 0.0
        self.window_bytes = 0
        """Body bytes that arrived between the measurement start and the window's end."""
        self.cpu_start = 0.0
        self.busy = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.opening: asyncio.Future[list[None]] | None = None
        self.link: WorkerLink | None = None
        self.tick_timer: asyncio.TimerHandle | None = None
        first = plan.first_connection
        self.connections = [
            self._connection(index) for index in range(first, first + plan.connections)
        ]

    def _connection(self, index: int) -> Connection:
        routes, sources = self.plan.routes, self.plan.sources
        route = routes[index % len(routes)]
        # A route's connections start at different requests of its round robin.
        position = (index // len(routes)) % len(route.requests)
        source = sources[index % len(sources)] if sources else None
        return Connection(self, index, route, source, position)

    # what the connections report ---------------------------------------------------

    def count_window(self, arrived: int, now: float) -> None:
        """Body bytes that arrived at `now`: counted when inside the measurement window."""
        if arrived and self.measuring and now < self.schedule.stop_at:
            self.window_bytes += arrived

    def connection_idle(self) -> None:
        self.busy -= 1
        self._check_done()

    def _check_done(self) -> None:
        if self.busy <= 0 and self.measuring and not self.done.done():
            self.measure_end = _now()
            self.done.set_result(None)

    # ending ---------------------------------------------------------------------

    def stop(self) -> None:
        """End early (Ctrl-C): no new requests, connects and timers cancelled at once,
        requests in flight cut after `STOP_GRACE`."""
        if self.stopping:
            return
        self.stopping = True
        self.schedule.stop(_now())
        if not self.stopped.done():
            self.stopped.set_result(None)
        if self.opening is not None:
            self.opening.cancel()
        if not self.schedule.begun:
            return
        if not self.measuring:
            self._measure()
        for connection in self.connections:
            connection.cancel_timer()
            connection.cancel_connect()
        if any(connection.in_flight for connection in self.connections):
            self.loop.call_later(STOP_GRACE, self._cut, "interrupted")
        self._check_done()

    def _cut(self, kind: str) -> None:
        """Fail every request still in flight."""
        for connection in self.connections:
            if connection.in_flight:
                connection.fail(kind)

    def _hard_end(self) -> None:
        """The run may last no longer: requests in flight time out; connects in
        progress time out by themselves (their deadline is this moment)."""
        self.schedule.end(_now())
        self._cut("timeout")
        for connection in self.connections:
            connection.cancel_timer()

    # phases ---------------------------------------------------------------------

    async def run(self, link: WorkerLink) -> LoadResult:
        self.link = link
        link.attach(self.stop)
        self.open_start = _now()
        self._tick()
        if not self.stopping:
            await self._open_all()
        if not self.stopping:
            link.ready()
            go = self.loop.create_task(link.wait_go())
            either: list[asyncio.Future[Any]] = [go, self.stopped]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not go.done():
                go.cancel()
                await asyncio.gather(go, return_exceptions=True)
            elif not self.stopping:
                start = go.result()
                # uvloop rounds timers to the millisecond and may wake early: wait it
                # out, so the first requests are not taken for warm-up.
                while (delay := start - _now()) > 0 and not self.stopping:
                    await asyncio.sleep(delay)
                if not self.stopping:
                    self._begin(start)
                    await self.done
        if not self.done.done():
            # Stopped before the measurement began: nothing was measured.
            self.measure_start = self.measure_end = _now()
            self.done.set_result(None)
        return await self._finish()

    async def _open_all(self) -> None:
        """Open every connection, within `timeout` in all (waits for a slot included)."""
        # The first handshakes belong to the measurement unless a warm-up comes first.
        opening = self.warmup_stats if self.plan.warmup > 0 else self.stats
        deadline = self.open_start + self.plan.timeout
        self.opening = asyncio.gather(*(self._open(c, opening, deadline) for c in self.connections))
        await asyncio.wait([self.opening])
        try:
            self.opening.result()
        except asyncio.CancelledError:
            if not self.stopping:  # stop() cancels the opening (Ctrl-C); nothing else does
                raise
        finally:
            self.opening = None

    async def _open(self, connection: Connection, stats: LiveStats, deadline: float) -> None:
        try:
            await connection.connect(stats, deadline)
        except OSError as exc:
            # Retried, and counted, when the connection first sends; counted at the end
            # if it never does (Ctrl-C, or a budget smaller than the connections).
            connection.open_error = connect_error_kind(exc)
            self.open_failures += 1

    def _begin(self, start: float) -> None:
        """The common start: set the phases and the bounds, start every connection."""
        plan = self.plan
        now = _now()
        schedule = self.schedule
        schedule.begin(start, self.open_start)
        if schedule.hard_end < math.inf:
            self.loop.call_later(max(schedule.hard_end - now, 0.0), self._hard_end)
        self.busy = len(self.connections)
        if plan.warmup > 0:
            self.loop.call_later(start + plan.warmup - now, self._measure)
        else:
            self._measure()
        for connection in self.connections:
            connection.begin(now)

    def _measure(self) -> None:
        """The measurement starts: note the time and the CPU used so far."""
        if self.measuring:
            return
        # The scheduled moment, not when this callback ran: -d 10s measures 10 s.
        self.measure_start = min(_now(), self.schedule.measure_at)
        self.cpu_start = cpu_seconds()
        self.measuring = True
        self._check_done()

    def _tick(self) -> None:
        """Sweep timeouts, flush latencies, report progress; every PROGRESS_INTERVAL."""
        if self.done.done():
            return
        now = _now()
        timeout = self.plan.timeout
        limit = now - timeout
        for connection in self.connections:
            if connection.in_flight and connection.sent_at < limit:
                connection.fail("timeout")
        self.warmup_stats.flush()
        stats = self.stats if self.measuring else self.warmup_stats
        stats.flush()
        if self.link is not None:
            if self.schedule.begun:
                self.link.progress(stats.requests, stats.error_total)
            else:  # still opening: the connects that failed so far
                self.link.progress(0, self.open_failures)
        interval = min(PROGRESS_INTERVAL, timeout / 4)
        self.tick_timer = self.loop.call_later(interval, self._tick)

    async def _finish(self) -> LoadResult:
        finished = _now()
        cpu = cpu_seconds() - self.cpu_start if self.measuring else 0.0
        wall = finished - self.measure_start if self.measuring else 0.0
        if self.tick_timer is not None:
            self.tick_timer.cancel()
        stats = self.stats
        for connection in self.connections:
            if connection.open_error is not None:
                stats.error(connection.open_error)
        self.schedule.charge_unsent(self.connections, self.measure_end)
        for connection in self.connections:
            connection.drop()
        await self.dialer.close_all()
        stats.flush()
        measured = (self.measure_start, self.measure_end)
        return LoadResult.of_worker(
            self.plan,
            stats,
            duration=self.schedule.duration(*measured),
            cpu_seconds=cpu,
            wall_seconds=wall,
            window_bytes=self.window_bytes,
            window_seconds=self.schedule.window_seconds(*measured),
        )


class LocalLink:
    """The link for a worker run in the caller's own event loop."""

    def __init__(self, on_progress: Callable[[int, int], None] | None = None) -> None:
        self.on_progress = on_progress
        self.stop: Callable[[], None] | None = None
        self.stop_requested = False

    def attach(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        if self.stop_requested:
            stop()

    def request_stop(self) -> None:
        """End the run early; what was measured is still returned."""
        self.stop_requested = True
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
