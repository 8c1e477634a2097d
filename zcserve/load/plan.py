"""What a load run will do, worked out before any load: options, routes, worker plans.

`LoadOptions` is validated once. `prepare_routes` resolves every host and connects
to it once, TLS handshake included for https (a refused port or an untrusted
certificate fails here, with one line, not as a million errors), and fetches the
reference body of each URL when verifying. `plan_workers` splits connections and
the request budget between processes, exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zcserve.errors import ConfigError, ZcserveError
from zcserve.load.http import ResponseError, ResponseReader, Target, is_loopback, parse_target
from zcserve.load.tls import client_context, describe_handshake_error
from zcserve.runtime import LOOP_NAMES, raise_nofile_limit

DEFAULT_DURATION = 10.0
"""Seconds a run lasts when neither a duration nor a request count is given (wrk)."""
DEFAULT_CONNECTIONS = 10
"""wrk's default."""
CONNECT_CONCURRENCY = 256
"""Connects in flight per process, so a 10k burst fits a listen backlog of 4096."""
FD_MARGIN = 64
"""Descriptors a worker keeps for itself besides its connections."""
SOURCE_SPREAD_ABOVE = 20_000
"""More connections than this to loopback are spread over 127.0.0.2, .3, ...: one
source address has only the ephemeral port range (about 28k ports) per target."""
CONNECTIONS_PER_SOURCE = 20_000
READ_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """One load run, validated once; the CLI builds it and nothing else reads argv."""

    urls: tuple[str, ...]
    connections: int = DEFAULT_CONNECTIONS
    duration: float | None = None
    """Seconds to measure; None with `requests` None means `DEFAULT_DURATION`."""
    requests: int | None = None
    """Total requests to send, split exactly between the processes."""
    rate: float | None = None
    """Total requests per second (open model); None is the closed model."""
    warmup: float = 0.0
    processes: int | None = None
    """Worker processes; None is the CPU count. Capped by connections (and requests)."""
    timeout: float = 10.0
    verify: bool = False
    expect: str | None = None
    loop: str = "uvloop"
    connect_concurrency: int = CONNECT_CONCURRENCY
    insecure: bool = False
    """https: do not verify the server's certificate or host name."""
    cacert: str | None = None
    """https: trust only the CA certificates in this PEM file."""

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            raise ConfigError("urls must be a sequence of URLs, not one string")
        object.__setattr__(self, "urls", tuple(self.urls))
        if not self.urls:
            raise ConfigError("no URL given; expected http://host[:port]/path or https://...")
        targets = [parse_target(url) for url in self.urls]
        if self.connections < 1:
            raise ConfigError(f"connections must be at least 1, not {self.connections}")
        origins = {target.origin for target in targets}
        if len(origins) > self.connections:
            raise ConfigError(
                f"{len(origins)} hosts need at least {len(origins)} connections, "
                f"not {self.connections}"
            )
        if self.duration is not None and self.requests is not None:
            raise ConfigError("give a duration or a request count, not both")
        if self.duration is None and self.requests is None:
            object.__setattr__(self, "duration", DEFAULT_DURATION)
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"duration must be more than 0 seconds, not {self.duration:g}")
        if self.requests is not None and self.requests < 1:
            raise ConfigError(f"requests must be at least 1, not {self.requests}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(f"rate must be more than 0 requests/s, not {self.rate:g}")
        if not self.warmup >= 0:
            raise ConfigError(f"warm-up must be 0 or more seconds, not {self.warmup:g}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be more than 0 seconds, not {self.timeout:g}")
        if self.processes is not None and self.processes < 1:
            raise ConfigError(f"processes must be at least 1, not {self.processes}")
        if self.expect is not None:
            if len(self.urls) != 1:
                raise ConfigError("--expect FILE compares one URL; give exactly one")
            if not os.path.isfile(self.expect):
                raise ConfigError(f"expected body {self.expect!r} is not a regular file")
        if self.loop not in LOOP_NAMES:
            raise ConfigError(
                f"unknown loop {self.loop!r}; expected one of {', '.join(LOOP_NAMES)}"
            )
        if self.connect_concurrency < 1:
            raise ConfigError("connect concurrency must be at least 1")
        if self.insecure or self.cacert is not None:
            if self.insecure and self.cacert is not None:
                raise ConfigError("give --insecure or --cacert FILE, not both")
            if not any(target.tls for target in targets):
                flag = "--insecure" if self.insecure else "--cacert"
                raise ConfigError(f"{flag} applies to https:// URLs; none given")
        if self.cacert is not None and not os.path.isfile(self.cacert):
            raise ConfigError(f"--cacert {self.cacert!r} is not a regular file")

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(parse_target(url) for url in self.urls)

    @property
    def hash_bodies(self) -> bool:
        return self.verify or self.expect is not None

    @property
    def worker_count(self) -> int:
        wanted = self.processes if self.processes is not None else (os.cpu_count() or 1)
        limit = min(self.connections, self.requests or self.connections)
        return max(1, min(wanted, limit))


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


async def prepare_routes(options: LoadOptions) -> tuple[Route, ...]:
    """Resolve and probe each origin once; fetch reference digests when verifying."""
    by_origin: dict[tuple[bool, str, int], list[Target]] = {}
    for target in options.targets:
        by_origin.setdefault(target.origin, []).append(target)
    digests: dict[str, bytes] = {}
    if options.expect is not None:
        digests[options.urls[0]] = await asyncio.to_thread(_file_digest, options.expect)
    context = None
    if any(target.tls for target in options.targets):
        context = client_context(insecure=options.insecure, cacert=options.cacert)
    routes = []
    for (tls, host, port), targets in by_origin.items():
        family, address = await _resolve(host, port)
        origin = _Origin(
            family=family,
            address=address,
            label=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            timeout=options.timeout,
            context=context if tls else None,
            server_hostname=host if tls else None,
        )
        await _probe(origin)
        if options.verify and options.expect is None:
            for target in targets:
                digests[target.url] = await _fetch_digest(origin, target)
        routes.append(
            Route(
                family=family,
                address=address,
                label=origin.label,
                requests=tuple(target.request() for target in targets),
                digests=tuple(digests.get(target.url) for target in targets),
                tls=tls,
                server_hostname=origin.server_hostname,
            )
        )
    return tuple(routes)


@dataclass(frozen=True, slots=True)
class _Origin:
    """How `prepare_routes` reaches one origin for its probe and reference fetches."""

    family: int
    address: tuple[Any, ...]
    label: str
    timeout: float
    context: ssl.SSLContext | None
    server_hostname: str | None


async def _resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, tuple(address)


async def _connect(
    family: int, address: tuple[Any, ...], label: str, timeout: float
) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, address)
    except TimeoutError:
        sock.close()
        raise ConfigError(f"cannot connect to {label}: timed out after {timeout:g}s") from None
    except OSError as exc:
        sock.close()
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot connect to {label}: {why}") from None
    return sock


