"""HTTPS: TLS on the sockets zcserve owns, with the userspace strategies only."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.servers import ServerThread, start_server, zcserve_command
from tests.support.site import LOOPS, Site
from tests.support.tls import Certificate

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command makes the test certificate"
)


@pytest.fixture(
    scope="module",
    params=[(s, loop) for s in ("auto", "fallback", "readwrite", "readall") for loop in LOOPS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def tls_server(
    request: pytest.FixtureRequest, site: Site, certificate: Certificate
) -> Iterator[ServerThread]:
    strategy, loop = request.param
    server = start_server(
        root=site.root,
        strategy=strategy,
        loop=loop,
        **certificate.options(),
    )
    yield server
    server.stop()


def https_get(port: int, certificate: Certificate, raw: bytes) -> tuple[bytes, str | None]:
    context = certificate.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as plain:
        with context.wrap_socket(plain, server_hostname="localhost") as tls:
            tls.sendall(raw)
            chunks = []
            while data := tls.recv(1 << 20):
                chunks.append(data)
            return b"".join(chunks), tls.selected_alpn_protocol()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_downloads_byte_exact(
    tls_server: ServerThread, site: Site, certificate: Certificate
) -> None:
    url = f"https://localhost:{tls_server.port}"
    body = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", certificate.cert, "--resolve",
         f"localhost:{tls_server.port}:127.0.0.1", f"{url}/big.bin"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]
    ranged = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", certificate.cert, "-r", "100-199", "--resolve",
         f"localhost:{tls_server.port}:127.0.0.1", f"{url}/64k1.bin"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    assert ranged == site.read("64k1.bin")[100:200]


def test_keep_alive_pipelining_and_alpn(
    tls_server: ServerThread, site: Site, certificate: Certificate
) -> None:
    raw = (
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    data, alpn = https_get(tls_server.port, certificate, raw)
    assert alpn == "http/1.1"
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.endswith(site.read("64k1.bin"))


def test_tls_never_calls_sendfile(
    site: Site, certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = os.sendfile

    def spy(*args: int) -> int:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(os, "sendfile", spy)
    server = start_server(root=site.root, strategy="auto", **certificate.options())
    try:
        data, _ = https_get(
            server.port,
            certificate,
            b"GET /64k1.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    finally:
        server.stop()
    assert data.endswith(site.read("64k1.bin"))
    assert calls == [], "auto must pick the fallback under TLS"


def test_plain_http_on_a_tls_port_is_refused_in_clear(
    tls_server: ServerThread, certificate: Certificate
) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            reply = sock.recv(100)
        except ConnectionResetError:
            reply = b""
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    data, _ = https_get(
        tls_server.port,
        certificate,
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert data.endswith(b"hello\n"), "the server must keep serving"


@pytest.mark.parametrize("strategy", ["sendfile", "splice", "mmap"])
def test_zero_copy_strategies_are_refused_with_tls(
    certificate: Certificate, site: Site, strategy: str
) -> None:
    result = subprocess.run(
        zcserve_command("serve", site.root, "--port", "0", "--strategy", strategy,
                        *certificate.flags()),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--strategy {strategy} cannot carry TLS" in lines[0]


def test_tls_flags_must_come_together(certificate: Certificate, site: Site) -> None:
    result = subprocess.run(
        zcserve_command("serve", site.root, "--tls-cert", certificate.cert),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "needs both --tls-cert and --tls-key" in result.stderr
