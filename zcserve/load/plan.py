"""Worker planning: the routes a run cycles through and one plan per worker process.

`plan_workers` splits connections and the request budget between processes,
exactly and alike (a process's share of `-n` is its share of the connections, as
its share of `--rate` is), and spreads very many loopback connections over extra
source addresses.
The routes come from `zcserve.load.probe.prepare_routes`.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zcserve.errors import ConfigError
from zcserve.load.http import is_loopback
from zcserve.load.options import LoadOptions
from zcserve.runtime import raise_nofile_limit

FD_MARGIN = 64
"""Descriptors a worker keeps for itself besides its connections."""
SOURCE_SPREAD_ABOVE = 20_000
"""More connections than this to loopback are spread over 127.0.0.2, .3, ...: one
source address has only the ephemeral port range (about 28k ports) per target."""
CONNECTIONS_PER_SOURCE = 20_000


@dataclass(frozen=True, slots=True)
class Route:
    """One origin: where to connect and the requests its connections cycle through."""

    family: int
    address: tuple[Any, ...]
    label: str
    requests: tuple[bytes, ...]
    digests: tuple[bytes | None, ...]
    """Expected body SHA-256 per request, or None when not verifying."""
    tls: bool = False
    server_hostname: str | None = None
    """https: the host name sent as SNI and checked against the certificate."""
    url_indices: tuple[int, ...] = ()
    """Each request's URL, as its index in the run's URLs (per-URL counts)."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker process runs; built by the parent, pickled to the child."""

    urls: tuple[str, ...]
    routes: tuple[Route, ...]
    first_connection: int
    connections: int
    total_connections: int
    requests: int | None
    duration: float | None
    warmup: float
    rate: float | None
    timeout: float
    sources: tuple[str, ...]
    hash_bodies: bool
    loop: str
    connect_concurrency: int
    insecure: bool = False
    cacert: str | None = None
    """A worker builds its own `ssl.SSLContext` from these: contexts do not pickle."""
    total_requests: int | None = None
    """-n over every process: with a rate, the schedule's window holds that many slots."""
    method: str = "GET"
    """HEAD: every response ends with its head."""
    expect_status: tuple[int, ...] | None = None
    """The statuses that are not errors; None is every 2xx and 3xx."""


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` in `parts` whole shares that differ by at most one and sum to `total`."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def source_addresses(options: LoadOptions, routes: Sequence[Route]) -> tuple[str, ...]:
    """Extra loopback source addresses when one would run out of ephemeral ports."""
    if options.connections <= SOURCE_SPREAD_ABOVE:
        return ()
    if not all(r.family == socket.AF_INET and is_loopback(str(r.address[0])) for r in routes):
        return ()
    count = min(250, math.ceil(options.connections / CONNECTIONS_PER_SOURCE))
    return tuple(f"127.0.0.{2 + index}" for index in range(count))


def budgets_by_connection(total: int, connections: Sequence[int]) -> list[int]:
    """`total` requests split per connection (evenly, in connection order), summed per
    process: each process's share follows its connections, as its share of a rate does
    (in the open model, slot j belongs to connection j mod C)."""
    per_connection = split_evenly(total, sum(connections))
    budgets = []
    first = 0
    for share in connections:
        budgets.append(sum(per_connection[first : first + share]))
        first += share
    return budgets


def plan_workers(options: LoadOptions, routes: tuple[Route, ...]) -> list[WorkerPlan]:
    """One plan per process: connections and the request budget split exactly."""
    workers = options.worker_count
    connections = split_evenly(options.connections, workers)
    budgets: list[int | None] = (
        list(budgets_by_connection(options.requests, connections))
        if options.requests is not None
        else [None] * workers
    )
    limit = raise_nofile_limit()
    if max(connections) + FD_MARGIN > limit:
        raise ConfigError(
            f"{max(connections)} connections per process exceed the open-file limit {limit}; "
            "use more --processes or raise ulimit -n"
        )
    sources = source_addresses(options, routes)
    plans = []
    first = 0
    for share, budget in zip(connections, budgets, strict=True):
        plans.append(
            WorkerPlan(
                urls=options.urls,
                routes=routes,
                first_connection=first,
                connections=share,
                total_connections=options.connections,
                requests=budget,
                duration=options.duration if options.requests is None else None,
                warmup=options.warmup,
                rate=options.rate,
                timeout=options.timeout,
                sources=sources,
                hash_bodies=options.hash_bodies,
                loop=options.loop,
                connect_concurrency=options.connect_concurrency,
                insecure=options.insecure,
                cacert=options.cacert,
                total_requests=options.requests,
                method=options.method,
                expect_status=options.expect_status,
            )
        )
        first += share
    return plans
