"""Limits and timeouts against a live server: size and count caps, pipelining,
slowloris, idle and stalled clients, and the connection cap.

Timing rules, so that these hold on a loaded 2-core machine and on a server that
enforces timeouts with a coarse periodic sweep:

* a timeout T is asserted as a lower and an upper bound, never a narrow window:
  the connection is cut no earlier than T - EARLY after a moment that is surely
  before the server's timer started, and no later than T + TICK + MARGIN after a
  moment that is surely after it started;
* nothing waits on a sleep: a test waits for something it can observe (a
  response, a close, a connection the server holds), with a deadline;
* "still open" is shown by a further exchange on the connection, not by silence
  for a while.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import time
from dataclasses import dataclass

import pytest

from tests.support.httpclient import (
    Response,
    connect,
    get,
    read_response,
    read_response_async,
    recv_until_closed,
    status_codes,
)
from tests.support.servers import start_server
from tests.support.site import LOOPS, SIZES, Site
from tests.support.stress import abort_stream, open_fds, open_stream, server_side_connections
from tests.support.timing import DEADLINE, EARLY, latest_cut, wait_for
from tests.support.tls import Transport, skip_unless_carried
from zcserve.server.strategies import STRATEGY_NAMES

pytestmark = pytest.mark.timeout(60)

HELLO = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"


def answer(transport: Transport, port: int, raw: bytes) -> tuple[list[int], bool]:
    """Send `raw` in one write; the statuses received and whether the server closed."""
    with connect(port, transport=transport) as sock:
        sock.sendall(raw)
        received, closed = recv_until_closed(sock, DEADLINE)
    return status_codes(received), closed


def read_one(sock: socket.socket) -> Response | None:
    """One response from `sock`; None if the server closed (or reset) instead."""
    try:
        with sock.makefile("rb") as reader:
            return read_response(reader)
    except ConnectionError:
        return None


def answered_and_kept_open(
    transport: Transport, port: int, raw: bytes, count: int
) -> tuple[list[int], int | None]:
    """Send `raw` in one write and read `count` responses, then ask for HELLO on the
    same connection: the statuses, and the follow-up's status (None: the server had
    closed the connection)."""
    with connect(port, transport=transport) as sock, sock.makefile("rb") as reader:
        sock.sendall(raw)
        statuses: list[int] = []
        for _ in range(count):
            response = read_response(reader)
            assert response is not None, f"closed after {statuses}"
            statuses.append(response.status)
        try:
            sock.sendall(HELLO)
            follow_up = read_response(reader)
        except ConnectionError:
            follow_up = None
    return statuses, follow_up.status if follow_up is not None else None


# Size and count limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 150 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),  # target past 100
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 400 + b"\r\n\r\n", 431),  # 400 > 300
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-N: 1\r\n" * 5 + b"\r\n", 431),  # 6 headers > 5
        (b"GET /" + b"a" * 150, 414),  # an unfinished target already too long
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 2000, 431),  # unfinished header
    ],
    ids=["long-target", "big-header", "many-headers", "partial-target", "partial-header"],
)
def test_limits_from_config_answer_and_close(
    transport: Transport, site: Site, raw: bytes, status: int
) -> None:
    limits = {"max_request_line": 100, "max_header_bytes": 300, "max_headers": 5}
    with start_server(root=site.root, **limits, **transport.options()) as s:
        statuses, closed = answer(transport, s.port, raw)
        assert statuses == [status] and closed, (statuses, closed)
        # Just under every limit is served, and on a connection that stays open.
        fine = b"GET /" + b"a" * 90 + b" HTTP/1.1\r\nHost: t\r\n" + b"X-N: 1\r\n" * 4 + b"\r\n"
        statuses, follow_up = answered_and_kept_open(transport, s.port, fine, 1)
        assert statuses == [404] and follow_up == 200, (statuses, follow_up)


def test_pipelined_requests_past_the_cap_wait_their_turn(transport: Transport, site: Site) -> None:
    """--max-pipelined bounds the requests parsed ahead of their answers; the rest
    wait unread, as in nginx, and are all answered in order."""
    with start_server(root=site.root, max_pipelined=4, **transport.options()) as server:
        statuses, follow_up = answered_and_kept_open(transport, server.port, HELLO * 4, 4)
        assert statuses == [200] * 4 and follow_up == 200, "4 pipelined requests are within the cap"
        statuses, follow_up = answered_and_kept_open(transport, server.port, HELLO * 50, 50)
        assert statuses == [200] * 50 and follow_up == 200, statuses


def test_unknown_upgrade_is_answered_then_closed(transport: Transport, site: Site) -> None:
    """An Upgrade the server does not speak ends the exchange: whatever follows the
    head is not HTTP to us, so the connection must close rather than go deaf."""
    upgrade = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    with start_server(root=site.root, **transport.options()) as server:
        statuses, closed = answer(transport, server.port, upgrade + HELLO)
        assert statuses == [200] and closed, (statuses, closed)
        connect_ = b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org\r\n\r\n"
        statuses, closed = answer(transport, server.port, connect_ + HELLO)
        assert len(statuses) == 1 and 400 <= statuses[0] < 500 and closed, (statuses, closed)


# Timeouts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trickled:
    """When a trickling client dialled, was connected, and was cut off (monotonic)."""

    dialled: float
    """Before connect(): surely before the server's header timer started."""
    connected: float
    """After connect() (and a TLS handshake): surely after the server's timer started
    at the accept."""
    cut: float
    """When the client saw the close."""


