"""Answers made in one pass of the event loop are sent together at its end
(`server/outbox.py`): every one of them whole and in order, over plain TCP and
TLS, and what a held answer took goes back if its connection closes first."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.httpclient import connect, read_response
from tests.support.servers import Child, start_child, start_server
from tests.support.site import LOOPS
from tests.support.timing import DEADLINE
from tests.support.tls import Transport
from zcserve.server.config import ServerConfig
from zcserve.server.connection import HttpConnection
from zcserve.server.outbox import Outbox
from zcserve.server.server import Server
from zcserve.server.sockio import SocketStream
from zcserve.server.tls import TlsStream, server_context

CLIENTS = 16
BODY = bytes(range(256)) * 16
REQUEST = b"GET /page.bin HTTP/1.1\r\nHost: t\r\n\r\n"


class CountingOutbox(Outbox):
    """An outbox that records how many answers each end of a pass sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def flush(self) -> None:
        self.sizes.append(len(self._held))
        super().flush()


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer to REQUEST: its head and BODY."""
    data = b""
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0 and len(data) >= head_end + 4 + len(BODY):
            assert len(data) == head_end + 4 + len(BODY), "more than one answer"
            return data
        chunk = sock.recv(65536)
        assert chunk, "closed before the answer was whole"
        data += chunk


@pytest.mark.parametrize("loop", LOOPS)
def test_the_answers_of_one_pass_go_out_together_at_its_end(
    tmp_path: Path, transport: Transport, loop: str
) -> None:
    (tmp_path / "page.bin").write_bytes(BODY)
    server = start_server(root=str(tmp_path), loop=loop, **transport.options())
    outbox = server.server.outbox = CountingOutbox()
    clients = [connect(server.port, transport=transport) for _ in range(CLIENTS)]
    try:
        for sock in clients:  # handshakes done; the third answer is kept for repeats
            for _ in range(3):
                sock.sendall(REQUEST)
                assert read_answer(sock).endswith(BODY)
        # Every request arrives while the loop sleeps: it reads them all in one pass.
        asleep = threading.Event()
        loop_of = server._loop
        assert loop_of is not None

        def sleep() -> None:
            asleep.set()
            time.sleep(0.5)

        loop_of.call_soon_threadsafe(sleep)
        assert asleep.wait(DEADLINE)
        for sock in clients:
            sock.sendall(REQUEST)
        answers = [read_answer(sock) for sock in clients]
    finally:
        for sock in clients:
            sock.close()
        server.stop()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    assert all(answer.endswith(BODY) for answer in answers)
    assert CLIENTS in outbox.sizes, outbox.sizes


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_answers_behind_a_held_one_go_in_the_same_end_of_pass(
    tmp_path: Path, transport: Transport, loop: str
) -> None:
    (tmp_path / "page.bin").write_bytes(BODY)
    server = start_server(root=str(tmp_path), loop=loop, **transport.options())
    outbox = server.server.outbox = CountingOutbox()
    try:
        with connect(server.port, transport=transport) as sock:
            sock.sendall(REQUEST * 5)
            data = b""
            deadline = time.monotonic() + DEADLINE
            while data.count(BODY) < 5 and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                assert chunk, "closed before five answers"
                data += chunk
    finally:
        server.stop()
    assert data.count(b"HTTP/1.1 200 ") == 5 and data.count(BODY) == 5
    # One held answer: the four behind it went while it was sent, not a pass each.
    assert outbox.sizes.count(1) <= 2 and len(outbox.sizes) <= 2, outbox.sizes


def _server_stream(
    transport: Transport, loop: asyncio.AbstractEventLoop
) -> tuple[socket.socket, SocketStream]:
    """A connected client socket and the server's stream for the other end; under
    TLS the handshake is done (the client's in a thread, the server's stepped)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
    certificate = transport.certificate
    if certificate is None:
        return client, SocketStream(server_side, loop, send_timeout=5.0)
    context = certificate.client_context()
    tls_client = context.wrap_socket(
        client, server_hostname="localhost", do_handshake_on_connect=False
    )
    shaking = threading.Thread(target=tls_client.do_handshake)
    shaking.start()
    stream = TlsStream(
        server_side, loop, server_context(certificate.cert, certificate.key), send_timeout=5.0
    )
    deadline = time.monotonic() + DEADLINE
    while not stream.handshake_step():
        assert time.monotonic() < deadline, "no handshake"
        time.sleep(0.001)
    shaking.join(DEADLINE)
    return tls_client, stream


