"""One process's share of a load run: its connections, their request loops, its counters.

Everything on the hot path is a callback, not a coroutine: a response completes
in `buffer_updated`, the next request is written from there (closed model) or from
a timer at its intended time (open model). Coroutines only connect.

Receiving copies nothing after the kernel: each connection is an
`asyncio.BufferedProtocol` that reads into the worker's one receive buffer (the
loop reads one socket at a time and every byte is framed before the callback
returns, so one buffer serves every connection, TLS ones included: asyncio's and
uvloop's SSL transports decrypt straight into it). Body bytes are counted, and
hashed from a memoryview only when verifying.

Latency runs from `min(intended, sent)`: in the closed model the request is sent
the moment it is intended; in the open model a request delayed by a busy
connection still counts from its slot in the schedule (wrk2's correction for
coordinated omission), while one that a coarse timer (uvloop's are in whole
milliseconds) fires slightly early counts from when it really left. Slots are
numbered over every connection (slot j is due at j / rate and belongs to
connection j mod C), so which slots a window holds is exact integer arithmetic.

A TLS handshake is timed on its own (`LiveStats.handshake`) and kept out of the
request latency: a request that had to reconnect first counts from its start
moved later by the handshake's duration (the TCP connect stays in, as without TLS).
Initial connections' handshakes count in the measurement unless there is a warm-up.

Nothing outlives the run's bounds. Opening the connections takes at most
`timeout` (waiting for a connect slot included); with a duration nothing runs past
the opening's start + warm-up + duration + timeout (`hard_end`): in-flight
requests are then timed out, and in the open model the slots due in the window
but never sent are counted as `unsent`, each charged the latency from its due time
to the end of the run. `stop` (Ctrl-C) cancels connects and timers at once and
gives requests in flight `STOP_GRACE` to finish.
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
from zcserve.load.stats import LiveStats, LoadResult, record_spread, status_counts
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
LATE_GRACE = 0.25
"""Open model: seconds after the window's end during which slots due in it may still
be sent late, so a brief stall at the edge (a busy CPU, a collection) does not turn
them into unsent. A schedule further behind is not drained: the client or the server
is saturated, and what is left is counted as unsent."""
UNSENT_SPREAD = 100_000
"""At most this many distinct latencies are recorded for a run's unsent slots
(each slot still counts once; see `record_spread`)."""
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_now = time.monotonic


def connect_error_kind(exc: BaseException) -> str:
    """The error count a failed connect goes to."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "tls" if isinstance(exc, HandshakeError) else "connect"


def first_index_at(seconds: float, rate: float) -> int:
    """The first slot due at or after `seconds` (slot j is due at j / rate); a slot
    within a billionth of the edge counts as on it, whatever the float rounding."""
    product = seconds * rate
    return max(math.ceil(product - 1e-9 * max(1.0, abs(product))), 0)


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
        self.closed: asyncio.Future[None] = owner.worker.loop.create_future()
        self.buffer = owner.worker.view

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
        self.owner.worker.wires.discard(self)
        self.owner.on_lost(self)


