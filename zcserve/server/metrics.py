"""Live metrics in the Prometheus text format, on a listener of their own.

A `Metrics` object is a handful of counters the server bumps inline (plain int
additions: cheap enough for the hot path). Workers each keep their own and write
a snapshot file every `SNAPSHOT_INTERVAL`; the process that owns `--metrics`
sums every snapshot it can see, so figures from all workers arrive merged.
The exposition is written by hand: the format is a few lines of text, and the
counters must stay plain attributes, not library objects, to stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from zcserve.runtime import parse_host_port
from zcserve.server.sockio import bind

log = logging.getLogger("zcserve.metrics")

SNAPSHOT_INTERVAL = 0.5
"""Seconds between a worker's snapshot files."""
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Response-time histogram bounds in seconds (Prometheus' defaults, extended down)."""


@dataclass
class Metrics:
    """Counters for one process. Merge several with `merged`."""

    requests: dict[str, int] = field(default_factory=dict)
    """Responses by status code."""
    bytes_sent: dict[str, int] = field(default_factory=dict)
    """Body bytes by strategy."""
    fallbacks: int = 0
    """Responses where `auto` chose the userspace fallback."""
    repeats: int = 0
    """Responses answered as a repeat, from the last answer's cache entry."""
    errors: dict[str, int] = field(default_factory=dict)
    """Connections ended by an error, by kind."""
    active_connections: int = 0
    connections_total: int = 0
    access_log_errors: int = 0
    """Access-log lines that could not be written (a full disk): lost, responses go on."""
    readall_held: int = 0
    """Bytes the readall strategy holds for bodies in flight (its --readall-budget)."""
    memory_held: int = 0
    """Bytes the memory cache holds (its --memory-cache), as of the last sweep."""
    memory_evictions: int = 0
    """Files the memory cache let go to make room: a steady rise means it is too small."""
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def response(self, status: int, seconds: float) -> None:
        key = str(status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency_sum += seconds
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_counts[index] += 1
                return
        self.latency_counts[-1] += 1

    def sent(self, strategy: str, count: int) -> None:
        self.bytes_sent[strategy] = self.bytes_sent.get(strategy, 0) + count

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
            "fallbacks": self.fallbacks,
            "repeats": self.repeats,
            "errors": self.errors,
            "active_connections": self.active_connections,
            "connections_total": self.connections_total,
            "access_log_errors": self.access_log_errors,
            "readall_held": self.readall_held,
            "memory_held": self.memory_held,
            "memory_evictions": self.memory_evictions,
            "latency_counts": self.latency_counts,
            "latency_sum": self.latency_sum,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metrics:
        return cls(**data)

    @classmethod
    def merged(cls, parts: Iterable[Metrics]) -> Metrics:
        total = cls()
        for part in parts:
            for name in ("requests", "bytes_sent", "errors"):
                mine, theirs = getattr(total, name), getattr(part, name)
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
            total.fallbacks += part.fallbacks
            total.repeats += part.repeats
            total.active_connections += part.active_connections
            total.connections_total += part.connections_total
            total.access_log_errors += part.access_log_errors
            total.readall_held += part.readall_held
            total.memory_held += part.memory_held
            total.memory_evictions += part.memory_evictions
            total.latency_sum += part.latency_sum
            total.latency_counts = [
                a + b for a, b in zip(total.latency_counts, part.latency_counts, strict=True)
            ]
        return total

    def exposition(self, workers: int = 1) -> str:
        """The Prometheus text format (version 0.0.4)."""
        out: list[str] = []

        def by(label: str, counts: dict[str, int]) -> list[tuple[str, float]]:
            return [(f'{{{label}="{k}"}}', v) for k, v in sorted(counts.items())]

        families: list[tuple[str, str, str, list[tuple[str, float]]]] = [
            ("requests_total", "counter", "Responses sent, by status code.",
             by("status", self.requests)),
            ("sent_bytes_total", "counter", "File body bytes sent, by copy strategy.",
             by("strategy", self.bytes_sent)),
            ("strategy_fallbacks_total", "counter",
             "Responses where auto fell back to the userspace copy.", [("", self.fallbacks)]),
            ("repeat_answers_total", "counter",
             "Responses to a request repeated byte for byte, answered from the last answer's"
             " cache entry without parsing or planning.", [("", self.repeats)]),
            ("errors_total", "counter", "Connections ended by an error, by kind.",
             by("kind", self.errors)),
            ("active_connections", "gauge", "Open client connections.",
             [("", self.active_connections)]),
            ("connections_total", "counter", "Accepted connections.",
             [("", self.connections_total)]),
            ("access_log_errors_total", "counter", "Access-log lines that could not be written.",
             [("", self.access_log_errors)]),
            ("readall_held_bytes", "gauge",
             "Bytes the readall strategy holds for bodies in flight (see --readall-budget).",
             [("", self.readall_held)]),
            ("memory_cache_bytes", "gauge",
             "Bytes of small files the memory cache holds (see --memory-cache).",
             [("", self.memory_held)]),
            ("memory_cache_evictions_total", "counter",
             "Files the memory cache let go to make room for others.",
             [("", self.memory_evictions)]),
            ("workers", "gauge", "Worker processes whose figures are merged here.",
             [("", workers)]),
        ]  # fmt: skip
        for short, kind, text, samples in families:
            name = f"zcserve_{short}"
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)
        cumulative = 0
        buckets = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.latency_counts, strict=True):
            cumulative += count
            buckets.append((f'{{le="{_number(bound)}"}}', cumulative))
        out.append(
            "# HELP zcserve_response_seconds Time from a complete request head to the last byte."
        )
        out.append("# TYPE zcserve_response_seconds histogram")
        out.extend(f"zcserve_response_seconds_bucket{labels} {value}" for labels, value in buckets)
        out.append(f"zcserve_response_seconds_sum {_number(self.latency_sum)}")
        out.append(f"zcserve_response_seconds_count {cumulative}")
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_address(text: str) -> tuple[str, int]:
    """`(host, port)` of a `--metrics` listener; port 0 picks a free one."""
    return parse_host_port(text, flag="--metrics", example="127.0.0.1:9100", allow_port_zero=True)


