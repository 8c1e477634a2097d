"""Live metrics in the Prometheus text format, on a listener of their own.

A `Metrics` object is a handful of counters the server bumps inline (plain int
additions: cheap enough for the hot path). Workers each keep their own and write
a snapshot file every `SNAPSHOT_INTERVAL`; the process that owns `--metrics`
sums every snapshot it can see, so figures from all workers arrive merged.
The exposition is written by hand: the format is a few lines of text, and the
counters must stay plain attributes, not library objects, to stay cheap.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from zcserve.errors import ConfigError
from zcserve.runtime import parse_host_port

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
    errors: dict[str, int] = field(default_factory=dict)
    """Connections ended by an error, by kind."""
    active_connections: int = 0
    connections_total: int = 0
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
            "errors": self.errors,
            "active_connections": self.active_connections,
            "connections_total": self.connections_total,
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
            total.active_connections += part.active_connections
            total.connections_total += part.connections_total
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
            ("errors_total", "counter", "Connections ended by an error, by kind.",
             by("kind", self.errors)),
            ("active_connections", "gauge", "Open client connections.",
             [("", self.active_connections)]),
            ("connections_total", "counter", "Accepted connections.",
             [("", self.connections_total)]),
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


class MetricsEndpoint:
    """`GET /metrics` on its own thread and socket, so scraping never waits on the
    event loop and a busy loop never delays a scrape."""

    def __init__(self, address: tuple[str, int], collect: Callable[[], str]) -> None:
        collector = collect

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = collector().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        try:
            self.httpd = ThreadingHTTPServer(address, Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for metrics on {address[0]}:{address[1]}: {exc.strerror}"
            ) from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        host = address[0] if ":" not in address[0] else f"[{address[0]}]"
        self.url = f"http://{host}:{self.port}/metrics"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="zcserve-metrics", daemon=True
        )

    def start(self) -> MetricsEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
