"""One connection's life: read, parse, respond in order, linger, close.

A connection reads into one small reused buffer, feeds the sans-I/O parser,
answers requests in order (pipelining) and hands file bodies to the copy
strategy. It reads what it needs of its server through `ServerState`, so the
server module keeps only accept, shutdown and drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from zcserve.errors import FileShrankError, HttpError, SendStalledError, TransferError
from zcserve.server.accesslog import AccessLog
from zcserve.server.config import ServerConfig
from zcserve.server.filecache import OpenFileCache
from zcserve.server.files import OpenedFile
from zcserve.server.http import (
    Limits,
    Request,
    RequestParser,
    error_body,
    error_response,
    without_keep_alive,
)
from zcserve.server.metrics import Metrics
from zcserve.server.respond import plan_reply
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import CopyStrategy, FallbackStrategy
from zcserve.server.tls import TlsStream

log = logging.getLogger("zcserve")

RECV_BUFFER = 8 * 1024
"""Per-connection receive buffer, reused for every read. It is resident for the
connection's whole life (bytearray zero-fills it), so it is sized like nginx's
large_client_header_buffers (8k), not uvicorn's 64 KiB: 10,000 idle connections
then cost about 80 MiB here rather than 640 MiB. Longer heads take several reads."""
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024

PEER_GONE = (TransferError, OSError)
"""A peer that left, stalled or broke: TimeoutError and ConnectionError are OSErrors."""


class ServerState(Protocol):
    """What a connection reads of the server that accepted it."""

    config: ServerConfig
    files: OpenFileCache
    strategy: CopyStrategy
    limits: Limits
    access_log: AccessLog
    tls: ssl.SSLContext | None
    metrics: Metrics

    @property
    def closing(self) -> bool:
        """True once shutdown began: finish the response in flight, then close."""


@dataclass(slots=True)
class ConnectionState:
    """What shutdown needs to know of a connection: is a response in flight?"""

    busy: bool = False


async def serve_http(server: ServerState, sock: socket.socket, state: ConnectionState) -> None:
    """Serve HTTP/1.1 requests on `sock` until the peer, an error or shutdown ends it."""
    loop = asyncio.get_running_loop()
    config = server.config
    try:
        stream = await _open_stream(server, sock, loop)
    except PEER_GONE as exc:  # ssl.SSLError is an OSError
        log.debug("TLS handshake with %s failed: %s", peer_host(sock), exc)
        close_socket(sock)
        return
    parser = RequestParser(server.limits)
    buffer = bytearray(RECV_BUFFER)
    view = memoryview(buffer)
    pending: deque[Request | HttpError] = deque()
    peer = peer_host(sock)
    # The first head must arrive within the header timeout of the accept.
    head_deadline: float | None = loop.time() + config.header_timeout
    try:
        while not server.closing or pending:
            if not pending:
                received = stream.recv_ready(buffer)
                if received is None and head_deadline is not None:
                    async with asyncio.timeout_at(head_deadline):
                        received = await stream.recv_into(buffer)
                elif received is None:
                    async with asyncio.timeout(config.keepalive_timeout):
                        received = await stream.recv_into(buffer)
                if received == 0:
                    return
                pending.extend(parser.feed(view[:received]))
                if parser.in_head:
                    if head_deadline is None:
                        head_deadline = loop.time() + config.header_timeout
                else:
                    head_deadline = None
                continue
            item = pending.popleft()
            if isinstance(item, HttpError):
                server.metrics.response(item.status, 0.0)
                await stream.send_all(error_response(item.status, keep_alive=False))
                server.access_log.write(peer, None, item.status, len(error_body(item.status)))
                await _linger(stream, buffer)
                return
            state.busy = True
            keep_alive = await _respond(server, stream, item, peer)
            state.busy = False
            if not keep_alive:
                return
    except TimeoutError:
        server.metrics.error("timeout")
        log.debug("connection from %s timed out", peer)
    except PEER_GONE as exc:
        server.metrics.error(_error_kind(exc))
        log.debug("connection from %s ended: %s", peer, exc)
    except Exception:
        server.metrics.error("internal")
        # A bug between responses costs this connection only, never the server;
        # `_respond` handles its own, so no response is half sent here.
        log.exception("unexpected error on the connection from %s", peer)
        with contextlib.suppress(*PEER_GONE):
            await stream.send_all(error_response(500, keep_alive=False))
    finally:
        view.release()
        if isinstance(stream, TlsStream):
            stream.close_notify()
        close_socket(sock)


async def _open_stream(
    server: ServerState, sock: socket.socket, loop: asyncio.AbstractEventLoop
) -> SocketStream:
    send_timeout = server.config.send_timeout
    if server.tls is None:
        return SocketStream(sock, loop, send_timeout=send_timeout)
    stream = TlsStream(sock, loop, server.tls, send_timeout=send_timeout)
    async with asyncio.timeout(server.config.header_timeout):
        await stream.handshake()
    return stream


async def _respond(server: ServerState, stream: SocketStream, request: Request, peer: str) -> bool:
    """Answer one request; return whether the connection may carry another."""
    sent_before = stream.bytes_sent
    started = stream.loop.time()
    try:
        if server.closing:  # say so, rather than drop the connection unannounced
            request = without_keep_alive(request)
        reply = plan_reply(request, server.files)
    except Exception:
        # Nothing is sent yet, so any failure, an OSError from the file system
        # included, is the server's own: a 500, not the silence of a lost peer.
        return await _fail(server, stream, request, peer, sent_before)
    try:
        if reply.file is not None:
            strategy = server.strategy.choose(stream)
            if strategy is not server.strategy and strategy.name == FallbackStrategy.name:
                server.metrics.fallbacks += 1  # auto could not use its zero-copy path
            await stream.send_all(reply.head, more=server.config.cork)
            body_start = stream.bytes_sent
            try:
                await strategy.send(stream, reply.file, reply.offset, reply.count)
            finally:
                server.metrics.sent(strategy.name, stream.bytes_sent - body_start)
        else:
            await stream.send_all(reply.head + reply.body if reply.body else reply.head)
    except PEER_GONE:
        raise
    except Exception:
        return await _fail(server, stream, request, peer, sent_before, len(reply.head))
    finally:
        reply.close()
    body_sent = stream.bytes_sent - sent_before - len(reply.head)
    server.metrics.response(reply.status, stream.loop.time() - started)
    server.access_log.write(peer, request, reply.status, body_sent)
    return reply.keep_alive and not server.closing


async def _fail(
    server: ServerState,
    stream: SocketStream,
    request: Request,
    peer: str,
    sent_before: int,
    head: int = 0,
) -> bool:
    """Log the exception being handled with its traceback; answer 500 if nothing of
    the response is sent yet. The connection must close either way."""
    log.exception("unexpected error answering %s %r", request.method, request.target)
    server.metrics.error("internal")
    server.metrics.response(500, 0.0)
    if stream.bytes_sent == sent_before:
        await stream.send_all(error_response(500, keep_alive=False))
        server.access_log.write(peer, request, 500, len(error_body(500)))
    else:
        server.access_log.write(peer, request, 500, stream.bytes_sent - sent_before - head)
    return False


async def serve_raw(server: ServerState, sock: socket.socket, state: ConnectionState) -> None:
    """The classic experiment: no HTTP; send the whole file, then close."""
    raw_file = server.config.raw_file
    assert raw_file is not None
    loop = asyncio.get_running_loop()
    stream = SocketStream(sock, loop, send_timeout=server.config.send_timeout)
    state.busy = True
    file: OpenedFile | None = None
    try:
        fd = os.open(raw_file, os.O_RDONLY | os.O_CLOEXEC)
        file = OpenedFile(fd, os.path.basename(raw_file), os.fstat(fd).st_size, 0, 0)
        if file.size:
            await server.strategy.send(stream, file, 0, file.size)
    except PEER_GONE as exc:  # out of descriptors (EMFILE) included: close, go on
        log.debug("raw transfer ended early: %s", exc)
    finally:
        if file is not None:
            file.close()
        close_socket(sock)


async def _linger(stream: SocketStream, buffer: bytearray) -> None:
    """Close the way nginx's lingering_close does: after an error the client may
    still be sending; closing with unread input makes the kernel send a reset that
    can destroy the error response in flight (RFC 9112 9.6). Stop sending, then
    read and discard for a short, capped while."""
    try:
        stream.sock.shutdown(socket.SHUT_WR)
        drained = 0
        async with asyncio.timeout(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                received = stream.recv_ready(buffer)
                if received is None:
                    received = await stream.recv_into(buffer)
                if not received:
                    return
                drained += received
    except (TimeoutError, OSError):
        return


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, FileShrankError):
        return "file_shrank"
    if isinstance(exc, SendStalledError):
        return "send_stalled"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionError):
        return "reset"
    return "io"


def peer_host(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "-"
    return str(peer[0]) if isinstance(peer, tuple) else "-"


def close_socket(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:  # pragma: no cover - close on a dead socket
        pass