async def _hold_then_close(transport: Transport, root: Path, first: bool) -> int:
    """Have a connection hold its answer to REQUEST (the first one, or a repeat after
    three), close it before the pass ends and give its descriptor number to another
    socket; then end the pass. Returns how many lends of the file are still out.
    The test steps the connection itself, as the loop would: read, end of pass."""
    loop = asyncio.get_running_loop()
    server = Server(ServerConfig(root=str(root), port=0))
    client, stream = _server_stream(transport, loop)
    client.settimeout(DEADLINE)
    connection = HttpConnection(
        server, stream, lambda _: None, "127.0.0.1", deadline=loop.time() + 60
    )
    other, other_peer = socket.socketpair()
    try:
        for _ in range(0 if first else 3):  # the third answer is kept for repeats
            client.sendall(REQUEST)
            time.sleep(0.05)  # the loop must not run: this test is the loop
            connection._on_readable()
            server.outbox.flush()
            assert read_answer(client).endswith(BODY)
        client.sendall(REQUEST)
        time.sleep(0.05)
        connection._on_readable()  # the answer is made and held
        entry = server.files.entry(b"/page.bin")
        assert entry is not None
        assert entry.users == 1  # lent to the held answer, planned or a repeat
        number = stream.fd
        connection.close()
        os.dup2(other.fileno(), number)  # the number now names another connection
        try:
            server.outbox.flush()  # the end of the pass finds the connection closed
        finally:
            os.close(number)
        other_peer.settimeout(0.3)
        with pytest.raises(TimeoutError):
            got = other_peer.recv(65536)
            raise AssertionError(f"the held answer went to another socket: {got[:40]!r}")
        return entry.users
    finally:
        client.close()
        other.close()
        other_peer.close()


@pytest.mark.parametrize("first", [True, False], ids=["first-answer", "repeat"])
def test_a_connection_closed_with_its_answer_held_gives_the_file_back(
    tmp_path: Path, transport: Transport, first: bool
) -> None:
    (tmp_path / "page.bin").write_bytes(BODY)
    assert asyncio.run(_hold_then_close(transport, tmp_path, first)) == 0


