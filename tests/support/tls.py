"""The tests' one certificate maker and the two transports a connection test runs
over: plain TCP and TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for CN=localhost, IP 127.0.0.1 and DNS localhost, and
    its key, as paths (what --tls-cert and --tls-key take)."""

    cert: str
    key: str

    def server_context(self) -> ssl.SSLContext:
        """A server's context with this certificate, offering HTTP/1.1 by ALPN."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client's context that trusts this certificate."""
        return ssl.create_default_context(cafile=self.cert)

    def options(self) -> dict[str, Any]:
        """`start_server` options that serve HTTPS with this certificate."""
        return {"tls_cert": self.cert, "tls_key": self.key}

    def flags(self) -> tuple[str, ...]:
        """`zcserve serve` flags that serve HTTPS with this certificate."""
        return ("--tls-cert", self.cert, "--tls-key", self.key)


def make_certificate(folder: Path, name: str = "localhost") -> Certificate:
    """A fresh self-signed certificate and key in `folder`, made by the openssl command;
    skips the test when there is no openssl (`.ci/run` installs it)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return Certificate(str(cert), str(key))


@dataclass(frozen=True)
class Transport:
    """Plain TCP or TLS, as a connection test sees it: the server options that select
    it, and what a client trusts over it. Every connection test runs over both, as
    uvicorn runs its protocol tests over both of its HTTP implementations; a client
    socket over it comes from `httpclient.connect(port, transport=...)`."""

    name: str
    certificate: Certificate | None

    @property
    def strategies(self) -> tuple[str, ...]:
        """What can carry this transport's bodies: no zero-copy path under TLS."""
        if self.certificate is not None:
            return ("auto", "fallback", "readwrite", "memory")
        return ("auto", "sendfile", "fallback", "readwrite", "mmap", "splice", "memory")

    def options(self) -> dict[str, Any]:
        """`start_server` options for this transport."""
        return {} if self.certificate is None else self.certificate.options()

    def flags(self) -> tuple[str, ...]:
        """`zcserve serve` flags for this transport."""
        return () if self.certificate is None else self.certificate.flags()

    def client_context(self) -> ssl.SSLContext | None:
        """What a client trusts over this transport: the certificate under TLS, None plain."""
        return None if self.certificate is None else self.certificate.client_context()


def skip_unless_carried(transport: Transport, strategy: str) -> None:
    """Skip a test of `strategy` over `transport` when the one cannot carry the other
    (no zero-copy strategy carries TLS). `transport.strategies` leaves readall out of
    both lists; it moves bytes through userspace as readwrite does, and the server
    accepts it with TLS, so here it carries both."""
    if strategy not in transport.strategies and strategy != "readall":
        pytest.skip(f"{strategy} cannot carry {transport.name}")
