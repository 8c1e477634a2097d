"""One connection's life: read, parse, respond in order, linger, close.

A connection reads into one small reused buffer, feeds the sans-I/O parser,
answers requests in order (pipelining) and hands file bodies to the copy
strategy. Plain TCP connections are `HttpConnection`s, driven by loop callbacks;
TLS connections and raw mode run as coroutines (`serve_http`, `serve_raw`). Both
read what they need of their server through `ServerState`, so the server module
keeps only accept, shutdown and drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import math
import os
import socket
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from zcserve.errors import FileShrankError, HttpError, SendStalledError, TransferError
from zcserve.server.accesslog import AccessLog
from zcserve.server.config import ServerConfig
from zcserve.server.decorate import Planner
from zcserve.server.filecache import OpenFileCache
from zcserve.server.files import OpenedFile
from zcserve.server.http import (
    Limits,
    Request,
    RequestParser,
    error_body,
    error_response,
    plain_http_on_tls_port,
    without_keep_alive,
)
from zcserve.server.metrics import Metrics
from zcserve.server.multipart import multipart_body
from zcserve.server.respond import MultipartReply, Reply, error_reply
from zcserve.server.sockio import MSG_MORE, SocketStream, wait_readable
from zcserve.server.strategies import (
    CopyStrategy,
    FallbackStrategy,
    Progress,
    Transfer,
    pump,
)
from zcserve.server.tls import TlsStream

log = logging.getLogger("zcserve")

RECV_BUFFER = 8 * 1024
"""Per-connection receive buffer, reused for every read. It is resident for the
connection's whole life (bytearray zero-fills it), so it is sized like nginx's
large_client_header_buffers (8k), not uvicorn's 64 KiB: 10,000 idle connections
then cost about 80 MiB here rather than 640 MiB. Longer heads take several reads."""
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024

_DONE = Progress.DONE  # enum members bound once: each lookup costs on the hot path
PEER_GONE = (TransferError, OSError)
"""A peer that left, stalled or broke: TimeoutError and ConnectionError are OSErrors."""
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))
"""What a strategy's `start` may run out of (a descriptor, a pipe, a mapping): 503."""
HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""First bytes of a plain HTTP request; a TLS ClientHello starts with 0x16."""


class ServerState(Protocol):
    """What a connection reads of the server that accepted it."""

    config: ServerConfig
    files: OpenFileCache
    strategy: CopyStrategy
    limits: Limits
    access_log: AccessLog
    tls: ssl.SSLContext | None
    metrics: Metrics
    metrics_on: bool
    """False when nothing reads the metrics: the hot path then skips its counters."""
    timed: bool
    """True when the metrics or the access log need each request's start time."""
    plan: Planner
    """`plan_reply`, or the planner --header, --cors, --max-ranges and --precompressed
    chose at start-up (`decorate.make_planner`)."""

    @property
    def closing(self) -> bool:
        """True once shutdown began: finish the response in flight, then close."""


@dataclass(slots=True)
class ConnectionState:
    """What shutdown needs to know of a connection: is a response in flight?"""

    busy: bool = False


class After(enum.Enum):
    """What a connection does once the bytes in flight are in the kernel."""

    FINISH = "finish"
    """Account for the response, then answer the next request or close."""
    LINGER = "linger"
    """An error answer went out: stop sending, drain what the client still sends."""
    CLOSE = "close"


_FINISH = After.FINISH


