"""Heavy load (`make soak`): the full abort storm for every strategy and loop, and
10,000 connections held open at once against one server process."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.support.httpclient import connect, get, read_response_async
from tests.support.servers import start_child
from tests.support.site import LOOPS, SIZES, Site
from tests.support.stress import MiB, raise_own_nofile, run_abort_storm
from tests.support.timing import wait_for
from zcserve.server.strategies import STRATEGY_NAMES

pytestmark = pytest.mark.soak

CONNECTIONS = 10_000
RSS_BOUND = 300 * MiB
"""Server RSS allowed with 10,000 connections open: about 30 MiB of interpreter,
an 8 KiB receive buffer and a few KiB of task and parser per connection make
about 175 MiB; 64 KiB buffers would make 700."""
SOURCES = [f"127.0.0.{n}" for n in range(1, 9)]
"""Client addresses, so no single source address needs 10,000 ephemeral ports."""
HELLO = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_abort_storm_full(site: Site, tmp_path: Path, strategy: str, loop: str) -> None:
    """1,000 downloads of a 24 MiB file cut at random points, 32 at a time, half by
    reset: descriptors back to the start, RSS within 30 MiB, nothing logged."""
    big = ("/big.bin", SIZES["big.bin"], site.hashes["big.bin"])
    growth = run_abort_storm(tmp_path, site.root, big, strategy, loop, count=1000)
    print(f"abort storm {strategy}/{loop}: fds back to the start, RSS {growth / MiB:+.1f} MiB")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loop", LOOPS)
async def test_ten_thousand_connections_at_once(site: Site, tmp_path: Path, loop: str) -> None:
    wanted = CONNECTIONS + 1000
    old_limits = raise_own_nofile(wanted)
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit is below {wanted}")
    aio = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    gate = asyncio.Semaphore(256)  # in flight at once; stays below the listen backlog

    async def open_and_ask(index: int) -> None:
        async with gate:
            sock = connect(child.port, source=SOURCES[index % len(SOURCES)], blocking=False)
            socks.append(sock)
            await aio.sock_sendall(sock, HELLO)
            assert await read_response_async(sock) == (200, b"hello\n")

    async def ask_again(sock: socket.socket) -> None:
        async with gate:
            await aio.sock_sendall(sock, HELLO)
            assert await read_response_async(sock) == (200, b"hello\n")

    try:
        with start_child(site.root, "--loop", loop, log_dir=tmp_path) as child:
            # Warm up without caching a file: the open-file cache closes idle
            # descriptors after 2 s, so the count comes back to exactly this.
            assert get(child.port, "/no-such-file").status == 404
            base = child.idle_fds()
            await asyncio.gather(*(open_and_ask(n) for n in range(CONNECTIONS)))
            # Every connection is open and was answered: the server holds them all.
            assert child.fds() >= base + CONNECTIONS
            await asyncio.gather(*(ask_again(sock) for sock in socks))
            rss = child.rss()
            held = child.fds() - base
            for sock in socks:
                sock.close()
            socks.clear()
            wait_for(lambda: child.fds() == base, 60.0, "descriptors back to the start", every=0.2)
            assert get(child.port, "/hello.txt").body == b"hello\n"
            assert child.stop() == 0
        print(f"{CONNECTIONS} connections ({loop}): {held} fds, RSS {rss / MiB:.0f} MiB")
        assert held >= CONNECTIONS
        assert rss <= RSS_BOUND, f"RSS {rss / MiB:.0f} MiB with {CONNECTIONS} connections"
        assert child.log() == ""
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, old_limits)


READALL_BUDGET = 1024 * MiB
READALL_BODY = 256 * MiB
READALL_MARGIN = 300 * MiB
"""The interpreter, the answers' buffers in flight and the allocator's slack."""


@pytest.mark.timeout(300)
def test_readall_holds_no_more_than_its_budget(tmp_path: Path) -> None:
    """20 clients each ask for 256 MiB and read nothing for a while: the server's RSS
    stays within its 1 GiB --readall-budget plus a margin, and every request is
    answered whole or with 503 (nothing cut short)."""
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "big.bin", "wb") as out:
        out.truncate(READALL_BODY)
    request = b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    budget = f"{READALL_BUDGET // MiB}M"
    with start_child(
        str(root), "--strategy", "readall", "--readall-budget", budget, log_dir=tmp_path
    ) as child:
        base = child.rss()
        clients = [
            socket.create_connection(("127.0.0.1", child.port), timeout=60) for _ in range(20)
        ]
        try:
            for sock in clients:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.sendall(request)
            peak = base
            for _ in range(40):  # 4 s without reading, the peak sampled
                peak = max(peak, child.rss())
                time.sleep(0.1)
            statuses = []
            for sock in clients:
                head, body = _read_whole(sock)
                status = int(head.split(b" ", 2)[1])
                statuses.append(status)
                if status == 200:
                    assert len(body) == READALL_BODY, f"cut at {len(body)} bytes"
                else:
                    assert status == 503 and b"Retry-After: 1" in head, head
        finally:
            for sock in clients:
                sock.close()
        assert child.stop() == 0
    assert statuses.count(200) >= READALL_BUDGET // READALL_BODY - 1, statuses
    assert statuses.count(503) >= 1, statuses
    growth = peak - base
    assert growth <= READALL_BUDGET + READALL_MARGIN, f"RSS grew by {growth / MiB:.0f} MiB"


def _read_whole(sock: socket.socket) -> tuple[bytes, bytes]:
    """A Connection: close response, read to its end: (head, body)."""
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head, body