class Holder:
    """A connection as the outbox sees it, whose send may fail."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sent: list[str], name: str) -> None:
        self.loop = loop
        self.sent = sent
        self.name = name
        self.closed = False

    def send_held(self) -> None:
        if self.name == "broken":
            raise RuntimeError("a bug in sending")
        self.sent.append(self.name)

    def close(self) -> None:
        self.closed = True


def test_a_held_answer_that_fails_costs_only_its_own_connection() -> None:
    async def run() -> tuple[list[str], list[bool]]:
        loop = asyncio.get_running_loop()
        sent: list[str] = []
        holders = [Holder(loop, sent, name) for name in ("a", "broken", "b")]
        outbox = Outbox()
        for holder in holders:
            outbox.hold(holder)
        assert sent == []  # nothing before the pass ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return sent, [holder.closed for holder in holders]

    sent, closed = asyncio.run(run())
    assert sent == ["a", "b"]
    assert closed == [False, True, False]


def _burst_in_one_pass(
    child: Child, transport: Transport, target: str, clients: int
) -> tuple[list[int], int, int]:
    """`clients` keep-alive connections each ask for `target` once, then all ask again
    while the server is stopped (SIGSTOP, by its PID), so that one loop pass reads
    every request. Returns the second answers' statuses, and the server's
    descriptors and peak memory (VmHWM, bytes) before that burst."""
    request = f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    socks = [connect(child.port, transport=transport) for _ in range(clients)]
    try:
        for sock in socks:
            sock.sendall(request)
            read_response(sock.makefile("rb"))
        fds, peak = child.fds(), _peak_memory(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        try:
            for sock in socks:
                sock.sendall(request)
            time.sleep(0.3)
        finally:
            os.kill(child.pid, signal.SIGCONT)
        statuses = []
        for sock in socks:
            response = read_response(sock.makefile("rb"))
            statuses.append(0 if response is None else response.status)
    finally:
        for sock in socks:
            sock.close()
    return statuses, fds, peak


def _peak_memory(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("loop", LOOPS)
def test_the_answers_of_one_pass_share_what_their_bodies_need(
    tmp_path: Path, transport: Transport, loop: str
) -> None:
    """What a body needs (a pipe under splice; a copy buffer under fallback, which
    carries TLS) is taken when the held answer is sent, one answer at a time, so a
    pass of 100 answers shares one as the answers before it did."""
    (tmp_path / "small.bin").write_bytes(BODY)
    (tmp_path / "big.bin").write_bytes(os.urandom(64 * 1024))
    clients = 100
    if transport.certificate is None:  # pipes: 2 descriptors per answer held at once
        args, target, nofile = ("--strategy", "splice"), "/small.bin", clients + 40
    else:  # buffers: 256 KiB per answer held at once
        args, target, nofile = ("--strategy", "fallback"), "/big.bin", 4096
    with start_child(
        str(tmp_path), "--loop", loop, *args, *transport.flags(), nofile=nofile
    ) as child:
        statuses, fds, peak = _burst_in_one_pass(child, transport, target, clients)
        assert statuses == [200] * clients, {s: statuses.count(s) for s in set(statuses)}
        assert child.fds() <= fds + 4, "the burst kept a descriptor per answer"
        grown = _peak_memory(child.pid) - peak
        assert grown < 8 * 1024 * 1024, f"the burst's peak memory grew {grown >> 20} MiB"


async def _repeat_shrunk_while_held(root: Path) -> tuple[bytes, bytes]:
    """Under mmap, hold a repeat, empty its file before the pass ends (the mapping
    then cannot be made), end the pass, then ask again. The two answers."""
    loop = asyncio.get_running_loop()
    server = Server(ServerConfig(root=str(root), port=0, strategy="mmap"))
    client, stream = _server_stream(Transport("plain", None), loop)
    client.settimeout(DEADLINE)
    connection = HttpConnection(
        server, stream, lambda _: None, "127.0.0.1", deadline=loop.time() + 60
    )

    def answer() -> bytes:
        client.sendall(REQUEST)
        time.sleep(0.05)  # the loop must not run: this test is the loop
        connection._on_readable()
        server.outbox.flush()
        time.sleep(0.05)
        return client.recv(65536)

    try:
        for _ in range(3):  # the third answer is kept for repeats
            client.sendall(REQUEST)
            time.sleep(0.05)
            connection._on_readable()
            server.outbox.flush()
            assert read_answer(client).endswith(BODY)
        client.sendall(REQUEST)
        time.sleep(0.05)
        connection._on_readable()  # held, its file lent
        (root / "page.bin").write_bytes(b"")
        server.outbox.flush()
        time.sleep(0.05)
        shrunk = client.recv(65536)
        return shrunk, answer()
    finally:
        client.close()
        connection.close()


def test_a_held_repeat_whose_strategy_fails_is_answered_the_common_way(tmp_path: Path) -> None:
    """Plain TCP only: mmap, whose mapping fails on an emptied file, carries no TLS."""
    (tmp_path / "page.bin").write_bytes(BODY)
    shrunk, after = asyncio.run(_repeat_shrunk_while_held(tmp_path))
    assert shrunk.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 0\r\n" in shrunk
    assert after.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 0\r\n" in after