class HttpConnection:
    """One plain-TCP HTTP/1.1 connection, driven by loop callbacks.

    The common case, a request whose answer fits in the socket buffer, runs inside
    one readable callback: no task, no future, no timer object. The connection
    waits for writability only when the socket is full, and reads nothing while a
    response is pending (backpressure; pipelined answers stay in order). Its one
    deadline is a number that the server's sweep checks (`check_deadline`).
    """

    __slots__ = (
        "server",
        "loop",
        "sock",
        "fd",
        "stream",
        "parser",
        "pending",
        "deadline",
        "busy",
        "closed",
        "_on_close",
        "_buffer",
        "_view",
        "peer",
        "_reading",
        "_writing",
        "_head_deadline",
        "_unsent",
        "_flags",
        "_after",
        "_reply",
        "_request",
        "_started",
        "_strategy",
        "_chosen",
        "_fell_back",
        "_transfer",
        "_body_start",
        "_task",
        "_drained",
        "_advancing",
    )

    def __init__(
        self,
        server: ServerState,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_close: Callable[[HttpConnection], object],
        peer: str,
    ) -> None:
        self.server = server
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.stream = SocketStream(sock, loop, send_timeout=server.config.send_timeout)
        self.parser = RequestParser(server.limits)
        self.pending: deque[Request | HttpError] = deque()
        # The first head must arrive within the header timeout of the accept.
        self.deadline = loop.time() + server.config.header_timeout
        self.busy = False
        self.closed = False
        self._on_close: Callable[[HttpConnection], object] | None = on_close
        self._buffer = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self.peer = peer
        self._reading = False
        self._writing = False
        self._head_deadline: float | None = self.deadline
        self._unsent = memoryview(b"")
        self._flags = 0
        self._after = After.FINISH
        self._reply: Reply | None = None
        self._request: Request | None = None
        self._started = 0.0
        self._strategy: CopyStrategy | None = None
        # What moves this connection's bodies is known once its stream is: auto's
        # choice depends only on the socket.
        self._chosen = server.strategy.choose(self.stream)
        self._fell_back = (
            self._chosen is not server.strategy and self._chosen.name == FallbackStrategy.name
        )
        """auto could not use its zero-copy path here: each body is counted."""
        self._transfer: Transfer | None = None
        self._body_start = 0
        self._task: asyncio.Task[None] | None = None
        self._drained = -1  # bytes discarded while lingering; -1: not lingering
        self._advancing = False

    def start(self) -> None:
        self._resume_reading()

    # reading ---------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    def _on_readable(self) -> None:
        if self.busy and self._drained < 0:
            # The next request waits in the kernel until this response is out: that
            # is backpressure, and it keeps answers in order. Reading is paused only
            # now, when a client actually sends ahead, so the common case costs no
            # epoll_ctl per response.
            self._pause_reading()
            return
        try:
            received = self.sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(exc)
            return
        if self._drained >= 0:
            self._drained += received
            if received == 0 or self._drained >= LINGER_BYTES:
                self.close()
            return
        if received == 0:
            self.close()
            return
        try:
            parser = self.parser
            requests = parser.feed(self._view[:received])
            self.pending.extend(requests)
            # Any byte since the last complete request starts the header clock: a
            # client sending only CRLFs (which llhttp skips) must not stay forever.
            if parser.in_head or not requests:
                if self._head_deadline is None:
                    self._head_deadline = self.loop.time() + self.server.config.header_timeout
                self.deadline = self._head_deadline
            else:
                self._head_deadline = None
            self._advance()
        except Exception:
            self._internal_error()

    def _advance(self) -> None:
        """Answer pending requests in order until one has to wait for the socket."""
        self._advancing = True
        try:
            while self.pending and not self.busy and not self.closed:
                item = self.pending.popleft()
                if isinstance(item, HttpError):
                    self._answer_error(item)
                else:
                    self._respond(item)
        finally:
            self._advancing = False
        if self.busy or self.closed:
            return
        if self.server.closing:
            self.close()
            return
        if self._head_deadline is not None:
            self.deadline = self._head_deadline
        else:
            self.deadline = self.loop.time() + self.server.config.keepalive_timeout
        if not self._reading:
            self._resume_reading()

    # responding ------------------------------------------------------------------

    def _respond(self, request: Request) -> None:
        server = self.server
        if server.timed:
            self._started = self.loop.time()
        if server.closing:  # say so, rather than drop the connection unannounced
            request = without_keep_alive(request)
        self._request = request
        self.busy = True
        try:
            reply = server.plan(request, server.files)
        except Exception:
            # Nothing is sent yet, so any failure, an OSError from the file system
            # included, is the server's own: a 500, not the silence of a lost peer.
            log.exception("unexpected error answering %s %r", request.method, request.target)
            self._answer_500()
            return
        self._reply = reply
        self._after = _FINISH
        file = reply.file
        if file is None:
            self._send(reply.head + reply.body if reply.body else reply.head, 0)
            return
        strategy = self._chosen
        if self._fell_back:
            server.metrics.fallbacks += 1
        if reply.__class__ is MultipartReply:  # several ranges: parts go one by one
            strategy = multipart_body(strategy, reply)
        # What the body needs (a pipe, a descriptor of its own) is taken before the
        # head goes out: after a 200 and its length, a missing one could only cut
        # the body short.
        try:
            self._transfer = strategy.start(self.stream, file, reply.offset, reply.count)
        except Exception as exc:
            reply.close()
            self._reply = None
            if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES:
                log.debug("answering %s with 503: %s", self.peer, exc)
                reply = self._reply = error_reply(HttpError(503, str(exc)), request)
                self._send(reply.head + reply.body, 0)
                return
            log.exception("unexpected error answering %s %r", request.method, request.target)
            self._answer_500()
            return
        self._strategy = strategy
        self._body_start = self.stream.bytes_sent
        self._send(reply.head, MSG_MORE if server.config.cork else 0)

    def _answer_error(self, error: HttpError) -> None:
        """A request the parser refused: answer it, then linger and close."""
        status = error.status
        self.server.metrics.response(status, 0.0)
        if self.server.access_log.on:
            log_access(self.server, self.peer, None, status, len(error_body(status)))
        self.busy = True
        self._after = After.LINGER
        self._send(error_response(status, keep_alive=False), 0)

    def _answer_500(self) -> None:
        metrics = self.server.metrics
        metrics.error("internal")
        metrics.response(500, 0.0)
        if self.server.access_log.on:
            log_access(self.server, self.peer, self._request, 500, len(error_body(500)))
        self.busy = True
        self._reply = None
        self._after = After.CLOSE
        self._send(error_response(500, keep_alive=False), 0)

    def _send(self, data: bytes, flags: int) -> None:
        try:
            sent = self.sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        except PEER_GONE as exc:
            self._end(exc)
            return
        if sent < len(data):  # the socket is full: keep the rest for _pump
            self._unsent = memoryview(data)[sent:]
            self._flags = flags
        self._pump()

    def _pump(self) -> None:
        """Move the response in flight on as far as the socket takes it now."""
        try:
            if self._unsent:
                send, flags = self.sock.send, self._flags
                while self._unsent:
                    self._unsent = self._unsent[send(self._unsent, flags) :]
            reply = self._reply
            if self._after is not _FINISH or reply is None:
                self._after_sent()
                return
            if reply.file is not None:
                transfer = self._transfer
                if transfer is None:  # a strategy that only knows how to be awaited
                    assert self._strategy is not None
                    self._await(
                        self._strategy.send(self.stream, reply.file, reply.offset, reply.count)
                    )
                    return
                progress = transfer.advance()
                if progress is not _DONE:
                    self._transfer_waits(transfer, progress)
                    return
            self._finish()
        except BlockingIOError:
            self._wait_writable()
        except PEER_GONE as exc:
            self._end(exc)
        except Exception:
            self._internal_error()

    def _transfer_waits(self, transfer: Transfer, progress: Progress) -> None:
        if progress is Progress.WAIT:
            self._wait_writable()
        elif progress is Progress.YIELD:  # let other connections run
            self._stop_writing()
            self.deadline = math.inf
            self.loop.call_soon(self._pump)
        else:  # HANDOFF
            assert transfer.rest is not None
            self._await(transfer.rest(transfer.offset, transfer.end - transfer.offset))

    def _wait_writable(self) -> None:
        if not self._writing:
            self.loop.add_writer(self.fd, self._on_writable)
            self._writing = True
        self.deadline = self.loop.time() + self.server.config.send_timeout

    def _stop_writing(self) -> None:
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False

    def _on_writable(self) -> None:
        self._pump()

    def _await(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Hand the rest of the body to a coroutine; it keeps its own send timeout."""
        self._stop_writing()
        self.deadline = math.inf
        self._task = self.loop.create_task(coroutine)
        self._task.add_done_callback(self._on_awaited)

    def _on_awaited(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            self.close()
            return
        exc = task.exception()
        if self.closed:
            self.close()  # finish the close it deferred
        elif exc is None:
            self._finish()
        elif isinstance(exc, PEER_GONE):
            self._end(exc)
        else:
            self._internal_error(exc)

    def _after_sent(self) -> None:
        self._stop_writing()
        if self._after is After.LINGER:
            self._linger()
        elif self._after is After.CLOSE:
            self.close()
        else:
            self._finish()

    def _finish(self) -> None:
        """The response is in the kernel: count it, then go on to the next request."""
        if self._writing:
            self._stop_writing()
        reply, request = self._reply, self._request
        assert reply is not None and request is not None
        server = self.server
        if server.access_log.on:  # first, while the strategy is still known
            self._log_response(reply, request)
        file = reply.file
        if file is not None:
            self._release_body()
            file.close()  # what `reply.close()` does, one call shorter
        if server.metrics_on:
            server.metrics.response(reply.status, self.loop.time() - self._started)
        self._reply = None
        self.busy = False
        if not reply.keep_alive or server.closing:
            # Pipelined requests may already be in our receive queue: a plain close
            # would answer them with a reset that destroys this response in flight.
            # As nginx's lingering_close, linger only when the client sent more.
            if self._client_sent_more():
                self._linger()
            else:
                self.close()
        elif not self._advancing:  # else the `_advance` below us goes on
            self._advance()

    def _log_response(self, reply: Reply, request: Request) -> None:
        """The access-log line of the response in flight, finished or cut short: the
        body bytes counted are those actually sent."""
        server = self.server
        if reply.file is None:
            body = max(0, len(reply.body) - len(self._unsent))
            strategy = None
        else:
            body = self.stream.bytes_sent - self._body_start
            strategy = self._strategy.name if self._strategy is not None else None
        seconds = self.loop.time() - self._started if server.access_log.timed else None
        log_access(server, self.peer, request, reply.status, body, seconds, strategy)

    def _client_sent_more(self) -> bool:
        return bool(self.pending) or self.parser.in_head or _unread_input(self.sock)

    def _release_body(self) -> int:
        """Close the transfer and count its bytes; return them."""
        sent = self.stream.bytes_sent - self._body_start
        if self._transfer is not None:
            self._transfer.close()
            self._transfer = None
        if self._strategy is not None:
            if self.server.metrics_on:
                self.server.metrics.sent(self._strategy.name, sent)
            self._strategy = None
        return sent

    # endings -----------------------------------------------------------------------

    def _linger(self) -> None:
        """Close the way nginx's lingering_close does, after the last response on a
        connection: the client may still be sending, and closing with unread input
        makes the kernel send a reset that can destroy the response in flight (RFC
        9112 9.6). Stop sending, then read and discard for a short, capped while."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._drained = 0
        self.deadline = self.loop.time() + LINGER_SECONDS
        self._resume_reading()

    def _end(self, exc: BaseException) -> None:
        """The peer left, stalled or broke the connection; a response cut short is
        still logged, with the bytes that went out."""
        self.server.metrics.error(_error_kind(exc))
        log.debug("connection from %s ended: %s", self.peer, exc)
        reply, request = self._reply, self._request
        if self.busy and reply is not None and request is not None and self.server.access_log.on:
            self._log_response(reply, request)
        self.close()

    def _internal_error(self, exc: BaseException | None = None) -> None:
        """A bug: log it with its traceback; answer 500 if nothing of a response is
        out yet, else close. It costs this connection only."""
        if exc is None:
            log.exception("unexpected error on the connection from %s", self.peer)
        else:
            log.error("unexpected error on the connection from %s", self.peer, exc_info=exc)
        request = self._request if self.busy else None
        reply = self._reply
        if reply is not None and (self._transfer is not None or self._strategy is not None):
            # Part of this response may be out: it cannot become a 500.
            server = self.server
            server.metrics.error("internal")
            server.metrics.response(500, 0.0)
            body = self._release_body()
            if server.access_log.on:
                log_access(server, self.peer, request, 500, body)
            self.close()
            return
        if reply is not None:
            reply.close()
            self._reply = None
        self._unsent = memoryview(b"")
        self._answer_500()

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep: close the connection if it is past due."""
        if now < self.deadline or self.closed:
            return
        if self._drained >= 0:
            self.close()
        elif self._writing:
            self._end(SendStalledError(f"peer read nothing for {self.stream.send_timeout:g}s"))
        else:
            self.server.metrics.error("timeout")
            log.debug("connection from %s timed out", self.peer)
            self.close()

    def close(self) -> None:
        """Close now; a body coroutine in flight is cancelled first, and the socket
        closes when it has let go."""
        if self._task is not None:
            self.closed = True
            self._task.cancel()
            return
        if self._on_close is None:
            return
        self.closed = True
        self._stop_writing()
        self._pause_reading()
        if self._reply is not None:
            self._release_body()
            self._reply.close()
            self._reply = None
        self._unsent = memoryview(b"")
        self._view.release()
        close_socket(self.sock)
        on_close, self._on_close = self._on_close, None
        on_close(self)


async def serve_http(server: ServerState, sock: socket.socket, state: ConnectionState) -> None:
    """Serve HTTP/1.1 on `sock` from a coroutine: the path TLS connections take, since
    their records are read and written through awaitable calls."""
    loop = asyncio.get_running_loop()
    config = server.config
    peer = peer_host(sock)
    # One header deadline, counted from the accept, covers the first byte, the TLS
    # handshake and the first head: a slow handshake earns no second allowance.
    head_deadline: float | None = loop.time() + config.header_timeout
    try:
        async with asyncio.timeout_at(head_deadline):
            stream = await _open_stream(server, sock, loop)
    except TimeoutError:
        server.metrics.error("timeout")
        log.debug("connection from %s timed out before its first request", peer)
        close_socket(sock)
        return
    except PEER_GONE as exc:  # ssl.SSLError is an OSError
        log.debug("TLS handshake with %s failed: %s", peer, exc)
        close_socket(sock)
        return
    except BaseException:  # cancelled by shutdown before the first request
        close_socket(sock)
        raise
    if stream is None:
        await _refuse_plain_http(server, sock, peer)
        return
    # Allocated once the handshake is done: an idle TLS connection costs no buffer.
    parser = RequestParser(server.limits)
    buffer = bytearray(RECV_BUFFER)
    view = memoryview(buffer)
    pending: deque[Request | HttpError] = deque()
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
                log_access(server, peer, None, item.status, len(error_body(item.status)))
                await _close_lingering(stream, buffer)
                return
            state.busy = True
            keep_alive = await _respond(server, stream, item, peer)
            state.busy = False
            if not keep_alive:
                # As on plain TCP: unread requests behind the last response would
                # turn the close into a reset that destroys the response in flight.
                if pending or parser.in_head or _unread_input(sock):
                    await _close_lingering(stream, buffer)
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
) -> SocketStream | None:
    """The connection's stream, TLS handshake done; None when a TLS port received
    plain HTTP. Nothing of TLS (an SSLObject, its buffers) exists before the
    client's first byte, so a connection that sends nothing costs a socket and
    this coroutine only."""
    send_timeout = server.config.send_timeout
    if server.tls is None:
        return SocketStream(sock, loop, send_timeout=send_timeout)
    sock.setblocking(False)
    while True:
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            break
        except BlockingIOError:
            await wait_readable(loop, sock.fileno())
    if not first:
        raise ConnectionResetError("peer closed before the TLS handshake")
    if first[0] in HTTP_METHOD_START:
        return None
    stream = TlsStream(sock, loop, server.tls, send_timeout=send_timeout)
    await stream.handshake()
    return stream


async def _refuse_plain_http(server: ServerState, sock: socket.socket, peer: str) -> None:
    """Answer plain HTTP on the TLS port as nginx does, with a 400 in clear text,
    rather than a handshake failure the client cannot read; then close."""
    loop = asyncio.get_running_loop()
    stream = SocketStream(sock, loop, send_timeout=server.config.send_timeout)
    response = plain_http_on_tls_port()
    try:
        await stream.send_all(response)
        server.metrics.response(400, 0.0)
        log_access(server, peer, None, 400, len(response.partition(b"\r\n\r\n")[2]))
        await _linger(sock, bytearray(4096))
    except PEER_GONE as exc:
        log.debug("connection from %s ended: %s", peer, exc)
    finally:
        close_socket(sock)


async def _respond(server: ServerState, stream: SocketStream, request: Request, peer: str) -> bool:
    """Answer one request; return whether the connection may carry another."""
    sent_before = stream.bytes_sent
    started = stream.loop.time()
    try:
        if server.closing:  # say so, rather than drop the connection unannounced
            request = without_keep_alive(request)
        reply = server.plan(request, server.files)
    except Exception:
        # Nothing is sent yet, so any failure, an OSError from the file system
        # included, is the server's own: a 500, not the silence of a lost peer.
        return await _fail(server, stream, request, peer, sent_before)
    transfer: Transfer | None = None
    strategy_name: str | None = None
    try:
        file = reply.file
        if file is None:
            await stream.send_all(reply.head + reply.body if reply.body else reply.head)
        else:
            strategy = chosen = server.strategy.choose(stream)
            strategy_name = chosen.name
            if isinstance(reply, MultipartReply):  # several ranges: parts go one by one
                strategy = multipart_body(chosen, reply)
            if chosen is not server.strategy and chosen.name == FallbackStrategy.name:
                server.metrics.fallbacks += 1  # auto could not use its zero-copy path
            try:  # what the body needs is taken before the head goes out
                transfer = strategy.start(stream, file, reply.offset, reply.count)
            except Exception as exc:
                if not isinstance(exc, OSError) or exc.errno not in OUT_OF_RESOURCES:
                    return await _fail(server, stream, request, peer, sent_before)
                reply.close()
                reply = error_reply(HttpError(503, str(exc)), request)
                await stream.send_all(reply.head + reply.body)
            else:
                await stream.send_all(reply.head, more=server.config.cork)
                body_start = stream.bytes_sent
                try:
                    if transfer is None:
                        await strategy.send(stream, file, reply.offset, reply.count)
                    else:
                        await pump(transfer)
                finally:
                    server.metrics.sent(strategy.name, stream.bytes_sent - body_start)
    except PEER_GONE:  # the client left: its line says how much of the body went out
        body_sent = max(0, stream.bytes_sent - sent_before - len(reply.head))
        log_access(server, peer, request, reply.status, body_sent, None, strategy_name)
        raise
    except Exception:
        return await _fail(server, stream, request, peer, sent_before, len(reply.head))
    finally:
        if transfer is not None:
            transfer.close()  # a no-op once `pump` closed it
        reply.close()
    body_sent = stream.bytes_sent - sent_before - len(reply.head)
    elapsed = stream.loop.time() - started
    server.metrics.response(reply.status, elapsed)
    log_access(server, peer, request, reply.status, body_sent, elapsed, strategy_name)
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
        log_access(server, peer, request, 500, len(error_body(500)))
    else:
        log_access(server, peer, request, 500, stream.bytes_sent - sent_before - head)
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


def log_access(
    server: ServerState,
    peer: str,
    request: Request | None,
    status: int,
    size: int,
    seconds: float | None = None,
    strategy: str | None = None,
) -> None:
    """One access-log line; a line the log cannot take is counted, never raised."""
    if not server.access_log.write(peer, request, status, size, seconds, strategy):
        server.metrics.access_log_errors += 1


def _unread_input(sock: socket.socket) -> bool:
    """Whether the client's bytes wait unread in the kernel."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing waiting; anything else: gone
        return False


async def _close_lingering(stream: SocketStream, buffer: bytearray) -> None:
    """The last words on a connection, then `_linger`. TLS says close_notify first,
    while the socket can still send it."""
    if isinstance(stream, TlsStream):
        stream.close_notify()
    await _linger(stream.sock, buffer)


async def _linger(sock: socket.socket, buffer: bytearray) -> None:
    """Close the way nginx's lingering_close does: after an error the client may
    still be sending; closing with unread input makes the kernel send a reset that
    can destroy the error response in flight (RFC 9112 9.6). Stop sending, then
    read and discard for a short, capped while. Raw bytes: under TLS too, since
    only what stays unread in the kernel matters."""
    loop = asyncio.get_running_loop()
    try:
        sock.shutdown(socket.SHUT_WR)
        drained = 0
        async with asyncio.timeout(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                try:
                    received = sock.recv_into(buffer)
                except BlockingIOError:
                    received = await loop.sock_recv_into(sock, buffer)
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