async def _open_stream(origin: _Origin) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `origin` as streams, TLS handshake done; one-line `ConfigError`."""
    sock = await _connect(origin.family, origin.address, origin.label, origin.timeout)
    try:
        async with asyncio.timeout(origin.timeout):
            return await asyncio.open_connection(
                sock=sock,
                limit=READ_SIZE,
                ssl=origin.context,
                server_hostname=origin.server_hostname,
            )
    except OSError as exc:
        sock.close()
        if origin.context is not None:
            why = describe_handshake_error(exc)
        else:  # pragma: no cover - wrapping a plain socket that just connected
            why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot connect to {origin.label}: {why}") from None


async def _close_stream(writer: asyncio.StreamWriter, timeout: float) -> None:
    """Close politely (TLS close_notify), but never wait longer than `timeout`."""
    writer.close()
    try:
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # closed all the same; why no longer matters


async def _probe(origin: _Origin) -> None:
    """Fail fast, with one line, when the first connect (or TLS handshake) fails."""
    if origin.context is None:
        sock = await _connect(origin.family, origin.address, origin.label, origin.timeout)
        sock.close()
        return
    # Closed politely so the server completes its side of the handshake (TLS 1.3 ends
    # with the client's Finished) and does not log a reset.
    _, writer = await _open_stream(origin)
    await _close_stream(writer, origin.timeout)


async def _fetch_digest(origin: _Origin, target: Target) -> bytes:
    """SHA-256 of one response body: the reference the load's bodies must match."""
    reader = ResponseReader(hash_bodies=True)
    stream, writer = await _open_stream(origin)
    try:
        async with asyncio.timeout(origin.timeout):
            writer.write(target.request())
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    if reader.eof_error() is not None:
                        raise ZcserveError("connection closed before the response ended")
                    break
                if reader.feed(data):
                    break
    except (OSError, ResponseError, ZcserveError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise ConfigError(f"cannot fetch the reference body of {target.url}: {why}") from None
    finally:
        await _close_stream(writer, origin.timeout)
    digest = reader.digest()
    assert digest is not None
    return digest


def _file_digest(path: str) -> bytes:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").digest()


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


def plan_workers(options: LoadOptions, routes: tuple[Route, ...]) -> list[WorkerPlan]:
    """One plan per process: connections and the request budget split exactly."""
    workers = options.worker_count
    connections = split_evenly(options.connections, workers)
    budgets: list[int | None] = (
        list(split_evenly(options.requests, workers))
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
            )
        )
        first += share
    return plans
