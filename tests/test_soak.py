"""Heavy load (`make soak`): the full abort storm for every strategy and loop, and
10,000 connections held open at once against one server process."""

from __future__ import annotations

import asyncio
import resource
import socket
from pathlib import Path

import pytest

from tests.conftest import LOOPS, SIZES, Site
from tests.httpclient import get
from tests.stress import (
    MiB,
    connect,
    raise_own_nofile,
    read_response_async,
    run_abort_storm,
    spawn,
    wait_for,
)
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
            sock = await connect(child.port, source=SOURCES[index % len(SOURCES)])
            socks.append(sock)
            await aio.sock_sendall(sock, HELLO)
            assert await read_response_async(sock) == (200, b"hello\n")

    async def ask_again(sock: socket.socket) -> None:
        async with gate:
            await aio.sock_sendall(sock, HELLO)
            assert await read_response_async(sock) == (200, b"hello\n")

    try:
        with spawn(tmp_path, site.root, "--loop", loop) as child:
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
