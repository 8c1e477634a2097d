"""Two designs for an HTTPS keep-alive server on uvloop, measured against nginx.

Run (about two minutes on 2 vCPUs; nginx, wrk, openssl and taskset on PATH):

    .venv/bin/python benchmarks/tls_prototypes.py --rounds 3 --duration 3 \\
        --connections 64 --sizes 4KiB,1MiB --warmup 1

It prints a markdown table and writes it to benchmarks/results/tls-prototypes-DATE.md.
Every server is pinned to CPU 0, and wrk to CPU 1, one run per server per size per
round (`taskset -c 1 wrk -t1 -c64 -d3s --latency https://127.0.0.1:PORT/file4k`);
rounds rotate the server order, so a noisy spell on a shared machine lands on all
servers alike, and medians across rounds are reported. The figure that matters is
the server's CPU time per request (psutil user + system of its processes over the
run, divided by the requests wrk completed): req/s moves with steal time, other
tenants' load and wrk's own TLS cost, µs per request much less. Each server and size
first gets an unrecorded warm-up run (heap growth, page cache).

The designs (both read the file per request: open, fstat, pread, close, as nginx
does without open_file_cache; both answer with nginx's header set):

(A) memory-bio: the server accepts raw non-blocking sockets itself and drives each
    with `loop.add_reader`; on readable, `recv_into` a shared buffer -> incoming
    `ssl.MemoryBIO` -> `SSLObject.read` plaintext -> httptools -> response ->
    `SSLObject.write` (up to FLUSH_BYTES at a time) -> outgoing BIO -> `sock.send`,
    with `add_writer` when the kernel takes less. The handshake runs in the same
    callback (`do_handshake` until it stops raising `SSLWantReadError`). Plaintext
    is read only while `incoming.pending` or `SSLObject.pending()` says there is
    some, so the common case raises no `SSLWantReadError`; the TLS 1.3 session
    tickets OpenSSL writes once the handshake completes leave with the first flush.
(B) transport: an `asyncio.Protocol` under `loop.create_server(..., ssl=context)`,
    that is uvloop's compiled sslproto (the same MemoryBIO/SSLObject design, in
    Cython); `data_received` -> httptools -> `transport.write`.
(C) socket-bio: as (A), but the socket is wrapped by `SSLContext.wrap_socket`
    (non-blocking, `do_handshake_on_connect=False`): OpenSSL reads and writes the
    descriptor itself, as nginx does, so no ciphertext passes through Python: one
    `recv_into` of plaintext per read, one `send` of a response's plaintext (head
    and body joined, up to FLUSH_BYTES) per write.

nginx gets `ssl_protocols TLSv1.2 TLSv1.3`: 1.22's default list stops at TLSv1.2
(TLSv1.3 joined it in 1.23.4), which would compare TLS 1.2 records with 1.3 ones.

Their plain-HTTP twins (the same code without TLS) and nginx over HTTP (sendfile
off: the same copy path as TLS; and on) are measured at the first size only, to
split each server's HTTPS cost into its HTTP cost plus what TLS adds.

One prototype alone: `python benchmarks/tls_prototypes.py serve memory-bio ROOT
--cert C --key K [--plain]` prints "listening on PORT" and serves until killed.
The prototypes import nothing from zcserve.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import ssl
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from importlib import metadata
from typing import TypeAlias, cast

import httptools
import psutil
import uvloop

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_CPU, CLIENT_CPU = 0, 1
START_TIMEOUT = 20.0
FLUSH_BYTES = 256 * 1024
"""Plaintext (A) encrypts before it hands the ciphertext to the kernel."""
COALESCE_BYTES = 16 * 1024
"""Bodies up to this size leave in one write with their head (one TLS record);
larger ones are written after it, without a copy to join them."""
RECEIVE_BYTES = 256 * 1024
SIZES = {"4KiB": 4096, "64KiB": 65536, "1MiB": 1024 * 1024}
NGINX_HTTPS = "nginx https"
NGINX_HTTP_REFERENCE = "nginx http sendfile=off"
Chunk: TypeAlias = bytes | memoryview

# --- the prototypes -------------------------------------------------------------

RECEIVED = bytearray(RECEIVE_BYTES)
"""One receive buffer for every connection: the loop runs one callback at a time and
the incoming BIO (A) or httptools (plain) has consumed the bytes before it returns."""
RECEIVED_VIEW = memoryview(RECEIVED)
PLAINTEXT = bytearray(RECEIVE_BYTES)
PLAINTEXT_VIEW = memoryview(PLAINTEXT)

HEAD_200 = (
    b"HTTP/1.1 200 OK\r\nServer: tls-prototype\r\nDate: %s\r\nContent-Type: %s\r\n"
    b"Content-Length: %d\r\nLast-Modified: %s\r\nConnection: %s\r\nETag: %s\r\n"
    b"Accept-Ranges: bytes\r\n\r\n"
)
HEAD_404 = (
    b"HTTP/1.1 404 Not Found\r\nServer: tls-prototype\r\nDate: %s\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 10\r\nConnection: %s\r\n\r\nnot found\n"
)


class Site:
    """The files under `root`, answered with nginx's header set. Shared by A and B."""

    def __init__(self, root: str) -> None:
        self.root = os.fsencode(root)
        self._second = -1
        self._date = b""
        self._dates: dict[int, bytes] = {}

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._date = now, formatdate(now, usegmt=True).encode()
        return self._date

    def http_date(self, seconds: int) -> bytes:
        value = self._dates.get(seconds)
        if value is None:
            value = self._dates[seconds] = formatdate(seconds, usegmt=True).encode()
        return value

    def respond(self, url: bytes, keep_alive: bool, head_only: bool, out: deque[Chunk]) -> None:
        """Append the response's bytes to `out`: one string, or head then body."""
        connection = b"keep-alive" if keep_alive else b"close"
        path = url.partition(b"?")[0]
        fd = -1
        if path.startswith(b"/") and b"/." not in path:
            try:
                fd = os.open(self.root + path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        if fd < 0:
            out.append(HEAD_404 % (self.date(), connection))
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                out.append(HEAD_404 % (self.date(), connection))
                return
            body = b"" if head_only else os.pread(fd, info.st_size, 0)
        finally:
            os.close(fd)
        size = info.st_size if head_only else len(body)
        mtime = int(info.st_mtime)
        etag = b'"%x-%x"' % (mtime, size)
        head = HEAD_200 % (
            self.date(), b"application/octet-stream", size, self.http_date(mtime), connection, etag
        )  # fmt: skip
        if size <= COALESCE_BYTES:
            out.append(head + body)
        else:
            out.append(head)
            out.append(body)


class Exchange:
    """httptools callbacks shared by every prototype: each complete request becomes
    response bytes in `out`; after a request without keep-alive, `closing` is set and
    later (pipelined) requests are ignored."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.out: deque[Chunk] = deque()
        self.closing = False

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        if self.closing:
            return
        keep_alive = bool(self.parser.should_keep_alive())
        head_only = self.parser.get_method() == b"HEAD"
        self.site.respond(self.url, keep_alive, head_only, self.out)
        self.closing = not keep_alive


class BioConnection(Exchange):
    """(A): TLS through memory BIOs on a socket driven by add_reader/add_writer."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        site: Site,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(site)
        self.sock, self.fd, self.loop = sock, sock.fileno(), loop
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaken = False
        self.cipher = memoryview(b"")
        """Ciphertext the kernel has not taken yet."""
        self.writing = False
        self.closed = False
        loop.add_reader(self.fd, self.on_readable)

    def on_readable(self) -> None:
        try:
            received = self.sock.recv_into(RECEIVED)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if received == 0:
            self.close()
            return
        self.incoming.write(RECEIVED_VIEW[:received])
        try:
            if not self.handshaken:
                try:
                    self.tls.do_handshake()
                except ssl.SSLWantReadError:
                    self.pump()  # the server's flight, if this step wrote one
                    return
                self.handshaken = True  # TLS 1.3 tickets now wait in `outgoing`
            self.decrypt()
        except (ssl.SSLError, httptools.HttpParserError):
            self.close()
            return
        self.pump()

    def decrypt(self) -> None:
        """Feed every decrypted byte to the parser. Read only while the BIO holds
        ciphertext or OpenSSL holds plaintext: raising SSLWantReadError costs more than
        a request's parsing, and a partial record is the only case that still does."""
        tls, incoming = self.tls, self.incoming
        while incoming.pending or tls.pending():
            try:
                # With a buffer, read() fills it and returns a count (typeshed says bytes).
                count = cast(int, tls.read(RECEIVE_BYTES, PLAINTEXT))
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:  # close_notify: answer what came before it
                self.closing = True
                return
            if count == 0:
                self.closing = True
                return
            self.parser.feed_data(PLAINTEXT_VIEW[:count])

    def pump(self) -> None:
        """Send what is unsent, encrypting queued responses FLUSH_BYTES at a time, until
        all is out (then close if asked) or the kernel pushes back (then add_writer,
        with reading paused until the backlog is gone)."""
        tls, outgoing, out = self.tls, self.outgoing, self.out
        while True:
            if self.cipher:
                try:
                    sent = self.sock.send(self.cipher)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.close()
                    return
                self.cipher = self.cipher[sent:]
                if self.cipher:
                    if not self.writing:
                        self.writing = True
                        self.loop.remove_reader(self.fd)
                        self.loop.add_writer(self.fd, self.pump)
                    return
            budget = FLUSH_BYTES
            while out and budget > 0:
                data = out.popleft()
                if len(data) > budget:
                    out.appendleft(memoryview(data)[budget:])
                    data = memoryview(data)[:budget]
                tls.write(data)
                budget -= len(data)
            if not outgoing.pending:
                break
            self.cipher = memoryview(outgoing.read())
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
            if not self.closing:
                self.loop.add_reader(self.fd, self.on_readable)
        if self.closing:
            self.close(notify=True)

    def close(self, notify: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if notify:  # close_notify, best effort, never waited for
            try:
                self.tls.unwrap()
            except ssl.SSLError:
                pass
            try:
                self.sock.send(self.outgoing.read())
            except OSError:
                pass
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.sock.close()


class PlainConnection(Exchange):
    """(A) without TLS: the same callbacks, bytes straight to and from the socket."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, site: Site) -> None:
        super().__init__(site)
        self.sock, self.fd, self.loop = sock, sock.fileno(), loop
        self.writing = False
        self.closed = False
        loop.add_reader(self.fd, self.on_readable)

    def on_readable(self) -> None:
        try:
            received = self.sock.recv_into(RECEIVED)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if received == 0:
            self.close()
            return
        try:
            self.parser.feed_data(RECEIVED_VIEW[:received])
        except httptools.HttpParserError:
            self.close()
            return
        self.pump()

    def pump(self) -> None:
        out = self.out
        while out:
            data = out[0]
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if sent < len(data):
                out[0] = memoryview(data)[sent:]
                if not self.writing:
                    self.writing = True
                    self.loop.remove_reader(self.fd)
                    self.loop.add_writer(self.fd, self.pump)
                return
            out.popleft()
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
            if not self.closing:
                self.loop.add_reader(self.fd, self.on_readable)
        if self.closing:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()


class SocketBioConnection(Exchange):
    """(C): TLS through a socket BIO: the SSLSocket reads and writes its descriptor."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        site: Site,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(site)
        self.tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.fd, self.loop = self.tls.fileno(), loop
        self.handshaken = False
        self.pending: Chunk = b""
        """Plaintext an SSL_write asked for again (it must be retried with the same bytes)."""
        self.writing = False
        self.closed = False
        loop.add_reader(self.fd, self.on_readable)

    def on_readable(self) -> None:
        tls = self.tls
        try:
            if not self.handshaken:
                try:
                    tls.do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return
                self.handshaken = True
            while True:
                try:
                    count = tls.recv_into(PLAINTEXT, RECEIVE_BYTES)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                if count == 0:
                    self.closing = True
                    break
                self.parser.feed_data(PLAINTEXT_VIEW[:count])
                if not tls.pending():
                    break  # the next record, if any, raises a readable event
        except (ssl.SSLError, OSError, httptools.HttpParserError):
            self.close()
            return
        self.pump()

    def pump(self) -> None:
        out = self.out
        while self.pending or out:
            data = self.pending
            if not data:
                parts: list[Chunk] = []
                budget = FLUSH_BYTES
                while out and budget > 0:
                    part = out.popleft()
                    if len(part) > budget:
                        out.appendleft(memoryview(part)[budget:])
                        part = memoryview(part)[:budget]
                    parts.append(part)
                    budget -= len(part)
                data = parts[0] if len(parts) == 1 else b"".join(parts)
            try:
                self.tls.send(data)
                self.pending = b""
            except (ssl.SSLWantWriteError, BlockingIOError):
                self.pending = data
                if not self.writing:
                    self.writing = True
                    self.loop.remove_reader(self.fd)
                    self.loop.add_writer(self.fd, self.pump)
                return
            except OSError:
                self.close()
                return
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
            if not self.closing:
                self.loop.add_reader(self.fd, self.on_readable)
        if self.closing:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.tls.close()


class TransportProtocol(Exchange, asyncio.Protocol):
    """(B): the loop's transport (with ssl=, uvloop's sslproto) does TLS and I/O."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        out, write = self.out, self.transport.write
        while out:
            write(out.popleft())
        if self.closing:
            self.transport.close()

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.closing:
            self.transport.resume_reading()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def serve(design: str, root: str, context: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    site = Site(root)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    if design == "transport":
        server = await loop.create_server(
            lambda: TransportProtocol(site), sock=listener, ssl=context
        )  # fmt: skip
        print(f"listening on {listener.getsockname()[1]}", flush=True)
        await server.serve_forever()
        return
    listener.setblocking(False)

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError:  # EMFILE, ECONNABORTED: try again on the next event
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is None:
                PlainConnection(sock, loop, site)
            elif design == "socket-bio":
                SocketBioConnection(sock, loop, site, context)
            else:
                BioConnection(sock, loop, site, context)

    loop.add_reader(listener.fileno(), accept)
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tls_prototypes.py serve")
    parser.add_argument("design", choices=("memory-bio", "transport", "socket-bio"))
    parser.add_argument("root")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--plain", action="store_true", help="HTTP, no TLS")
    args = parser.parse_args(argv)
    context = None if args.plain else server_context(args.cert, args.key)
    uvloop.run(serve(args.design, args.root, context))
    return 0


# --- the measurement ------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/error-{name}.log error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile {sendfile};
    tcp_nopush {sendfile};
    tcp_nodelay on;
    keepalive_requests 10000000;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    ssl_session_cache shared:SSL:10m;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{
        listen 127.0.0.1:{port}{ssl} backlog=4096;
        {certificate}
        root {root};
    }}
}}
"""


def pin(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    name: str
    scheme: str
    proc: subprocess.Popen[str]
    port: int

    def cpu_seconds(self) -> float:
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for process in [root, *root.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
        return total

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{path}"


@dataclass(frozen=True)
class Spec:
    name: str
    scheme: str
    family: str
    """nginx, A or B: rows of one family are compared across schemes."""
    command: Callable[[str, str, str, str, int], list[str]]
    """(root, tmp, cert, key, port) -> the command line; port is 0 for the prototypes."""


def nginx_command(name: str, tls: bool, sendfile: str) -> Callable[..., list[str]]:
    def command(root: str, tmp: str, cert: str, key: str, port: int) -> list[str]:
        conf = os.path.join(tmp, f"nginx-{name}.conf")
        certificate = f"ssl_certificate {cert}; ssl_certificate_key {key};" if tls else ""
        with open(conf, "w") as out:
            out.write(
                NGINX_CONF.format(
                    tmp=tmp,
                    name=name,
                    port=port,
                    ssl=" ssl" if tls else "",
                    root=root,
                    sendfile=sendfile,
                    certificate=certificate,
                )  # fmt: skip
            )
        return ["nginx", "-c", conf, "-p", tmp]

    return command


def prototype_command(design: str, tls: bool) -> Callable[..., list[str]]:
    def command(root: str, tmp: str, cert: str, key: str, port: int) -> list[str]:
        args = [sys.executable, os.path.abspath(__file__), "serve", design, root]
        return args + (["--cert", cert, "--key", key] if tls else ["--plain"])

    return command


SPECS = (
    Spec(NGINX_HTTPS, "https", "nginx", nginx_command("https", True, "off")),
    Spec("A memory-bio https", "https", "A", prototype_command("memory-bio", True)),
    Spec("B transport https", "https", "B", prototype_command("transport", True)),
    Spec("C socket-bio https", "https", "C", prototype_command("socket-bio", True)),
    Spec(NGINX_HTTP_REFERENCE, "http", "nginx", nginx_command("http-off", False, "off")),
    Spec("nginx http sendfile=on", "http", "nginx-sendfile", nginx_command("http-on", False, "on")),
    Spec("A plain http", "http", "A", prototype_command("memory-bio", False)),
    Spec("B plain http", "http", "B", prototype_command("transport", False)),
)


def start(spec: Spec, root: str, tmp: str, cert: str, key: str) -> Running:
    nginx = spec.family.startswith("nginx")
    port = free_port() if nginx else 0
    proc = subprocess.Popen(
        spec.command(root, tmp, cert, key, port), stdout=subprocess.PIPE, text=True,
        preexec_fn=pin(SERVER_CPU),
    )  # fmt: skip
    if nginx:
        _wait_port(port, proc)
    else:
        port = _read_port(proc)
    return Running(spec.name, spec.scheme, proc, port)


def _read_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    watchdog = threading.Timer(START_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()
    finally:
        watchdog.cancel()
    match = re.match(r"listening on (\d+)", line)
    if match is None:
        stop(proc)
        raise RuntimeError(f"{proc.args!r} did not announce a port")
    return int(match.group(1))


def _wait_port(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{proc.args!r} is not listening on {port}")


def stop(proc: subprocess.Popen[str]) -> None:
    """End a child we started, by its own PID: SIGTERM (nginx: fast shutdown), then
    SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def running(spec: Spec, root: str, tmp: str, cert: str, key: str) -> Iterator[Running]:
    server = start(spec, root, tmp, cert, key)
    try:
        yield server
    finally:
        stop(server.proc)


def make_certificate(tmp: str, key_type: str) -> tuple[str, str]:
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    new_key = ["-newkey", "rsa:2048"] if key_type == "rsa" else ["-newkey", "ec"]
    new_key += [] if key_type == "rsa" else ["-pkeyopt", "ec_paramgen_curve:prime256v1"]
    subprocess.run(
        ["openssl", "req", "-x509", *new_key, "-nodes", "-subj", "/CN=localhost",
         "-days", "2", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def check(server: Running, name: str, size: int) -> str:
    """Two pipelined GETs and a `Connection: close` one on one connection: three 200s
    with whole bodies, then the server closes. Returns the TLS version and cipher."""
    request = f"GET /{name} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    last = f"GET /{name} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    described = "plain"
    sock: socket.socket = raw
    if server.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        tls = context.wrap_socket(raw, server_hostname="localhost")
        cipher = tls.cipher()
        described = f"{tls.version()} {cipher[0] if cipher else '?'}"
        sock = tls
    with sock:
        sock.sendall(request * 2 + last)
        data = bytearray()
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    seen, at = 0, 0
    while at < len(data):
        end = data.index(b"\r\n\r\n", at)
        head = bytes(data[at:end])
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if not head.startswith(b"HTTP/1.1 200") or length is None or int(length.group(1)) != size:
            raise RuntimeError(f"{server.name}: unexpected response head {head[:200]!r}")
        at = end + 4 + size
        seen += 1
    if seen != 3 or at != len(data):
        raise RuntimeError(f"{server.name}: {seen} responses, {len(data)} bytes")
    return described


def run_wrk(url: str, connections: int, duration: float) -> dict[str, float]:
    command = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{connections}"]
    command += [f"-d{duration:g}s", "--latency", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    if rps is None or requests is None:
        said = " | ".join(line.strip() for line in (out + done.stderr).splitlines() if line)
        raise RuntimeError(f"wrk printed no Requests/sec: {said or 'nothing'}")
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    count = int(errors.group(1)) if errors else 0
    count += sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    return {
        "requests_per_second": float(rps.group(1)),
        "requests": float(requests.group(1)),
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
        "errors": float(count),
    }


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """(steal, total) jiffies of each CPU, from /proc/stat."""
    ticks = {}
    with open("/proc/stat") as stat_file:
        for line in stat_file:
            fields = line.split()
            if fields[0].startswith("cpu") and fields[0] != "cpu":
                values = [int(v) for v in fields[1:9]]  # user .. steal; guest is in user
                ticks[int(fields[0][3:])] = (values[7], sum(values))
    return ticks


def steal_percent(before: dict[int, tuple[int, int]], cpu: int) -> float:
    """The share of `cpu`'s time the hypervisor took since `before`, %."""
    after = cpu_ticks()
    steal = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * steal / total if total else 0.0


def measure(server: Running, name: str, connections: int, duration: float) -> dict[str, float]:
    ticks = cpu_ticks()
    before = server.cpu_seconds()
    figures = run_wrk(server.url(name), connections, duration)
    cpu = server.cpu_seconds() - before
    figures["steal_server"] = steal_percent(ticks, SERVER_CPU)
    figures["steal_client"] = steal_percent(ticks, CLIENT_CPU)
    figures["cpu_seconds"] = cpu
    figures["us_cpu_per_request"] = cpu * 1e6 / figures["requests"] if figures["requests"] else 0
    return figures


@dataclass
class Cell:
    spec: Spec
    size: str
    runs: list[dict[str, float]] = field(default_factory=list)
    failed: int = 0

    def median(self, key: str) -> float:
        return statistics.median(run[key] for run in self.runs) if self.runs else float("nan")

    @property
    def rate(self) -> float:
        return self.median("requests_per_second")

    @property
    def cpu(self) -> float:
        return self.median("us_cpu_per_request")


def plan(sizes: list[str], servers: list[Spec]) -> list[tuple[Spec, str]]:
    """Every server at the first size; only the HTTPS ones at the others."""
    return [
        (spec, size) for size in sizes for spec in servers
        if spec.scheme == "https" or size == sizes[0]
    ]  # fmt: skip


def markdown(cells: list[Cell], args: argparse.Namespace, notes: list[str]) -> str:
    lines = [
        f"# TLS prototypes vs nginx ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`.venv/bin/python benchmarks/tls_prototypes.py --rounds {args.rounds} "
        f"--duration {args.duration:g} --connections {args.connections} "
        f"--sizes {args.sizes} --key-type {args.key_type} --warmup {args.warmup:g}`",
        "",
        f"{args.rounds} interleaved rounds of {args.duration:g} s (after a {args.warmup:g} s "
        "unrecorded warm-up of each server and size), medians; every server "
        f"pinned to CPU {SERVER_CPU}, `taskset -c {CLIENT_CPU} wrk -t1 "
        f"-c{args.connections} -d{args.duration:g}s`. CPU µs/req: the server's user + system "
        "CPU time over the run (psutil, all its processes) divided by the requests wrk "
        "completed. `× nginx` is the nginx reference's µs/req over this server's "
        f"(`{NGINX_HTTPS}` for https rows, `{NGINX_HTTP_REFERENCE}` for http rows): "
        "above 1 means cheaper than nginx. Steal: the hypervisor's share of each CPU "
        "during the runs (/proc/stat), medians.",
        "",
        *notes,
        "",
        "| server | scheme | size | conns | CPU µs/req | × nginx (CPU) | req/s | p99 ms "
        "| runs µs/req | steal % server/client CPU | errors | rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        reference_name = NGINX_HTTPS if cell.spec.scheme == "https" else NGINX_HTTP_REFERENCE
        reference = next(
            (c for c in cells if c.spec.name == reference_name and c.size == cell.size), None
        )
        ratio = reference.cpu / cell.cpu if reference and reference.runs and cell.runs else None
        per_run = ", ".join(f"{run['us_cpu_per_request']:.1f}" for run in cell.runs)
        lines.append(
            f"| {cell.spec.name} | {cell.spec.scheme} | {cell.size} | {args.connections} "
            f"| {cell.cpu:.1f} | {'–' if ratio is None else f'{ratio:.2f}×'} "
            f"| {cell.rate:,.0f} | {cell.median('p99_ms'):.2f} | {per_run} "
            f"| {cell.median('steal_server'):.1f}/{cell.median('steal_client'):.1f} "
            f"| {int(sum(r['errors'] for r in cell.runs))} "
            f"| {len(cell.runs)}/{len(cell.runs) + cell.failed} |"
        )
    first = args.sizes.split(",")[0]
    pairs = [
        ("nginx", NGINX_HTTPS, NGINX_HTTP_REFERENCE),
        ("A memory-bio", "A memory-bio https", "A plain http"),
        ("B transport", "B transport https", "B plain http"),
        ("C socket-bio", "C socket-bio https", "A plain http"),
    ]
    found = {(c.spec.name, c.size): c for c in cells if c.runs}
    rows = []
    for family, https_name, http_name in pairs:
        https, http = found.get((https_name, first)), found.get((http_name, first))
        if https is None or http is None:
            continue
        rows.append(
            f"| {family} | {http.cpu:.1f} | {https.cpu:.1f} | {https.cpu - http.cpu:+.1f} "
            f"| {https.cpu / http.cpu:.2f}× | {http.rate:,.0f} | {https.rate:,.0f} "
            f"| {https.rate / http.rate:.2f}× |"
        )
    if rows:
        lines += [
            "",
            f"What TLS adds, {first} at c={args.connections} (nginx: https vs http "
            "sendfile=off; prototypes: the same code with and without TLS):",
            "",
            "| server | HTTP µs/req | HTTPS µs/req | TLS adds µs/req | HTTPS/HTTP CPU "
            "| HTTP req/s | HTTPS req/s | HTTPS/HTTP req/s |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    return "\n".join(lines) + "\n"


def bench_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--sizes", default="4KiB,1MiB", help=f"comma-separated, of {', '.join(SIZES)}; "
        "the first one also measures the plain-HTTP servers",
    )  # fmt: skip
    parser.add_argument("--key-type", choices=("ec", "rsa"), default="ec", help="P-256 or RSA 2048")
    parser.add_argument(
        "--servers", help="comma-separated name prefixes (default: all): "
        + ", ".join(s.name for s in SPECS),
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unrecorded wrk seconds per server and size"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes):
        parser.error(f"--sizes: choose from {', '.join(SIZES)}")
    servers = list(SPECS)
    if args.servers:
        wanted = [w.strip().lower() for w in args.servers.split(",") if w.strip()]
        servers = [s for s in SPECS if any(s.name.lower().startswith(w) for w in wanted)]
    for tool in ("nginx", "wrk", "openssl", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 CPUs to separate server and client")
    os.sched_setaffinity(0, {CLIENT_CPU})
    work = plan(sizes, servers)
    cells = {(spec.name, size): Cell(spec, size) for spec, size in work}
    notes = []
    with tempfile.TemporaryDirectory(prefix="tls-prototypes-") as tmp, ExitStack() as stack:
        cert, key = make_certificate(tmp, args.key_type)
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        pattern = bytes(range(32, 127)) * (max(SIZES.values()) // 95 + 1)
        for size in sizes:
            with open(os.path.join(root, file_name(size)), "wb") as out:
                out.write(pattern[: SIZES[size]])
        running_servers: list[Running] = []
        for spec in servers:
            server = stack.enter_context(running(spec, root, tmp, cert, key))
            said = check(server, file_name(sizes[0]), SIZES[sizes[0]])
            print(f"started {spec.name} on {server.port} (pid {server.proc.pid}): {said}")
            notes.append(f"- {spec.name}: {said}")
            running_servers.append(server)
        notes.insert(0, versions(args.key_type))
        if args.warmup > 0:  # first-run effects (heap growth, caches) land outside the rounds
            print(f"warm-up: {args.warmup:g} s per server and size, not recorded", flush=True)
            for spec, size in work:
                server = next(s for s in running_servers if s.name == spec.name)
                run_wrk(server.url(file_name(size)), args.connections, args.warmup)
        for round_ in range(args.rounds):
            shift = round_ % len(running_servers)
            order = running_servers[shift:] + running_servers[:shift]
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for size in sizes:
                for server in order:
                    cell = cells.get((server.name, size))
                    if cell is None:
                        continue
                    if server.proc.poll() is not None:
                        cell.failed += 1
                        print(f"{server.name:26} {size:>5} FAILED: server exited")
                        continue
                    try:
                        run = measure(server, file_name(size), args.connections, args.duration)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        cell.failed += 1
                        print(f"{server.name:26} {size:>5} FAILED: {exc}")
                        continue
                    cell.runs.append(run)
                    print(
                        f"{server.name:26} {size:>5} {run['requests_per_second']:9.0f} req/s "
                        f"cpu {run['us_cpu_per_request']:7.1f} µs/req "
                        f"p99 {run['p99_ms']:7.2f} ms err {int(run['errors'])} "
                        f"steal {run['steal_server']:.1f}%/{run['steal_client']:.1f}%",
                        flush=True,
                    )
    report = markdown(list(cells.values()), args, notes)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"tls-prototypes-{time.strftime('%Y-%m-%d-%H%M')}.md")
    with open(path, "w") as out:
        out.write(report)
    print(report)
    print(f"written to {path}")
    return 0


def file_name(size: str) -> str:
    return f"file{size.lower()[:-2]}"


def versions(key_type: str) -> str:
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return (
        f"{nginx.removeprefix('nginx version: ')}, {wrk.strip()}, Python "
        f"{sys.version.split()[0]} with {ssl.OPENSSL_VERSION}, uvloop "
        f"{metadata.version('uvloop')}, httptools {httptools.__version__}; certificate "
        f"{'RSA 2048' if key_type == 'rsa' else 'ECDSA P-256'}, self-signed. Handshakes:"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve_main(sys.argv[2:])
    return bench_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