async def _trickle(
    transport: Transport,
    port: int,
    pause: float,
    give_up: float,
    began: asyncio.Event | None = None,
) -> Trickled:
    """Send a head that never ends, one byte per `pause` seconds (under TLS, one
    record per byte), and return when the server cuts it off. Sets `began` once the
    first byte is sent; fails if the head is still going `give_up` seconds after
    the connection opened."""
    dialled = time.monotonic()
    reader, writer = await open_stream(port, transport)
    try:
        connected = time.monotonic()
        for byte in HELLO[:-2] + b"X-Slow: " + b"z" * 1000:
            if time.monotonic() - connected > give_up:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                if began is not None:
                    began.set()
                async with asyncio.timeout(pause):
                    data = await reader.read(1024)
            except TimeoutError:
                continue
            except ConnectionError:
                return Trickled(dialled, connected, time.monotonic())
            assert data == b"", f"a trickling client got an answer: {data!r}"
            return Trickled(dialled, connected, time.monotonic())
        raise AssertionError(f"a head trickled for {give_up:g}s without being cut off")
    finally:
        await abort_stream(writer)


def timed_get(transport: Transport, port: int, path: str) -> tuple[Response, float]:
    """`get`, and when its response had arrived (monotonic)."""
    response = get(port, path, transport=transport)
    return response, time.monotonic()


def assert_cut_at_header_timeout(trickled: list[Trickled], header_timeout: float) -> None:
    """Every trickler was cut, none before the header timeout, none long after it."""
    early = min(t.cut - t.dialled for t in trickled)
    late = max(t.cut - t.connected for t in trickled)
    assert early >= header_timeout - EARLY, (
        f"a trickler was cut after {early:.2f}s with a {header_timeout:g}s header timeout"
    )
    assert late <= latest_cut(header_timeout), (
        f"a trickler lasted {late:.2f}s with a {header_timeout:g}s header timeout"
    )


@pytest.mark.parametrize("loop", LOOPS)
async def test_header_timeout_cuts_a_trickling_client(
    transport: Transport, site: Site, loop: str
) -> None:
    """A head sent a byte every 0.25 s never completes: the header timeout counts from
    the connection, so the bytes dribbling in must not keep it alive."""
    header_timeout = 1.0
    options = transport.options()
    with start_server(
        root=site.root, loop=loop, header_timeout=header_timeout, **options
    ) as server:
        trickled = await _trickle(transport, server.port, 0.25, latest_cut(header_timeout) + 1)
    assert_cut_at_header_timeout([trickled], header_timeout)


