"""Shared fixtures: a generated site with a secret outside it, and live servers:
`live` over every copy strategy and both event loops (for tests that move body
bytes), `default_live` with the default strategy on each loop (for path and
HTTP semantics, which do not depend on how bytes are copied)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.servers import ServerThread, start_server
from zcserve.demo import write_file
from zcserve.server.strategies import STRATEGY_NAMES

LOOPS = ("uvloop", "asyncio")
DEFAULT_STRATEGY = "auto"
SECRET = b"TOP-SECRET-OUTSIDE-ROOT\n"
SPARSE_SIZE = 5 * 1024**3 + 12345  # past 4 GiB: offsets need 64 bits
SPARSE_TAIL = b"the end of a sparse file past 4 GiB\n"

SIZES = {"empty.bin": 0, "one.bin": 1, "64k1.bin": 64 * 1024 + 1, "big.bin": 24 * 1024 * 1024}


@dataclass(frozen=True)
class Site:
    """A served root, where its files are, and their hashes."""

    root: str
    outside: str
    hashes: dict[str, str]

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def read(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("site")
    root = base / "root"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "index.html").write_bytes(SECRET)
    hashes = {}
    for seed, (name, size) in enumerate(SIZES.items()):
        write_file(str(root / name), size, seed=seed)
        hashes[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    (root / "hello.txt").write_text("hello\n")
    (root / "page.html").write_text("<p>page</p>\n")
    (root / "with index").mkdir()
    (root / "with index" / "index.html").write_text("<p>index</p>\n")
    (root / "plain").mkdir()
    (root / "plain" / "a&b<c>.txt").write_text("escaped\n")
    (root / "plain" / "sub").mkdir()
    with open(root / "sparse.bin", "wb") as sparse:
        sparse.truncate(SPARSE_SIZE)
        sparse.seek(SPARSE_SIZE - len(SPARSE_TAIL))
        sparse.write(SPARSE_TAIL)
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(outside, root / "dir-out")
    os.symlink(root / "hello.txt", root / "link-in.txt")
    os.symlink("../outside/secret.txt", root / "rel-out.txt")
    os.mkfifo(root / "fifo")
    return Site(str(root), str(outside), hashes)


@dataclass(frozen=True)
class Live:
    """A running server and what it was started with."""

    port: int
    strategy: str
    loop: str
    thread: ServerThread


@pytest.fixture(
    scope="session",
    params=[(s, loop) for s in STRATEGY_NAMES for loop in LOOPS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def live(request: pytest.FixtureRequest, site: Site) -> Iterator[Live]:
    strategy, loop = request.param
    thread = start_server(root=site.root, strategy=strategy, loop=loop)
    yield Live(thread.port, strategy, loop, thread)
    thread.stop()


@pytest.fixture(scope="session", params=LOOPS, ids=lambda loop: f"default-{loop}")
def default_live(request: pytest.FixtureRequest, site: Site) -> Iterator[Live]:
    loop: str = request.param
    thread = start_server(root=site.root, strategy=DEFAULT_STRATEGY, loop=loop)
    yield Live(thread.port, DEFAULT_STRATEGY, loop, thread)
    thread.stop()


@dataclass(frozen=True)
class Pem:
    """A self-signed certificate (CN=localhost, IP 127.0.0.1) and its key, as paths."""

    cert: str
    key: str


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    folder = tmp_path_factory.mktemp("pem")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return Pem(cert, key)


@dataclass(frozen=True)
class Transport:
    """Plain TCP or TLS, as a connection test sees it: the server options that select
    it, and a client socket over it. Every connection test runs over both, as
    uvicorn runs its protocol tests over both of its HTTP implementations."""

    name: str
    pem: Pem | None

    @property
    def strategies(self) -> tuple[str, ...]:
        """What can carry this transport's bodies: no zero-copy path under TLS."""
        if self.pem is not None:
            return ("auto", "fallback", "readwrite", "memory")
        return ("auto", "sendfile", "fallback", "readwrite", "mmap", "splice", "memory")

    def options(self) -> dict[str, Any]:
        if self.pem is None:
            return {}
        return {"tls_cert": self.pem.cert, "tls_key": self.pem.key}

    def connect(self, port: int, timeout: float = 20.0, *, rcvbuf: int = 0) -> socket.socket:
        """A connected client socket, TLS handshake done; `rcvbuf` shrinks its
        receive buffer first, so a server's response waits in flight."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if self.pem is None:
            return sock
        context = ssl.create_default_context(cafile=self.pem.cert)
        return context.wrap_socket(sock, server_hostname="localhost")


@pytest.fixture(scope="module", params=["plain", "tls"])
def transport(request: pytest.FixtureRequest, pem: Pem) -> Transport:
    return Transport(request.param, pem if request.param == "tls" else None)
