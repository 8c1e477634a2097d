"""One connection core for plain TCP and TLS: whole responses on close, the same
answers and the same closing moments for slow and malformed clients, over both
transports."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.httpclient import connect
from tests.support.servers import ServerThread, start_server
from tests.support.site import SIZES, Site
from tests.support.tls import Certificate, Transport

HELLO = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 2.0
SLACK = 2.0
"""Scheduling slack on a loaded machine, on top of a timeout and the sweep's tick."""
SAME_MOMENT = 0.75
"""How far apart the plain and the TLS connection may close for 'the same moment':
two sweep ticks (0.25 s each) plus scheduling."""
HUGE = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A 64 MiB file of a repeated random MiB, and its hash."""
    root = tmp_path_factory.mktemp("huge")
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with open(root / "huge.bin", "wb") as out:
        for _ in range(HUGE // len(block)):
            out.write(block)
            digest.update(block)
    return str(root), digest.hexdigest()


def read_all(sock: socket.socket, timeout: float = 30.0) -> tuple[bytes, bool]:
    """Everything until the server closes; and whether the close was a reset."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


def split_responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each complete Content-Length response in `data`."""
    responses = []
    at = 0
    while True:
        head_end = data.find(b"\r\n\r\n", at)
        if head_end < 0:
            break
        head = data[at:head_end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body_start = head_end + 4
        if len(data) < body_start + length:
            break
        responses.append((head, data[body_start : body_start + length]))
        at = body_start + length
    return responses


Steps = list[tuple[float, bytes]]
"""What a client writes and when: (seconds after connecting, bytes)."""


def exchange(
    sock: socket.socket, steps: Steps | bytes, timeout: float = 60.0
) -> tuple[bytes, bool, float]:
    """Write `steps` on time while reading answers as they come, from one thread (an
    SSL socket cannot be read and written from two), until the server closes: what
    arrived, whether the close was a reset, and when it came. A client that writes
    everything before reading deadlocks against any server that answers in order."""
    queue = [(0.0, steps)] if isinstance(steps, bytes) else list(steps)
    sock.setblocking(False)
    unsent = memoryview(b"")
    chunks: list[bytes] = []
    began = time.monotonic()
    while (now := time.monotonic() - began) < timeout:
        while queue and queue[0][0] <= now:
            unsent = memoryview(bytes(unsent) + queue.pop(0)[1])
        wait = min(1.0, queue[0][0] - now) if queue else 1.0
        readable, writable, _ = select.select([sock], [sock] if unsent else [], [], wait)
        while readable:
            try:
                chunk = sock.recv(1 << 20)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ConnectionResetError:
                return b"".join(chunks), True, time.monotonic() - began
            if not chunk:
                return b"".join(chunks), False, time.monotonic() - began
            chunks.append(chunk)
        if writable and unsent:
            try:
                unsent = unsent[sock.send(unsent[: 64 * 1024]) :]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
            except (BrokenPipeError, ConnectionResetError):  # the server closed early
                unsent, queue = unsent[:0], []
    raise TimeoutError(f"the server did not close within {timeout}s")


@pytest.fixture
def server_for(transport: Transport) -> Iterator[list[ServerThread]]:
    started: list[ServerThread] = []
    yield started
    for server in started:
        server.stop()


def start(started: list[ServerThread], transport: Transport, **options: object) -> ServerThread:
    server = start_server(**transport.options(), **options)
    started.append(server)
    return server


# Nothing lost on close ------------------------------------------------------------


@pytest.mark.parametrize("name", ["64k1.bin", "big.bin"])  # fits the socket buffer, or not
@pytest.mark.parametrize(
    "strategy", ["auto", "sendfile", "fallback", "readwrite", "mmap", "splice"]
)
def test_close_with_pipelined_requests_behind_is_whole_and_logs_what_was_sent(
    transport: Transport,
    server_for: list[ServerThread],
    site: Site,
    strategy: str,
    name: str,
    tmp_path: Path,
) -> None:
    """`Connection: close` with 16 KiB of GETs behind it in the same write: the whole
    body, then a clean end; nothing behind it is answered or logged."""
    if strategy not in transport.strategies:
        pytest.skip(f"{strategy} cannot carry {transport.name}")
    log_path = tmp_path / "access.log"
    server = start(
        server_for, transport, root=site.root, strategy=strategy, access_log=str(log_path)
    )
    behind = HELLO * (16 * 1024 // len(HELLO))
    request = f"GET /{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    with connect(server.port, transport=transport) as sock:
        sock.sendall(request + behind)
        time.sleep(0.2)  # the answer waits in the client's buffer, as a slow reader's
        received, reset = read_all(sock)
    responses = split_responses(received)
    assert not reset, f"reset after {len(received)} bytes"
    assert len(responses) == 1, [head[:20] for head, _ in responses]
    head, body = responses[0]
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
    assert len(body) == SIZES[name], f"{len(body)} of {SIZES[name]} body bytes"
    assert hashlib.sha256(body).hexdigest() == site.hashes[name]
    server.stop()
    lines = log_path.read_text().splitlines()
    assert len(lines) == 1 and f'"GET /{name} HTTP/1.1" 200' in lines[0], lines


def test_a_huge_body_with_many_requests_behind_is_whole(
    transport: Transport, server_for: list[ServerThread], huge: tuple[str, str]
) -> None:
    """64 MiB, then 200 KiB of requests behind it: the linger has no byte cap that
    resets a client still reading its response."""
    root, digest = huge
    server = start(server_for, transport, root=root)
    request = b"GET /huge.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    behind = b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n" * (200 * 1024 // 37)
    with connect(server.port, transport=transport, rcvbuf=64 * 1024) as sock:
        received, reset, _ = exchange(sock, request + behind)
    body = received.partition(b"\r\n\r\n")[2]
    assert not reset, f"reset after {len(body)} of {HUGE} body bytes"
    assert len(body) == HUGE and hashlib.sha256(body).hexdigest() == digest


def test_3000_pipelined_requests_in_one_write_are_all_answered(
    transport: Transport, server_for: list[ServerThread], site: Site
) -> None:
    count = 3000
    server = start(server_for, transport, root=site.root)
    request = b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\n\r\n"
    last = b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with connect(server.port, transport=transport) as sock:
        received, reset, _ = exchange(sock, request * (count - 1) + last)
    responses = split_responses(received)
    assert not reset and len(responses) == count, f"{len(responses)} of {count}, reset={reset}"
    whole = sum(len(body) == SIZES["64k1.bin"] for _, body in responses)
    assert whole == count


def test_max_pipelined_counts_requests_per_connection_not_per_read(
    transport: Transport, server_for: list[ServerThread], site: Site
) -> None:
    """1,000 requests of 38 bytes and the same padded to 240: both all answered."""
    server = start(server_for, transport, root=site.root, max_pipelined=128)
    short = b"GET /hello.txt HTTP/1.1\r\nHost: abc\r\n\r\n"  # 38 bytes, as in the report
    padded = short[:-2] + b"X-Pad: " + b"p" * (240 - len(short) - 9) + b"\r\n\r\n"
    last = short[:-2] + b"Connection: close\r\n\r\n"
    for request in (short, padded):
        with connect(server.port, transport=transport) as sock:
            received, reset, _ = exchange(sock, request * 999 + last)
        statuses = [head[9:12] for head, _ in split_responses(received)]
        assert not reset and statuses == [b"200"] * 1000, (len(statuses), set(statuses))


# The same answers and closing moments, plain and TLS ------------------------------


CLIENTS: dict[str, Steps] = {
    "crlf-only": [(0.2 * i, b"\r\n") for i in range(40)],
    "one-byte-at-a-time": [(0.2 * i, bytes([byte])) for i, byte in enumerate(HELLO)],
    "stalled-head": [(0.0, b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n")],
    "stalled-body": [
        (0.0, b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    ],
    "close-with-pipelined-behind": [
        (0.0, b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + HELLO * 50)
    ],
    "3000-pipelined": [(0.0, HELLO * 3000)],
}


def _observe(server: ServerThread, transport: Transport, client: str) -> tuple[list[bytes], float]:
    """The statuses a client gets and how long after connecting the server closed."""
    with connect(server.port, transport=transport) as sock:
        received, _, closed_after = exchange(sock, CLIENTS[client], timeout=30)
    return [head[9:12] for head, _ in split_responses(received)], closed_after


@pytest.fixture(scope="module")
def both_servers(
    site: Site, certificate: Certificate
) -> Iterator[dict[str, tuple[Transport, ServerThread]]]:
    servers = {}
    for transport in (Transport("plain", None), Transport("tls", certificate)):
        servers[transport.name] = (
            transport,
            start_server(
                root=site.root,
                header_timeout=HEADER_TIMEOUT,
                keepalive_timeout=KEEPALIVE_TIMEOUT,
                **transport.options(),
            ),
        )
    yield servers
    for _, server in servers.values():
        server.stop()


@pytest.mark.serial
@pytest.mark.parametrize("client", list(CLIENTS))
def test_plain_and_tls_give_the_same_answers_and_close_at_the_same_moment(
    both_servers: dict[str, tuple[Transport, ServerThread]], client: str
) -> None:
    with ThreadPoolExecutor(len(both_servers)) as pool:  # both at once: half the wait
        observing = {
            name: pool.submit(_observe, server, transport, client)
            for name, (transport, server) in both_servers.items()
        }
        seen = {name: future.result() for name, future in observing.items()}
    (plain_statuses, plain_closed), (tls_statuses, tls_closed) = seen["plain"], seen["tls"]
    assert plain_statuses == tls_statuses, (
        f"{client}: {len(plain_statuses)} vs {len(tls_statuses)} answers"
    )
    assert abs(plain_closed - tls_closed) < SAME_MOMENT, seen
    assert max(plain_closed, tls_closed) < HEADER_TIMEOUT + SLACK or client == "3000-pipelined", (
        seen
    )


# Behaviours that planted defects once slipped past -------------------------------


@pytest.mark.serial
@pytest.mark.parametrize("strategy", ["auto", "readwrite"])  # stepped, and awaited
def test_a_slow_steady_reader_is_not_cut_at_the_send_timeout(
    transport: Transport, server_for: list[ServerThread], site: Site, strategy: str
) -> None:
    """The send deadline moves with every bit of progress: a client that reads all
    along, if slowly, is not cut at --send-timeout. The kernel signals writability
    only once half its queue has drained, which at 1.6 MB/s takes longer than the
    0.5 s timeout here, so the server must see progress some other way."""
    server = start(server_for, transport, root=site.root, send_timeout=0.5, strategy=strategy)
    chunks: list[bytes] = []
    with connect(server.port, transport=transport) as sock:
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        slow_until = time.monotonic() + 2.0
        while time.monotonic() < slow_until:  # 64 KiB every 40 ms
            got = 0
            while got < 64 * 1024 and (chunk := sock.recv(64 * 1024 - got)):
                chunks.append(chunk)
                got += len(chunk)
            time.sleep(0.04)
        received, _ = read_all(sock)  # then the rest at full speed
    body = (b"".join(chunks) + received).partition(b"\r\n\r\n")[2]
    assert len(body) == SIZES["big.bin"], f"cut after {len(body)} of {SIZES['big.bin']} bytes"


@pytest.mark.serial
def test_a_lingering_connection_closes_when_its_client_does(
    transport: Transport, server_for: list[ServerThread], site: Site
) -> None:
    """After the last response the server drains; once the client closes too, so does
    the server, at once, not after the linger's idle time."""
    server = start(server_for, transport, root=site.root)
    with connect(server.port, transport=transport) as sock:
        sock.sendall(
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + HELLO * 20
        )
        received, reset = read_all(sock)
        assert split_responses(received)[0][1] == b"hello\n" and not reset
    began = time.monotonic()
    while server.server._open_connections() and time.monotonic() - began < 3.0:
        time.sleep(0.02)
    assert server.server._open_connections() == 0, "still lingering after the client left"
    assert time.monotonic() - began < 1.0


def test_small_bodies_on_a_keepalive_connection_are_not_summed(
    transport: Transport, server_for: list[ServerThread], site: Site
) -> None:
    """Each request's body counts against the 64 KiB limit on its own."""
    server = start(server_for, transport, root=site.root)
    one = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000
    last = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with connect(server.port, transport=transport) as sock:
        received, reset, _ = exchange(sock, one * 100 + last)
    statuses = [head[9:12] for head, _ in split_responses(received)]
    assert not reset and statuses == [b"200"] * 101, set(statuses)