@pytest.mark.parametrize("loop", LOOPS)
async def test_slowloris_does_not_starve_a_normal_client(
    transport: Transport, site: Site, loop: str
) -> None:
    """With 200 connections trickling heads, a normal GET is served while every
    trickler still hangs on (not after the server got rid of them), and the header
    timeout then cuts every trickler off."""
    header_timeout = 3.0
    options = transport.options()
    with start_server(
        root=site.root, loop=loop, header_timeout=header_timeout, **options
    ) as server:
        began = [asyncio.Event() for _ in range(200)]
        give_up = latest_cut(header_timeout) + 1
        tricklers = [
            asyncio.create_task(_trickle(transport, server.port, 0.5, give_up, event))
            for event in began
        ]
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*(event.wait() for event in began))
        await asyncio.to_thread(
            wait_for,
            lambda: server_side_connections(server.port) >= 200,
            DEADLINE,
            "the server holds all 200 tricklers",
        )
        response, served = await asyncio.to_thread(timed_get, transport, server.port, "/hello.txt")
        assert response.body == b"hello\n"
        async with asyncio.timeout(give_up + DEADLINE):
            trickled = await asyncio.gather(*tricklers)
    first_cut = min(t.cut for t in trickled)
    assert served < first_cut, (
        f"the normal client was served {served - first_cut:.2f}s after the first trickler "
        "was cut: it waited for the tricklers to go"
    )
    assert_cut_at_header_timeout(trickled, header_timeout)


