"""`zcserve serve --workers N`: SO_REUSEPORT workers under a supervisor."""

from __future__ import annotations

import hashlib
import signal
import socket
import time

import psutil

from tests.conftest import Site
from tests.httpclient import connect, get, read_response
from tests.procs import serving


def worker_of(children: list[psutil.Process], client: socket.socket) -> int:
    """The PID of the worker holding the server side of `client`'s connection."""
    local_port = client.getsockname()[1]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # accept() may not have run yet
        for child in children:
            for conn in child.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == local_port:
                    return child.pid
        time.sleep(0.01)
    raise AssertionError(f"no worker holds the connection from port {local_port}")


def test_two_workers_share_the_load(site: Site) -> None:
    with serving(site.root, "--workers", "2") as child:
        assert child.announce.rstrip().endswith("workers=2)")
        workers = psutil.Process(child.proc.pid).children()
        assert len(workers) == 2
        clients = [connect(child.port) for _ in range(24)]
        try:
            owners = set()
            for client in clients:
                client.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                with client.makefile("rb") as reader:
                    response = read_response(reader)
                assert response is not None and response.body == b"hello\n"
                owners.add(worker_of(workers, client))
        finally:
            for client in clients:
                client.close()
        assert owners == {w.pid for w in workers}, "SO_REUSEPORT did not spread connections"
    assert child.proc.returncode == 0


def test_killed_worker_is_replaced(site: Site) -> None:
    with serving(site.root, "--workers", "2") as child:
        supervisor = psutil.Process(child.proc.pid)
        victim, survivor = supervisor.children()
        victim.kill()
        failures = 0
        for _ in range(40):
            try:
                assert get(child.port, "/hello.txt").body == b"hello\n"
            except (OSError, AssertionError):
                failures += 1
        assert failures <= 2, f"{failures} of 40 requests failed after a worker died"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = {p.pid for p in supervisor.children()}
            if len(pids) == 2 and victim.pid not in pids:
                break
            time.sleep(0.05)
        assert survivor.pid in pids and victim.pid not in pids and len(pids) == 2
    assert child.proc.returncode == 0


def test_sigterm_drains_every_worker(site: Site) -> None:
    with serving(site.root, "--workers", "2", "--strategy", "sendfile") as child:
        workers = psutil.Process(child.proc.pid).children()
        clients: dict[int, socket.socket] = {}
        spare = []
        while len(clients) < 2:  # one download in flight on each worker
            client = connect(child.port)
            owner = worker_of(workers, client)
            if owner in clients:
                spare.append(client)
                continue
            clients[owner] = client
        for client in spare:
            client.close()
        for client in clients.values():
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            client.recv(1)  # the response has started
        child.proc.send_signal(signal.SIGTERM)
        for client in clients.values():
            with client.makefile("rb") as reader:
                rest = reader.read()
            client.close()
            _, _, body = rest.partition(b"\r\n\r\n")
            assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]
        assert child.proc.wait(20) == 0