class SnapshotWriter:
    """A worker's side: write this process's metrics to `folder` every interval."""

    def __init__(self, folder: str, metrics: Metrics) -> None:
        self.path = os.path.join(folder, f"worker-{os.getpid()}.json")
        self.metrics = metrics

    def write(self) -> None:
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(self.metrics.to_json(), out)
        os.replace(temporary, self.path)


def read_snapshots(folder: str) -> list[Metrics]:
    parts = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("worker-") and name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    parts.append(Metrics.from_json(json.load(f)))
            except (OSError, ValueError):
                continue
    return parts


METRICS_MAX_CONNECTIONS = 64
"""Metrics connections open at once. A scraper needs one; past this, a new connection
pushes out the oldest one still silent, so idle sockets cannot lock scrapes out."""
METRICS_TIMEOUT = 5.0
"""Seconds a metrics connection may live, request and answer included: a scrape
sends its request at once and reads a few kilobytes (Prometheus itself gives up
after 10 s)."""
METRICS_MAX_REQUEST = 8 * 1024
"""Bytes of request head accepted on the metrics listener (a scrape sends ~200)."""
METRICS_BACKLOG = 128
"""Listen backlog: room for a burst of connections while the loop is busy."""
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format's media type."""
STOP_TIMEOUT = 5.0
"""Seconds to wait for the metrics thread to close its listener and connections."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class _MetricsConnection(asyncio.Protocol):
    """One scrape: read a request head, answer it, close. A single timer bounds the
    whole life, so a silent or slow-reading client holds a socket for
    `METRICS_TIMEOUT` at most."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.answered = False
        self.expiry: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.expiry = asyncio.get_running_loop().call_later(METRICS_TIMEOUT, self.transport.abort)
        self.endpoint.admit(self)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return
        self.head += data
        if b"\r\n\r\n" in self.head or b"\n\n" in self.head:
            self.answer(self.endpoint.respond(bytes(self.head)))
        elif len(self.head) > METRICS_MAX_REQUEST:
            self.answer(_response(431))

    def answer(self, response: bytes) -> None:
        assert self.transport is not None
        self.answered = True
        self.transport.write(response)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        self.endpoint.forget(self)


