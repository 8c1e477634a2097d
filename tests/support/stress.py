"""Tools for the hardening and fault tests: descriptor and memory readings of this
process, resets, a raised descriptor limit, and asyncio clients that abort
thousands of downloads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import resource
import socket
import struct
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from tests.support.httpclient import connect, get
from tests.support.servers import start_child
from tests.support.timing import DEADLINE, wait_for

if TYPE_CHECKING:
    from tests.support.tls import Transport

LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() sends RST instead of FIN."""
MiB = 1024 * 1024


def reset(sock: socket.socket) -> None:
    """Abort the connection with a TCP reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


def open_fds() -> int:
    """Descriptors open in this process (for a server run in a thread here)."""
    return len(os.listdir("/proc/self/fd"))


def server_side_connections(port: int) -> int:
    """TCP connections this process holds on local `port` (an in-process server's)."""
    held = psutil.Process().net_connections(kind="tcp")
    return sum(
        1 for c in held if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
    )


def settled_fds(port: int, timeout: float = 5.0) -> int:
    """This process's descriptor count once the in-process server on `port` holds no
    connection (a response can reach the client before the server closes its end)."""
    wait_for(lambda: server_side_connections(port) == 0, timeout, "server connections closed")
    return open_fds()


def raise_own_nofile(wanted: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to at least `wanted` if the hard
    limit allows; return the old limits so the caller can restore them."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = old
    if soft < wanted <= hard or (hard == resource.RLIM_INFINITY and soft < wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return old


# Many downloads from one asyncio loop --------------------------------------------------


async def open_stream(
    port: int, transport: Transport, *, rcvbuf: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over `transport` (the TLS handshake done), on a socket from
    `connect`; close them with `abort_stream`."""
    sock = connect(port, rcvbuf=rcvbuf, blocking=False)
    context = transport.client_context()
    try:
        return await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname=None if context is None else "localhost"
        )
    except BaseException:
        sock.close()
        raise


async def abort_stream(writer: asyncio.StreamWriter, *, hard: bool = False) -> None:
    """Close `writer`'s connection at once, without TLS's close_notify: with a reset
    (`hard`), else with a FIN; return once asyncio has let the socket go."""
    if hard:
        raw = writer.get_extra_info("socket")
        with suppress(OSError):
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    writer.transport.abort()
    with suppress(OSError):  # ssl.SSLError is an OSError
        await writer.wait_closed()


@dataclass(frozen=True)
class Abort:
    """One aborted download: how many response bytes to read first (-1: abort before
    sending the request) and whether to reset (RST) or close (FIN)."""

    after: int
    hard: bool


def abort_plan(count: int, size: int, seed: int) -> list[Abort]:
    """`count` abort points over a `size`-byte download, most early, none within the
    last 8 MiB so that no transfer can finish into the socket buffers (a client's
    receive buffer is 64 KiB, the server's send buffer at most 4 MiB on Linux)."""
    rng = random.Random(seed)
    latest = max(0, size - 8 * MiB)
    plan = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.05:
            after = -1  # connect, then leave without a request
        elif roll < 0.15:
            after = 0  # send the request, read nothing
        elif roll < 0.85:
            after = rng.randrange(1, min(latest, MiB) + 1)  # in the first MiB
        else:
            after = rng.randrange(1, latest + 1)  # anywhere else
        plan.append(Abort(after, rng.random() < 0.5))
    return plan


async def abort_storm(
    port: int,
    path: str,
    plan: list[Abort],
    concurrency: int,
    *,
    transport: Transport | None = None,
) -> None:
    """Run `plan` against the server: `concurrency` downloads at a time, each cut
    off at its point by a reset or a plain close; over `transport` when given
    (under TLS through asyncio streams, plain on raw sockets as without one)."""
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    todo = iter(plan)

    async def stream_worker(transport: Transport) -> None:
        for abort in todo:
            reader, writer = await open_stream(port, transport, rcvbuf=64 * 1024)
            try:
                if abort.after >= 0:
                    writer.write(request)
                    await writer.drain()
                got = 0
                while got < abort.after:
                    received = len(await reader.read(256 * 1024))
                    if received == 0:
                        raise AssertionError(f"server closed after {got} bytes")
                    got += received
            finally:
                await abort_stream(writer, hard=abort.hard)

    if transport is not None and transport.certificate is not None:
        await asyncio.gather(*(stream_worker(transport) for _ in range(concurrency)))
        return

    async def worker() -> None:
        buffer = bytearray(256 * 1024)
        for abort in todo:
            sock = connect(port, rcvbuf=64 * 1024, blocking=False)
            try:
                if abort.after >= 0:
                    await loop.sock_sendall(sock, request)
                got = 0
                while got < abort.after:
                    received = await loop.sock_recv_into(sock, buffer)
                    if received == 0:
                        raise AssertionError(f"server closed after {got} bytes")
                    got += received
            finally:
                if abort.hard:
                    reset(sock)
                else:
                    sock.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


ABORT_RSS_GROWTH = 30 * MiB
"""How far the server's RSS may stay above its start after an abort storm: the
fallback strategy alone may keep 64 pooled 256 KiB buffers (16 MiB)."""
WHOLE_BODY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(MiB)}
"""For readall, whose bodies (24 MiB here) come from malloc: glibc raises its mmap
threshold to the size of a freed mapping (up to 32 MiB), so later bodies come from
arenas that keep their memory after the free. A fixed threshold maps every body
and unmaps it when freed, so the RSS bound still catches a body kept alive."""


def run_abort_storm(
    log_dir: Path,
    root: str,
    big: tuple[str, int, str],
    strategy: str,
    loop: str,
    count: int,
    *,
    transport: Transport | None = None,
) -> int:
    """`count` aborted downloads of `big` (URL path, size, sha256) from a server
    child, over `transport` when given: its descriptors must come back to the
    start, its RSS stay within `ABORT_RSS_GROWTH`, and it must log nothing.
    Returns the RSS growth."""
    path, size, sha256 = big
    env = WHOLE_BODY_MALLOC if strategy == "readall" else None
    flags = transport.flags() if transport is not None else ()
    args = (root, "--strategy", strategy, "--loop", loop, *flags)
    with start_child(*args, log_dir=log_dir, env=env) as child:
        # Warm up without leaving a file in the open-file cache (it closes idle
        # descriptors itself after 2 s): the count must come back to exactly this.
        assert get(child.port, "/no-such-file", transport=transport).status == 404
        base_fds, base_rss = child.idle_fds(), child.rss()
        plan = abort_plan(count, size, seed=count)
        asyncio.run(abort_storm(child.port, path, plan, concurrency=32, transport=transport))
        wait_for(lambda: child.fds() == base_fds, DEADLINE, "descriptors back to the start")
        growth = child.rss() - base_rss
        assert growth <= ABORT_RSS_GROWTH, f"RSS grew by {growth / MiB:.1f} MiB"
        whole = get(child.port, path, transport=transport)
        assert hashlib.sha256(whole.body).hexdigest() == sha256, "served wrong bytes after"
        assert child.stop() == 0
    assert child.log() == "", f"aborts must log nothing at the default level:\n{child.log()}"
    return growth
