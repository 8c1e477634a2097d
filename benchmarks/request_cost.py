"""CPU µs per keep-alive request inside the connection core, without a load generator.

One TCP connection on loopback; for each request the client writes a GET, the
connection's readable callback runs once (timed with the thread's CPU clock, so a
busy machine stretches it less than a wall clock), and the client reads the answer.
The same is done for the floor server's callback (`floor_server.py`): the difference
is the Python zcserve runs per request. `--tls` runs the same connection over TLS
(the floor has no TLS twin). Run: `python benchmarks/request_cost.py [--tls]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor_server import FloorConnection  # noqa: E402

from zcserve.server.config import ServerConfig  # noqa: E402
from zcserve.server.connection import HttpConnection  # noqa: E402
from zcserve.server.server import Server  # noqa: E402
from zcserve.server.sockio import SocketStream  # noqa: E402
from zcserve.server.tls import TlsStream, server_context  # noqa: E402

CACHE_VALID = [0.0]
"""The server's --cache-valid, set by `main` (one element, so that it can be)."""
REQUEST = b"GET /body.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: request_cost\r\n\r\n"


def connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
    server_side.setblocking(False)
    server_side.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server_side


def cost_per_request(
    client: socket.socket, on_readable: Callable[[], None], size: int, n: int
) -> float:
    buffer = bytearray(size + 4096)
    spent = 0.0
    for _ in range(n):
        client.sendall(REQUEST)
        started = time.thread_time()
        on_readable()
        spent += time.thread_time() - started
        received = client.recv_into(buffer)
        head_end = buffer.find(b"\r\n\r\n", 0, received)
        while head_end < 0 or received < head_end + 4 + size:
            received += client.recv_into(memoryview(buffer)[received:])
            head_end = buffer.find(b"\r\n\r\n", 0, received)
    return 1e6 * spent / n


def zcserve_connection(
    root: str, strategy: str, loop: asyncio.AbstractEventLoop, *, tls: bool = False
) -> tuple[socket.socket, HttpConnection]:
    """A client socket and the zcserve connection serving it, not yet registered
    with the loop: the caller calls its readable callback itself. With `tls`, the
    handshake is done and the client socket is an SSL socket."""
    client, server_side = connected_pair()
    config = ServerConfig(root=root, strategy=strategy, cache_valid=CACHE_VALID[0])  # type: ignore[arg-type]
    server = Server(config)
    stream: SocketStream = SocketStream(server_side, loop, send_timeout=60.0)
    if tls:
        client, stream = _handshake(client, server_side, loop, root)
    deadline = loop.time() + 3600
    return client, HttpConnection(server, stream, lambda _: None, "127.0.0.1", deadline=deadline)


def _handshake(
    client: socket.socket, server_side: socket.socket, loop: asyncio.AbstractEventLoop, folder: str
) -> tuple[ssl.SSLSocket, TlsStream]:
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-keyout", key, "-out", cert, "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    tls_client = context.wrap_socket(client, do_handshake_on_connect=False)
    shaking = threading.Thread(target=tls_client.do_handshake)
    shaking.start()
    stream = TlsStream(server_side, loop, server_context(cert, key), send_timeout=60.0)
    while not stream.handshake_step():
        time.sleep(0.001)
    shaking.join()
    return tls_client, stream


def answering(connection: HttpConnection) -> Callable[[], None]:
    """The connection's readable callback, then the end of the loop pass, where the
    answer it made is sent (`Outbox`)."""
    on_readable, flush = connection._on_readable, connection.server.outbox.flush

    def answer() -> None:
        on_readable()
        flush()

    return answer


async def measure(root: str, strategy: str, size: int, n: int, tls: bool = False) -> None:
    loop = asyncio.get_running_loop()
    client, connection = zcserve_connection(root, strategy, loop, tls=tls)
    zcserve = cost_per_request(client, answering(connection), size, n)
    client.close()
    connection.close()
    if tls:
        print(f"zcserve {strategy} over TLS: {zcserve:.1f} µs CPU per request")
        return
    client, server_side = connected_pair()
    floor = FloorConnection(server_side, os.fsencode(root), loop)
    loop.remove_reader(floor.fd)
    floor_cost = cost_per_request(client, floor.on_readable, size, n)
    client.close()
    print(f"zcserve {strategy}: {zcserve:.1f} µs CPU per request; floor: {floor_cost:.1f} µs")


Measure = Callable[[str, str, int, int, bool], Coroutine[Any, Any, None]]
"""`measure(root, strategy, size, n, tls)`: `root` holds body.bin, of `size` bytes."""


def main(measure: Measure = measure, doc: str = __doc__ or "", requests: int = 30_000) -> None:
    """Read --strategy, --size and -n, write the body, run `measure` on uvloop."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--strategy",
        default=None,
        help="default: sendfile, or auto with --tls (the server's"
        " own choice there: sendfile would put plaintext on a TLS connection)",
    )
    parser.add_argument("--size", type=int, default=4096, help="body bytes")
    parser.add_argument("-n", type=int, default=requests, help="requests")
    parser.add_argument("--tls", action="store_true", help="the same connection over TLS")
    parser.add_argument(
        "--cache-valid", type=float, default=0.0, help="the server's --cache-valid seconds"
    )
    options = parser.parse_args()
    CACHE_VALID[0] = options.cache_valid
    with tempfile.TemporaryDirectory() as root:
        Path(root, "body.bin").write_bytes(os.urandom(options.size))
        strategy = options.strategy or ("auto" if options.tls else "sendfile")
        uvloop.run(measure(root, strategy, options.size, options.n, options.tls))


if __name__ == "__main__":
    main()
