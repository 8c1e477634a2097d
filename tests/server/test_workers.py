"""`zcserve serve --workers N`: SO_REUSEPORT workers under a supervisor."""

from __future__ import annotations

import hashlib
import signal
import socket
import time

import psutil

from tests.support.httpclient import connect, get, read_response
from tests.support.servers import start_child
from tests.support.site import Site
from tests.support.timing import PROCESS_DEADLINE, wait_for


def worker_of(children: list[psutil.Process], client: socket.socket) -> int:
    """The PID of the worker holding the server side of `client`'s connection."""
    local_port = client.getsockname()[1]

    def holder() -> int | None:
        for child in children:
            for conn in child.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == local_port:
                    return child.pid
        return None  # accept() may not have run yet

    pid = wait_for(
        holder, PROCESS_DEADLINE, f"a worker holds the connection from port {local_port}"
    )
    assert pid is not None  # wait_for returns only something truthy
    return pid


def test_two_workers_share_the_load(site: Site) -> None:
    with start_child(site.root, "--workers", "2") as child:
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
    """Requests go on while a worker is killed and replaced. The one failure allowed
    is a request caught in the dying worker's accept queue (the kernel resets those
    when its listener closes); requests are sequential, so there is at most one, and
    none may fail once the worker is gone."""
    with start_child(site.root, "--workers", "2") as child:
        supervisor = psutil.Process(child.proc.pid)
        victim, survivor = supervisor.children()
        victim.kill()
        failed_while_dying: list[Exception] = []
        deadline = time.monotonic() + PROCESS_DEADLINE
        while victim.is_running():  # True until the supervisor reaps it: all closed then
            assert time.monotonic() < deadline, "the killed worker was never reaped"
            try:
                assert get(child.port, "/hello.txt").body == b"hello\n"
            except (OSError, AssertionError) as exc:
                failed_while_dying.append(exc)
        assert len(failed_while_dying) <= 1, failed_while_dying
        for _ in range(20):  # the survivor serves alone, or with the replacement
            assert get(child.port, "/hello.txt").body == b"hello\n"

        def replaced() -> set[int] | None:
            pids = {p.pid for p in supervisor.children()}
            return pids if len(pids) == 2 and victim.pid not in pids else None

        pids = wait_for(replaced, PROCESS_DEADLINE, "a new worker in place of the killed one")
        assert pids is not None and survivor.pid in pids
        for _ in range(20):
            assert get(child.port, "/hello.txt").body == b"hello\n"
    assert child.proc.returncode == 0


def test_sigterm_drains_every_worker(site: Site) -> None:
    with start_child(site.root, "--workers", "2", "--strategy", "sendfile") as child:
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