class MetricsEndpoint:
    """`GET /metrics` on a listener of its own, served by an event loop: the server's
    own loop in a single process (`open`/`close`), or one thread's loop in the
    supervisor, which has none (`start`/`stop`). Connections are callbacks with a
    count, a size and a time bound: no thread per connection."""

    def __init__(self, address: tuple[str, int], collect: Callable[[], str]) -> None:
        self.collect = collect
        self._sock = bind(*address, METRICS_BACKLOG, purpose="metrics")
        self.port: int = self._sock.getsockname()[1]
        host = address[0] if ":" not in address[0] else f"[{address[0]}]"
        self.url = f"http://{host}:{self.port}/metrics"
        self._connections: dict[_MetricsConnection, None] = {}
        """Open connections, oldest first."""
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), host as an address."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def fileno(self) -> int:
        """The listening socket's descriptor (a forked worker closes its copy)."""
        return self._sock.fileno()

    # on a running loop -------------------------------------------------------------

    async def open(self) -> None:
        """Serve on the running loop until `close`."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _MetricsConnection(self), sock=self._sock)

    async def close(self) -> None:
        """Stop listening and cut every metrics connection still open."""
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            await self._server.wait_closed()
        self._sock.close()  # closed already, unless the loop served a duplicate of it

    # on a thread of its own --------------------------------------------------------

    def start(self) -> MetricsEndpoint:
        """Serve from one thread running its own loop (for the supervisor)."""
        opened = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve_in_thread(opened),), name="zcserve-metrics"
        )
        self._thread.daemon = True
        self._thread.start()
        opened.wait(STOP_TIMEOUT)
        return self

    async def _serve_in_thread(self, opened: threading.Event) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_stop = asyncio.Event()
        try:
            await self.open()
        finally:
            opened.set()
        await self._thread_stop.wait()
        await self.close()

    def stop(self) -> None:
        """Stop serving; safe whether or not `start` ran (a failed start-up never got
        that far) and whether or not the thread is still alive."""
        thread, loop, stopping = self._thread, self._thread_loop, self._thread_stop
        if thread is None or loop is None or stopping is None:
            self._sock.close()
            return
        try:
            loop.call_soon_threadsafe(stopping.set)
        except RuntimeError:  # the loop has already closed
            pass
        thread.join(STOP_TIMEOUT)
        self._sock.close()

    # connections -------------------------------------------------------------------

    def admit(self, connection: _MetricsConnection) -> None:
        if len(self._connections) >= METRICS_MAX_CONNECTIONS:
            silent = next((c for c in self._connections if not c.answered), None)
            if silent is None:  # every one is being answered: refuse the newcomer
                connection.abort()
                return
            silent.abort()
            self._connections.pop(silent, None)
        self._connections[connection] = None

    def forget(self, connection: _MetricsConnection) -> None:
        self._connections.pop(connection, None)

    def respond(self, head: bytes) -> bytes:
        """The whole response to one request head."""
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response(400)
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return _response(405)
        if target.split(b"?", 1)[0] not in (b"/metrics", b"/"):
            return _response(404)
        try:
            body = self.collect().encode()
        except Exception:
            log.exception("metrics: collecting failed")
            return _response(500)
        return _response(200, body, head_only=method == b"HEAD")


def _response(status: int, body: bytes | None = None, *, head_only: bool = False) -> bytes:
    """A complete `Connection: close` response; errors get their reason as the body."""
    reason = _REASONS[status]
    if body is None:
        body, content_type = f"{status} {reason}\n".encode(), "text/plain; charset=utf-8"
    else:
        content_type = EXPOSITION_TYPE
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        + ("Allow: GET, HEAD\r\n" if status == 405 else "")
        + "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body
