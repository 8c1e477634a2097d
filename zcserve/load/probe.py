"""The network work done before any load: resolve, connect once, fetch references.

`prepare_routes` resolves every host and connects to it once, TLS handshake
included for https (a refused port or an untrusted certificate fails here, with
one line, not as a million errors), and fetches the reference body of each URL
when verifying.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from zcserve.errors import ConfigError, ZcserveError
from zcserve.load.http import ResponseError, ResponseReader, Target
from zcserve.load.options import LoadOptions
from zcserve.load.plan import Route
from zcserve.load.tls import client_context, describe_handshake_error

READ_SIZE = 256 * 1024


async def prepare_routes(options: LoadOptions) -> tuple[Route, ...]:
    """Resolve and probe each origin once; fetch reference digests when verifying."""
    by_origin: dict[tuple[bool, str, int], list[tuple[int, Target]]] = {}
    for index, target in enumerate(options.targets):
        by_origin.setdefault(target.origin, []).append((index, target))
    method, headers = options.method, options.header_fields
    digests: dict[str, bytes] = {}
    if options.expect is not None:
        digests[options.urls[0]] = await asyncio.to_thread(_file_digest, options.expect)
    context = None
    if any(target.tls for target in options.targets):
        context = client_context(insecure=options.insecure, cacert=options.cacert)
    routes = []
    for (tls, host, port), indexed in by_origin.items():
        targets = [target for _, target in indexed]
        family, address = await _resolve(host, port)
        origin = _Origin(
            family=family,
            address=address,
            label=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            timeout=options.timeout,
            context=context if tls else None,
            server_hostname=host if tls else None,
            cacert=options.cacert,
        )
        await _probe(origin)
        if options.verify and options.expect is None:
            for target in targets:
                request = target.request(method, headers)
                digests[target.url] = await _fetch_digest(
                    origin, target, request, no_body=method == "HEAD"
                )
        routes.append(
            Route(
                family=family,
                address=address,
                label=origin.label,
                requests=tuple(target.request(method, headers) for target in targets),
                digests=tuple(digests.get(target.url) for target in targets),
                tls=tls,
                server_hostname=origin.server_hostname,
                url_indices=tuple(index for index, _ in indexed),
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
    cacert: str | None = None


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
            why = describe_handshake_error(exc, origin.cacert)
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


async def _fetch_digest(origin: _Origin, target: Target, request: bytes, *, no_body: bool) -> bytes:
    """SHA-256 of one response body to `request`: the reference the load's bodies
    must match (sent as the load sends it: its method and headers)."""
    reader = ResponseReader(hash_bodies=True, no_body=no_body)
    stream, writer = await _open_stream(origin)
    try:
        async with asyncio.timeout(origin.timeout):
            writer.write(request)
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