@pytest.mark.parametrize("loop", LOOPS)
def test_keepalive_idle_timeout_closes_an_idle_connection(
    transport: Transport, site: Site, loop: str
) -> None:
    """The keep-alive timeout counts idle time from the last request, not the
    connection's age: a request after a short idle restarts it."""
    keepalive_timeout = 2.5
    short_idle = 0.5  # well under the timeout, even with a stalled test thread
    options = {"keepalive_timeout": keepalive_timeout, **transport.options()}
    with start_server(root=site.root, loop=loop, **options) as server:
        with connect(server.port, transport=transport) as sock, sock.makefile("rb") as reader:
            sock.sendall(HELLO)
            first = read_response(reader)
            assert first is not None and first.body == b"hello\n"
            # Idle, watching the socket: it must neither close nor receive anything.
            readable, _, _ = select.select([sock], [], [], short_idle)
            assert not readable, "the connection ended after a short idle"
            asked = time.monotonic()  # surely before the server's idle timer restarts
            sock.sendall(HELLO)
            second = read_response(reader)
            answered = time.monotonic()  # surely after it restarted
            assert second is not None and second.body == b"hello\n"
            rest, closed = recv_until_closed(sock, latest_cut(keepalive_timeout) + DEADLINE)
            ended = time.monotonic()
    assert closed and rest == b"", "an idle keep-alive connection was never closed"
    assert ended - asked >= keepalive_timeout - EARLY, (
        f"closed {ended - asked:.2f}s after the last request with a "
        f"{keepalive_timeout:g}s keep-alive timeout"
    )
    assert ended - answered <= latest_cut(keepalive_timeout), (
        f"closed after {ended - answered:.2f}s idle with a {keepalive_timeout:g}s timeout"
    )


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_send_stall_timeout_cuts_a_client_that_stops_reading(
    transport: Transport, site: Site, strategy: str, loop: str
) -> None:
    skip_unless_carried(transport, strategy)
    send_timeout = 0.5
    options = {"strategy": strategy, "loop": loop, "send_timeout": send_timeout}
    with start_server(root=site.root, **options, **transport.options()) as server:
        # An unused cached descriptor closes after 0.1 s here, not the server's 2 s: the
        # check below waits for the file's to close, its lease returned.
        server.server.files.inactive = 0.1
        before = open_fds()
        with connect(server.port, transport=transport, rcvbuf=64 * 1024) as sock:
            asked = time.monotonic()  # the stall cannot begin before the request
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            first = sock.recv(16)  # the transfer has begun; from now on, read nothing
            stopped = time.monotonic()  # the stall has begun by the time buffers fill
            wait_for(
                lambda: server_side_connections(server.port) == 0,
                latest_cut(send_timeout) + DEADLINE,
                "stalled connection dropped",
            )
            dropped = time.monotonic()
            received, closed = recv_until_closed(sock, DEADLINE)
            # Nothing leaks: the file's descriptor closes too (the open-file cache
            # keeps it a while after its last use, so this is not a timing).
            wait_for(lambda: open_fds() <= before + 1, DEADLINE, "descriptors back to the start")
        assert closed, "the connection stayed open after the stall"
        head, _, body = (first + received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert len(body) < SIZES["big.bin"], "the whole file was sent to a stalled client"
        assert dropped - asked >= send_timeout - EARLY, (
            f"dropped {dropped - asked:.2f}s after the request with a {send_timeout:g}s "
            "send timeout"
        )
        # The buffers between us fill within moments of the last read, then the
        # timeout runs; filling them is part of the margin.
        assert dropped - stopped <= latest_cut(send_timeout), (
            f"a stalled client was held {dropped - stopped:.2f}s with a {send_timeout:g}s "
            "send timeout"
        )
        assert get(server.port, "/hello.txt", transport=transport).body == b"hello\n"


# Connection cap -------------------------------------------------------------------------


def ask(sock: socket.socket) -> Response | None:
    sock.sendall(HELLO)
    return read_one(sock)


def first_bytes(transport: Transport, sock: socket.socket) -> socket.socket:
    """Send a connection's first bytes, which need no answer from the server: plain,
    a request (HELLO); under TLS, the ClientHello (the request must wait for the
    handshake). Returns the socket to go on with, in `answer_after_accept`."""
    context = transport.client_context()
    if context is None:
        sock.sendall(HELLO)
        return sock
    tls = context.wrap_socket(sock, server_hostname="localhost", do_handshake_on_connect=False)
    tls.setblocking(False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:  # the ClientHello is out; the ServerHello waits for accept
        pass
    else:
        raise AssertionError("a TLS handshake finished before the server accepted")
    return tls


def answer_after_accept(sock: socket.socket) -> Response | None:
    """The answer to what `first_bytes` began: under TLS, finish the handshake and
    send the request first."""
    sock.settimeout(DEADLINE)
    if isinstance(sock, ssl.SSLSocket):
        sock.do_handshake()
        sock.sendall(HELLO)
    return read_one(sock)


@pytest.mark.parametrize("loop", LOOPS)
def test_max_connections_holds_the_rest_in_the_backlog(
    transport: Transport, site: Site, loop: str
) -> None:
    with start_server(
        root=site.root, loop=loop, max_connections=2, **transport.options()
    ) as server:
        first, second = (connect(server.port, transport=transport) for _ in range(2))
        # TCP only: a TLS client's handshake would wait for an accept that does not come.
        third = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        try:
            for sock in (first, second):
                response = ask(sock)
                assert response is not None and response.status == 200
            third = first_bytes(transport, third)
            # The server answers a connection it holds after the third one queued, so
            # it is running, yet it has not accepted the third: that one waits in the
            # backlog, neither served nor refused.
            response = ask(second)
            assert response is not None and response.status == 200
            assert server_side_connections(server.port) == 2, "the cap let a third in"
            readable, _, _ = select.select([third], [], [], 0)
            assert not readable, "the third connection was answered or refused"
            first.close()  # a slot frees up: the third is accepted and served
            response = answer_after_accept(third)
            assert response is not None and response.body == b"hello\n"
        finally:
            for sock in (first, second, third):
                sock.close()


async def test_many_keepalive_requests_on_one_server(site: Site) -> None:
    """A sanity check of the async client the soak tests use, against a live server."""
    # Plain only: read_response_async reads a raw socket (loop.sock_recv), as the soak does.
    with start_server(root=site.root) as server:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        with sock:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            for _ in range(20):
                await loop.sock_sendall(sock, HELLO)
                assert await read_response_async(sock) == (200, b"hello\n")