class Connection:
    """One client slot: a keep-alive connection to one origin and its request loop.

    One request is in flight at a time. After an error the TCP connection is
    dropped and reopened before the next request. A reused connection that closes
    before any byte of the response (the server closed it as the request went
    out) is reopened and the request sent once more: a `reconnect`, not a failure.
    """

    __slots__ = (
        "worker",
        "route",
        "source",
        "index",
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
        "slot",
        "timer",
        "idle",
        "task",
        "retried",
        "open_error",
        "url_of",
        "status_base",
    )

    def __init__(self, worker: Worker, index: int, route: Route, source: str | None) -> None:
        self.worker = worker
        self.route = route
        self.source = source
        self.index = index
        """This connection's number among every process's (open model: its slots)."""
        self.position = (index // len(worker.plan.routes)) % len(route.requests)
        self.current = self.position
        """The request (of `route.requests`) in flight."""
        self.wire: _Wire | None = None
        self.reader = ResponseReader(hash_bodies=worker.plan.hash_bodies, no_body=worker.no_body)
        self.in_flight = False
        self.stats = worker.warmup_stats
        self.intended = 0.0
        self.started_at = -1.0
        """When the request in flight started, for its latency; -1 before it does."""
        self.sent_at = 0.0
        """When the current attempt began, connect included: its timeout counts from here."""
        self.expected: bytes | None = None
        self.slot = 0
        """Open model: how many of this connection's slots have been taken."""
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
        """Open a new connection by `deadline` (`time.monotonic`; the wait for a connect
        slot included); return the seconds its TLS handshake took (0 without TLS),
        counted in `stats`. Raises OSError: TimeoutError, HandshakeError, ..."""
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
            async with asyncio.timeout(max(deadline - _now(), 0.0)), worker.connect_slots:
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
        self.reader = ResponseReader(hash_bodies=worker.plan.hash_bodies, no_body=worker.no_body)
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

    async def _connect_then_send(self) -> None:
        worker = self.worker
        stats = self.stats
        self.open_error = None  # this attempt's outcome is counted instead
        try:
            try:
                deadline = min(self.sent_at + worker.timeout, worker.hard_end)
                handshake = await self.connect(stats, deadline)
            except OSError as exc:
                self.task = None
                self._count_failed(stats)
                stats.error(connect_error_kind(exc))
                await asyncio.sleep(CONNECT_BACKOFF)
                self.next(_now())
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
        self.next(now)

    def next(self, now: float) -> None:
        """Take the next request from the worker's budget and send or schedule it."""
        worker = self.worker
        if worker.halted:
            self.go_idle()
            return
        if worker.rate is None:
            stats = worker.take(now)
            if stats is None:
                self.go_idle()
            else:
                self.send(now, stats)
            return
        if now >= worker.send_until:
            self.go_idle()  # what is left of the window is unsent
            return
        index = self.index + self.slot * worker.total_connections
        stats = worker.take_slot(index)
        if stats is None:
            self.go_idle()
            return
        self.slot += 1
        # Multiplied, not summed, so the schedule does not drift over a long run.
        intended = worker.origin + index * worker.spacing
        if intended > now:
            self.timer = worker.loop.call_later(intended - now, self._fire, intended, stats)
        else:
            self.send(intended, stats)

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
            self.task = self.worker.spawn(self._connect_then_send())
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
            stop = reader.receive(self.worker.buffer, nbytes)
        except ResponseError as exc:
            self._count_window(reader.body_bytes - before, _now())
            self._fail(exc.kind)
            return
        # One clock read per buffer, for the window's bytes and the latency alike.
        now = _now()
        arrived = reader.body_bytes - before
        if arrived:
            self._count_window(arrived, now)
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
        self.next(now)

    def _count_window(self, arrived: int, now: float) -> None:
        worker = self.worker
        if arrived and worker.measuring and now < worker.stop_at:
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

    def _fail(self, kind: str) -> None:
        """The request in flight got no complete response."""
        self.in_flight = False
        self._count_failed(self.stats)
        self.stats.error(kind)
        self.drop(abort=True)
        self.next(_now())

    def on_lost(self, wire: _Wire) -> None:
        if wire is not self.wire:
            return
        self.wire = None
        if not self.in_flight:  # the server closed an idle connection
            self.stats.reconnects += 1
            return
        reader = self.reader
        if not reader.started and reader.completed and not self.retried and not self.worker.halted:
            # A reused connection closed before any byte of the response: the server
            # closed it (idle keep-alive) as the request went out. Once more, anew.
            self.in_flight = False
            self.retried = True
            self.stats.reconnects += 1
            self._transmit(self.started_at)
            return
        kind = reader.eof_error()
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

    # ending early ------------------------------------------------------------------

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.slot -= 1  # not sent: counted as unsent if it was due
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
        elif self.worker.rate is not None:
            self.slot -= 1  # never sent: counted as unsent if it was due
        self.go_idle()


class Worker:
    """Runs `plan` in the current event loop and returns its `LoadResult`."""

    def __init__(self, plan: WorkerPlan, loop: asyncio.AbstractEventLoop) -> None:
        self.plan = plan
        self.loop = loop
        self.rate = plan.rate
        self.timeout = plan.timeout
        self.total_connections = plan.total_connections
        self.spacing = 1 / plan.rate if plan.rate else 0.0
        """Open model: seconds between two slots (over every connection)."""
        self.first_index = 0
        """Open model: the first slot of the measurement (before it: warm-up)."""
        self.end_index = 0
        """Open model: the first slot past the window."""
        self.buffer = bytearray(RECEIVE_BUFFER)
        self.view = memoryview(self.buffer)
        self.no_body = plan.method == "HEAD"
        unexpected = unexpected_statuses(plan.expect_status)
        self.warmup_stats = LiveStats(len(plan.urls), unexpected)
        """Counts of requests intended before the measurement starts; thrown away."""
        self.stats = LiveStats(len(plan.urls), unexpected)
        """Counts of requests intended from the measurement start on: the result."""
        self.remaining: int | None = plan.requests if plan.rate is None else None
        self.open_start = 0.0
        self.open_failures = 0
        self.measure_at = math.inf
        self.stop_at = math.inf
        """No request intended from then on (closed model), the window's end."""
        self.hard_end = math.inf
        """Nothing runs past this: requests in flight then time out."""
        self.send_until = math.inf
        """Open model: no slot is sent from then on (the window's end + `LATE_GRACE`)."""
        self.origin = 0.0
        """The common start time of every process (`time.monotonic`)."""
        self.began = False
        self.stopping = False
        """Ctrl-C (or the parent) asked to stop."""
        self.halted = False
        """No request is sent or retried any more (stopped, or past `hard_end`)."""
        self.measuring = False
        self.measure_start = 0.0
        self.window_bytes = 0
        """Body bytes that arrived between the measurement start and the deadline."""
        self.measure_end = 0.0
        self.cpu_start = 0.0
        self.busy = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.opening: asyncio.Future[list[None]] | None = None
        self.connect_slots = asyncio.Semaphore(plan.connect_concurrency)
        self.ssl_context: ssl.SSLContext | None = None
        if any(route.tls for route in plan.routes):
            self.ssl_context = client_context(insecure=plan.insecure, cacert=plan.cacert)
        self.wires: set[_Wire] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.link: WorkerLink | None = None
        self.tick_timer: asyncio.TimerHandle | None = None
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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # the budget -----------------------------------------------------------------

    def take(self, when: float) -> LiveStats | None:
        """Closed model: the stats to count a request sent at `when` in, or None: no
        more requests."""
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

    def take_slot(self, index: int) -> LiveStats | None:
        """Open model: the stats slot `index` counts in, or None: past the window. The
        phase follows the slot, so exactly the window's slots are measured."""
        if index >= self.end_index:
            return None
        return self.warmup_stats if index < self.first_index else self.stats

    def connection_idle(self) -> None:
        self.busy -= 1
        self._check_done()

    def _check_done(self) -> None:
        if self.busy <= 0 and self.measuring and not self.done.done():
            self.measure_end = _now()
            self.done.set_result(None)

    def stop(self) -> None:
        """End early (Ctrl-C): no new requests, connects and timers cancelled at once,
        requests in flight cut after `STOP_GRACE`."""
        if self.stopping:
            return
        self.stopping = self.halted = True
        if not self.stopped.done():
            self.stopped.set_result(None)
        if self.opening is not None:
            self.opening.cancel()
        if not self.began:
            return
        self.stop_at = min(self.stop_at, _now())
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
                connection._fail(kind)

    def _hard_end(self) -> None:
        """The run may last no longer: requests in flight time out; connects in
        progress time out by themselves (their deadline is this moment)."""
        self.halted = True
        self.hard_end = min(self.hard_end, _now())  # a timer may fire a little early
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
        deadline = self.open_start + self.timeout
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
        self.began = True
        self.origin = start
        self.measure_at = start + plan.warmup
        window = plan.duration
        if plan.rate is not None:
            self.first_index = first_index_at(plan.warmup, plan.rate)
            if plan.duration is not None:
                self.end_index = first_index_at(plan.warmup + plan.duration, plan.rate)
            else:
                total = plan.total_requests or 0
                self.end_index = self.first_index + total
                window = total * self.spacing
        if window is not None:
            # From the common clock, so every process stops at the same moment.
            self.stop_at = self.measure_at + window
            # The opening counts against the bound too; never before the window ends.
            bound = self.open_start + plan.warmup + window + plan.timeout
            self.hard_end = max(bound, self.stop_at)
            self.send_until = min(self.stop_at + LATE_GRACE, self.hard_end)
            if self.hard_end < math.inf:
                self.loop.call_later(max(self.hard_end - now, 0.0), self._hard_end)
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
        self.measure_start = min(_now(), self.measure_at)
        self.cpu_start = cpu_seconds()
        self.measuring = True
        self._check_done()

    def _tick(self) -> None:
        """Sweep timeouts, flush latencies, report progress; every PROGRESS_INTERVAL."""
        if self.done.done():
            return
        now = _now()
        limit = now - self.timeout
        for connection in self.connections:
            if connection.in_flight and connection.sent_at < limit:
                connection.timed_out()
        self.warmup_stats.flush()
        stats = self.stats if self.measuring else self.warmup_stats
        stats.flush()
        if self.link is not None:
            if self.began:
                self.link.progress(stats.requests, stats.error_total)
            else:  # still opening: the connects that failed so far
                self.link.progress(0, self.open_failures)
        interval = min(PROGRESS_INTERVAL, self.timeout / 4)
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
        unsent = self._charge_unsent() if self.began and self.rate is not None else 0
        await self._close_all()
        stats.flush()
        plan = self.plan
        return LoadResult(
            urls=plan.urls,
            model="closed" if plan.rate is None else "open",
            connections=plan.connections,
            processes=1,
            duration=self._duration(),
            requests=stats.requests,
            failed=stats.failed,
            body_bytes=stats.body_bytes,
            errors=stats.all_errors(),
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
            unsent=unsent,
            reconnects=stats.reconnects,
            wall_seconds=wall,
            status=status_counts(stats.statuses),
            header_bytes=stats.header_bytes,
            per_url=stats.url_results(plan.urls),
        )

    def _charge_unsent(self) -> int:
        """Count the window's slots that were never sent, each with the latency from
        its due time to the end of the run (as if answered at the end: a lower bound)."""
        rate = self.rate
        assert rate is not None
        end_index = self.end_index
        if self.stopping:
            # Stopped early: only what was due by then.
            end_index = min(end_index, first_index_at(self.stop_at - self.origin, rate))
        total = self.total_connections
        spans = []
        for connection in self.connections:
            index = connection.index
            first = max(connection.slot, -((index - self.first_index) // total))
            last = -((index - end_index) // total)  # past the last
            if last > first:
                spans.append((index + first * total, index + (last - 1) * total, last - first))
        unsent = sum(count for _, _, count in spans)
        if unsent:
            end = self.measure_end
            share = max(1, UNSENT_SPREAD // len(spans))
            for first_index, last_index, count in spans:
                # Earlier slots waited longer: from the first one's latency down.
                oldest = int((end - (self.origin + first_index * self.spacing)) * 1_000_000)
                newest = int((end - (self.origin + last_index * self.spacing)) * 1_000_000)
                record_spread(self.stats.pending, newest, oldest, count, share)
            self.stats.unsent += unsent
        return unsent

    async def _close_all(self) -> None:
        for connection in self.connections:
            connection.drop()
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

    def _duration(self) -> float:
        """Closed model: to the last response. Open model: the window asked for (cut
        short by Ctrl-C): rates divide by the schedule's length, not the tail's."""
        if self.rate is None or not self.began:
            return max(self.measure_end - self.measure_start, 0.0)
        return max(self.stop_at - self.measure_start, 0.0)

    def _window_seconds(self) -> float:
        end = min(self.stop_at, self.measure_end)
        return max(end - self.measure_start, 0.0)


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
