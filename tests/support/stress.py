"""Tools for the hardening tests: a server in a child process whose log can be read
while it runs, descriptor and memory readings, bounded polling, and an asyncio
client that holds thousands of sockets."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
import pytest

from tests.support.servers import ServerThread, start_server
from zcserve.bench.child import ServeChild, start_serve
from zcserve.errors import RunError

if TYPE_CHECKING:
    from tests.conftest import Transport

T = TypeVar("T")

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


def wait_for(check: Callable[[], T], timeout: float, what: str, *, every: float = 0.02) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last: {result!r})")
        time.sleep(every)


def recv_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything `sock` receives until EOF or a reset, within `timeout` seconds.

    Returns the bytes and whether the connection really ended (False: timed out)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            return b"".join(chunks), False
        except ConnectionError:
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)


def status_codes(received: bytes) -> list[int]:
    """Every status code in a byte stream of responses (bodies here are plain text)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


def raise_own_nofile(wanted: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to at least `wanted` if the hard
    limit allows; return the old limits so the caller can restore them."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = old
    if soft < wanted <= hard or (hard == resource.RLIM_INFINITY and soft < wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return old


@contextmanager
def running(**overrides: Any) -> Iterator[ServerThread]:
    """An in-process server (`start_server` with `overrides`), stopped after the block."""
    server = start_server(**overrides)
    try:
        yield server
    finally:
        server.stop()


# A server in a child process -------------------------------------------------------


@dataclass
class Spawned:
    """A `zcserve serve` child: its port, its log file, and what it printed after the
    ready line (filled in when it stops)."""

    child: ServeChild
    log_path: Path
    process: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.child.pid)

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.child.proc

    @property
    def port(self) -> int:
        return self.child.port

    @property
    def stdout(self) -> str:
        return self.child.stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fds(self) -> int:
        return self.process.num_fds()

    def connections(self) -> int:
        """TCP connections the server holds, its listening socket aside."""
        held = self.process.net_connections(kind="tcp")
        return sum(1 for conn in held if conn.status != psutil.CONN_LISTEN)

    def idle_fds(self, timeout: float = 5.0) -> int:
        """The descriptor count once the server holds no connection."""
        wait_for(lambda: self.connections() == 0, timeout, "server connections all closed")
        return self.fds()

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the child, wait for it, and return its exit code."""
        return self.child.stop(signum, timeout)


def skip_unless_carried(transport: Transport, strategy: str) -> None:
    """Skip a test of `strategy` over `transport` when the one cannot carry the other
    (no zero-copy strategy carries TLS). `transport.strategies` leaves readall out of
    both lists; it moves bytes through userspace as readwrite does, and the server
    accepts it with TLS, so here it carries both."""
    if strategy not in transport.strategies and strategy != "readall":
        pytest.skip(f"{strategy} cannot carry {transport.name}")


def serve_flags(options: Mapping[str, object]) -> tuple[str, ...]:
    """`start_server` options (a transport's, say) as `zcserve serve` flags:
    {"tls_cert": PATH} is ("--tls-cert", PATH)."""
    flags: list[str] = []
    for name, value in options.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return tuple(flags)


def _limit_nofile(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@contextmanager
def spawn(
    log_dir: Path,
    root: str,
    *args: str,
    nofile: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Spawned]:
    """Run `zcserve serve ROOT ARGS --port 0` with its log (stderr) in a file under
    `log_dir`; `nofile` caps its descriptors (soft and hard); `env` is added to this
    process's environment. On exit the child is stopped by its PID if the test has
    not stopped it already."""
    log_path = log_dir / f"zcserve-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log_file:
        try:
            started = start_serve(
                [root, *args, "--port", "0"],
                env=None if env is None else {**os.environ, **env},
                stderr=log_file,
                preexec_fn=_limit_nofile(nofile) if nofile is not None else None,
            )
        except RunError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()}") from None
    with started:
        yield Spawned(started, log_path)


# Many sockets from one asyncio loop ---------------------------------------------------


async def connect(
    port: int, *, source: str | None = None, rcvbuf: int | None = None
) -> socket.socket:
    """A connected non-blocking client socket, optionally from another 127.0.0.x."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.bind((source, 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def client_context(transport: Transport) -> ssl.SSLContext | None:
    """What a client trusts over `transport`: its certificate under TLS, None plain."""
    if transport.pem is None:
        return None
    return ssl.create_default_context(cafile=transport.pem.cert)


async def open_stream(
    port: int, transport: Transport, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over `transport` (the TLS handshake done), on a socket from
    `connect`; close them with `abort_stream`."""
    sock = await connect(port, rcvbuf=rcvbuf)
    context = client_context(transport)
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


async def read_response_async(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response with a Content-Length, read from `sock`."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError(f"closed inside a head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    assert match is not None, head
    length = int(match.group(1))
    while len(body) < length:
        chunk = await loop.sock_recv(sock, max(65536, length - len(body)))
        if not chunk:
            raise ConnectionError(f"closed after {len(body)} of {length} body bytes")
        body += chunk
    assert len(body) == length, "more bytes than Content-Length"
    return int(head.split(b" ", 2)[1]), body


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
    import random

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

    if transport is not None and transport.pem is not None:
        await asyncio.gather(*(stream_worker(transport) for _ in range(concurrency)))
        return

    async def worker() -> None:
        buffer = bytearray(256 * 1024)
        for abort in todo:
            sock = await connect(port, rcvbuf=64 * 1024)
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
    import hashlib

    from tests.support.httpclient import get

    path, size, sha256 = big
    env = WHOLE_BODY_MALLOC if strategy == "readall" else None
    flags = serve_flags(transport.options()) if transport is not None else ()
    with spawn(log_dir, root, "--strategy", strategy, "--loop", loop, *flags, env=env) as child:
        # Warm up without leaving a file in the open-file cache (it closes idle
        # descriptors itself after 2 s): the count must come back to exactly this.
        assert get(child.port, "/no-such-file", transport=transport).status == 404
        base_fds, base_rss = child.idle_fds(), child.rss()
        plan = abort_plan(count, size, seed=count)
        asyncio.run(abort_storm(child.port, path, plan, concurrency=32, transport=transport))
        wait_for(lambda: child.fds() == base_fds, 10.0, "descriptors back to the start")
        growth = child.rss() - base_rss
        assert growth <= ABORT_RSS_GROWTH, f"RSS grew by {growth / MiB:.1f} MiB"
        whole = get(child.port, path, transport=transport)
        assert hashlib.sha256(whole.body).hexdigest() == sha256, "served wrong bytes after"
        assert child.stop() == 0
    assert child.log() == "", f"aborts must log nothing at the default level:\n{child.log()}"
    return growth
