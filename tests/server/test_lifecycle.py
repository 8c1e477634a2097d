"""A server process's life: graceful shutdown on SIGTERM/SIGINT, surviving the end
of its descriptors, and what it writes to the access log."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.httpclient import connect, get, read_response, recv_until_closed, status_codes
from tests.support.servers import start_child, start_server
from tests.support.site import LOOPS, SIZES, Site
from tests.support.stress import abort_stream
from tests.support.timing import DEADLINE, EARLY, MARGIN, TICK, wait_for
from tests.support.tls import Transport

pytestmark = pytest.mark.timeout(120)

BIG = b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def small_window_socket(transport: Transport, port: int) -> socket.socket:
    return connect(port, transport=transport, timeout=DEADLINE, rcvbuf=64 * 1024)


# Graceful shutdown ------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_shutdown_lets_a_download_in_flight_finish(
    transport: Transport, site: Site, tmp_path: Path, signum: int, loop: str
) -> None:
    with start_child(site.root, "--loop", loop, *transport.flags(), log_dir=tmp_path) as child:
        idle = connect(child.port, transport=transport)
        idle.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        with idle.makefile("rb") as reader:  # the whole response: under TLS, two records
            response = read_response(reader)
        assert response is not None and response.status == 200
        download = small_window_socket(transport, child.port)
        download.sendall(BIG)
        received = download.recv(1024 * 1024)
        while len(received) < 1024 * 1024:  # well inside the 24 MiB: still in flight
            received += download.recv(1024 * 1024)
        child.proc.send_signal(signum)
        # "At once": while the download is still held up by this client, which has
        # stopped reading; the keep-alive timeout (75 s) is far off.
        with idle:
            rest, closed = recv_until_closed(idle, DEADLINE)
            assert closed and rest == b"", "an idle keep-alive connection must close at once"
        wait_for(lambda: refused(child.port), DEADLINE, "new connections refused")
        assert child.proc.poll() is None, "the server left before the download finished"
        with download:
            rest, closed = recv_until_closed(download, 2 * DEADLINE)
        assert closed
        body = (received + rest).partition(b"\r\n\r\n")[2]
        assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]
        assert child.proc.wait(DEADLINE) == 0
    assert "Traceback" not in child.log()


@pytest.mark.parametrize("loop", LOOPS)
def test_grace_ends_a_stalled_download_and_exits_0(
    transport: Transport, site: Site, tmp_path: Path, loop: str
) -> None:
    """The grace period is a time limit like the others: the stalled download is
    given all of it (not cut at the signal), and no more than it plus slack."""
    grace = 0.3
    args = ("--loop", loop, "--grace", str(grace), *transport.flags())
    with start_child(site.root, *args, log_dir=tmp_path) as child:
        with small_window_socket(transport, child.port) as stalled:
            stalled.sendall(BIG)
            assert stalled.recv(16).startswith(b"HTTP/1.1 200")  # then reads nothing
            signalled = time.monotonic()
            child.proc.send_signal(signal.SIGTERM)
            assert child.proc.wait(grace + TICK + MARGIN + DEADLINE) == 0
            took = time.monotonic() - signalled
            received, closed = recv_until_closed(stalled, DEADLINE)
        assert took >= grace - EARLY, f"exit took {took:.2f}s with a {grace:g}s grace"
        assert took <= grace + TICK + MARGIN, f"exit took {took:.2f}s with a {grace:g}s grace"
        assert closed and len(received) < SIZES["big.bin"]
    assert "Traceback" not in child.log()


# Out of descriptors ------------------------------------------------------------------------


CLOSE_HELLO = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


async def _tls_requests(transport: Transport, clients: list[socket.socket]) -> list[list[int]]:
    """CLOSE_HELLO over TLS on every one of `clients`, all at once: a handshake waits
    for its accept, which comes as earlier connections close. The statuses each
    got; fails if one was neither answered nor closed within DEADLINE."""
    context = transport.client_context()

    async def one(sock: socket.socket) -> list[int]:
        received = b""
        try:
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=context, server_hostname="localhost"
                )
                try:
                    writer.write(CLOSE_HELLO)
                    while chunk := await reader.read(65536):
                        received += chunk
                except ConnectionError:  # closed by a reset: closed all the same
                    pass
                finally:
                    await abort_stream(writer)
        except TimeoutError:
            raise AssertionError("a connection neither answered nor closed") from None
        return status_codes(received)

    return await asyncio.gather(*(one(sock) for sock in clients))


@pytest.mark.parametrize("loop", LOOPS)
def test_out_of_descriptors_backs_off_logs_once_and_recovers(
    transport: Transport, site: Site, tmp_path: Path, loop: str
) -> None:
    nofile = 64
    args = ("--loop", loop, *transport.flags())
    with start_child(site.root, *args, nofile=nofile, log_dir=tmp_path) as child:
        # TCP only: a TLS handshake would wait for an accept that does not come yet.
        clients = [connect(child.port) for _ in range(2 * nofile)]
        try:
            wait_for(lambda: "backing off" in child.log(), DEADLINE, "EMFILE warning")
            assert child.proc.poll() is None
            statuses = []
            if transport.certificate is None:
                for sock in clients:  # a request on every connection, accepted or not
                    sock.sendall(CLOSE_HELLO)
                for sock in clients:
                    received, closed = recv_until_closed(sock, DEADLINE)
                    assert closed, "a connection neither answered nor closed"
                    statuses += status_codes(received) or [0]
            else:  # the requests need handshakes first, which need accepts: all at once
                for got in asyncio.run(_tls_requests(transport, clients)):
                    statuses += got or [0]
        finally:
            for sock in clients:
                sock.close()
        # The accepted connections had no descriptor left to open the file with.
        assert 503 in statuses, statuses
        assert set(statuses) <= {200, 503, 0}, statuses
        assert statuses.count(200) > nofile, "once descriptors freed up, requests were served"
        for _ in range(3):
            assert get(child.port, "/hello.txt", transport=transport).body == b"hello\n"
        assert child.stop() == 0
    log = child.log()
    assert log.count("backing off") == 1, log
    assert "Traceback" not in log


# Access log --------------------------------------------------------------------------------

CLF = re.compile(
    r"^(?P<host>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-)$'
)


def test_access_log_writes_one_clf_line_per_response(
    transport: Transport, site: Site, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    with start_server(root=site.root, access_log=str(path), **transport.options()) as server:
        port = server.port
        assert get(port, "/hello.txt", transport=transport).status == 200
        assert get(port, "/missing.txt", transport=transport).status == 404
        assert get(port, "/hello.txt", method="HEAD", transport=transport).status == 200
        assert get(port, "/64k1.bin", {"Range": "bytes=10-19"}, transport=transport).status == 206
        with connect(port, transport=transport) as sock:
            sock.sendall(b"GET /one.bin HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\r\n\r\n")
            received, closed = recv_until_closed(sock, DEADLINE)
        assert status_codes(received) == [200, 400] and closed
    lines = path.read_text().splitlines()
    parsed = [CLF.match(line) for line in lines]
    assert all(parsed), lines
    got = [(m["host"], m["request"], m["status"], m["bytes"]) for m in parsed if m]
    assert got == [
        ("127.0.0.1", "GET /hello.txt HTTP/1.1", "200", "6"),
        ("127.0.0.1", "GET /missing.txt HTTP/1.1", "404", str(len(b"404 Not Found\n"))),
        ("127.0.0.1", "HEAD /hello.txt HTTP/1.1", "200", "-"),
        ("127.0.0.1", "GET /64k1.bin HTTP/1.1", "206", "10"),
        ("127.0.0.1", "GET /one.bin HTTP/1.1", "200", "1"),
        ("127.0.0.1", "-", "400", str(len(b"400 Bad Request\n"))),
    ]


def test_access_log_is_off_by_default_and_dash_is_stdout(
    transport: Transport, site: Site, tmp_path: Path
) -> None:
    flags = transport.flags()
    with start_child(site.root, *flags, log_dir=tmp_path) as quiet:
        assert get(quiet.port, "/hello.txt", transport=transport).body == b"hello\n"
        assert quiet.stop() == 0
    assert quiet.stdout == "" and quiet.log() == "", "nothing is logged by default"
    with start_child(site.root, "--access-log", "-", *flags, log_dir=tmp_path) as loud:
        assert get(loud.port, "/hello.txt", transport=transport).body == b"hello\n"
        assert loud.stop() == 0
    lines = loud.stdout.splitlines()
    assert len(lines) == 1 and CLF.match(lines[0]), lines
    assert lines[0].endswith('"GET /hello.txt HTTP/1.1" 200 6')
