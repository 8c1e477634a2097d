"""TLS on a socket zcserve owns: OpenSSL reads and writes the descriptor itself,
as nginx's does, and the core's raw calls (peek, linger, shutdown) keep the plain
socket.

TLS is a detail below the connection core: `TlsHandshake` is a short first step
that hands a ready `TlsStream` on, and the stream's `io_calls` decrypt and encrypt
where plain TCP's move bytes. A transport would take the socket away from us (and
uvloop's cannot be waited on for writability), so the record layer runs here, on
the `_ssl` object that `ssl.SSLSocket` itself wraps around a descriptor. No
ciphertext passes through Python: memory BIOs cost two copies of every byte and
about 1 µs per request (BIOs: BENCHMARKS 6b, 13, 15). Encryption happens in
userspace, so no zero-copy path can carry the body: `supports_sendfile` is False
and `auto` picks the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from zcserve.server.sockio import MSG_MORE, Buffer, SocketStream

log = logging.getLogger("zcserve")

FLUSH_BYTES = 64 * 1024
"""Most plaintext encrypted per write: what a connection may hold when the socket
is full (OpenSSL wants the same bytes again, `unflushed`)."""
HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""First bytes of a plain HTTP request; a TLS ClientHello starts with 0x16."""
_EMPTY = memoryview(b"")


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context for HTTP/1.1 (ALPN `http/1.1`), TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # As nginx: a client's renegotiation would make a read wait to write, and a
    # client that closes without close_notify (most, between requests) has ended,
    # not attacked: OpenSSL 3 would answer its FIN with a fatal alert.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_IGNORE_UNEXPECTED_EOF
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class TlsStream(SocketStream):
    """A `SocketStream` whose bytes are TLS records; `TlsHandshake` makes one.

    Built once the client has sent its first byte: the OpenSSL connection is most of
    what a TLS connection costs."""

    __slots__ = ("_tls", "_read", "_write", "_notified", "_corked", "more_input", "wants_write")

    encrypted = True

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        *,
        send_timeout: float,
    ) -> None:
        super().__init__(sock, loop, send_timeout=send_timeout)
        # What `SSLContext.wrap_socket` builds inside its SSLSocket, without the
        # SSLSocket: that would take the descriptor over, and with it the plain
        # calls (MSG_PEEK, the lingering discard) the core makes on the socket.
        self._tls = context._wrap_socket(sock, True, None)  # type: ignore[attr-defined]
        self._read = self._tls.read
        self._write = self._tls.write
        self._notified = False
        self._corked = b""
        """A head's plaintext, held back until its body comes (see `send_now`)."""
        self.more_input = False
        self.wants_write = False
        """The handshake waits for the socket to take its next flight."""

    def _sendfile_capable(self) -> bool:
        return False

    @property
    def alpn_protocol(self) -> str | None:
        protocol: str | None = self._tls.selected_alpn_protocol()
        return protocol

    # the handshake ------------------------------------------------------------------

    def handshake_step(self) -> bool:
        """Run the handshake as far as the socket allows; True once it is complete.
        Sets `wants_write` when it waits to send. Raises ssl.SSLError, or
        ConnectionResetError at EOF."""
        self.wants_write = False
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLWantWriteError:
            self.wants_write = True
            return False
        except ssl.SSLEOFError:
            raise ConnectionResetError("peer closed during the TLS handshake") from None
        return True

    # the core's calls ---------------------------------------------------------------

    def io_calls(self) -> tuple[Callable[[memoryview], int], Callable[[Buffer, int], int]]:
        return self.recv_into_now, self.send_now

    def recv_into_now(self, buffer: memoryview) -> int:
        """Plaintext into `buffer`: at most one record's, which OpenSSL reads from the
        socket; 0 at the end; BlockingIOError while no whole record waits. Sets
        `more_input` when part of a record is left for the next call."""
        try:
            # With a buffer, read() fills it and returns a count.
            count: int = self._read(len(buffer), buffer)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.more_input = False
            return 0
        # Without read-ahead OpenSSL takes one record at a time from the socket: what
        # it holds is the rest of this one, which no readable event announces.
        self.more_input = count == len(buffer) and self._tls.pending() > 0
        return count

    def send_now(self, data: Buffer, flags: int = 0) -> int:
        """Encrypt and send up to FLUSH_BYTES of `data`; return how much was taken. A
        write the socket could not finish stays in `unflushed`, which OpenSSL wants
        again before anything else. A head sent with MSG_MORE waits as plaintext
        and is encrypted with the body that follows: one record for a small
        response."""
        if self.unflushed:
            self.flush()  # BlockingIOError: still full, nothing taken
        if flags & MSG_MORE and not self._corked and len(data) < FLUSH_BYTES:
            self._corked = bytes(data)
            return len(data)
        view = data if len(data) <= FLUSH_BYTES else memoryview(data)[:FLUSH_BYTES]
        self._write_or_keep(view)
        return len(view)

    send_some = send_now

    def _write_or_keep(self, plaintext: Buffer) -> None:
        """Encrypt and send `plaintext`, after the head held back for it."""
        corked = self._corked
        if corked:
            self._corked = b""
            plaintext = corked + plaintext
        try:
            self._write(plaintext)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            # OpenSSL keeps the records it made; it wants these bytes again, and the
            # caller's buffer is reused once they count as taken.
            self.unflushed = memoryview(bytes(plaintext))

    def flush(self) -> None:
        if self._corked:  # a head whose body never came (the transfer failed)
            self._write_or_keep(_EMPTY)
        if self.unflushed:
            try:
                self._write(self.unflushed)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                raise BlockingIOError from None
            self.unflushed = _EMPTY

    # awaited sends (the strategies that run as coroutines) ------------------------

    async def send_all(self, data: Buffer, *, more: bool = False) -> None:
        view = memoryview(data)
        written = 0  # counted in `bytes_sent` once in the kernel, as plain TCP counts
        for start in range(0, view.nbytes, FLUSH_BYTES):
            await self.drain()
            self.bytes_sent += written
            piece = view[start : start + FLUSH_BYTES]
            self._write_or_keep(piece)
            written = piece.nbytes
        await self.drain()
        self.bytes_sent += written

    # the end ------------------------------------------------------------------------

    def shutdown_write(self) -> None:
        self.close_notify()
        super().shutdown_write()

    def close_notify(self) -> None:
        """Send TLS close_notify before the socket closes: best effort, never waiting,
        so a peer that stopped reading cannot hold the close. Said once, and only
        after every record before it: never in the middle of a held write."""
        if self._notified:
            return
        self._notified = True
        try:
            self.flush()
            self._tls.shutdown()
        except (OSError, ValueError):  # want-read: the peer's close_notify is not awaited
            pass


class TlsHandshake:
    """The first step of a TLS connection, driven by loop callbacks: peek at the
    first byte, then run the handshake; hand the ready stream on (`on_ready`), or
    the socket when the client spoke plain HTTP (`on_plain`). It sits in the
    server's registry like a connection, with the header deadline of the accept:
    a slow handshake earns no second allowance."""

    __slots__ = (
        "sock", "loop", "fd", "deadline", "peer", "_context", "_send_timeout",
        "_stream", "_on_ready", "_on_plain", "_on_close", "_count_error", "_reading",
        "_writing",
    )  # fmt: skip

    busy = False  # shutdown closes a handshake at once

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        *,
        deadline: float,
        send_timeout: float,
        peer: str,
        on_ready: Callable[[TlsHandshake, TlsStream], object],
        on_plain: Callable[[TlsHandshake], object],
        on_close: Callable[[TlsHandshake], object],
        count_error: Callable[[str], object],
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop
        self.fd = sock.fileno()
        self.deadline = deadline
        self.peer = peer
        self._context = context
        self._send_timeout = send_timeout
        self._stream: TlsStream | None = None
        self._on_ready = on_ready
        self._on_plain = on_plain
        self._on_close: Callable[[TlsHandshake], object] | None = on_close
        self._count_error = count_error
        self._reading = False
        self._writing = False

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._on_readable)
        self._reading = True

    def _on_readable(self) -> None:
        try:
            if self._stream is None:
                first = self.sock.recv(1, socket.MSG_PEEK)
                if not first:
                    raise ConnectionResetError("peer closed before the TLS handshake")
                if first[0] in HTTP_METHOD_START:
                    self._let_go()
                    self._on_plain(self)
                    return
                # Nothing of TLS exists before the client's first byte.
                self._stream = TlsStream(
                    self.sock, self.loop, self._context, send_timeout=self._send_timeout
                )
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        self._step()

    def _on_writable(self) -> None:
        self._step()

    def _step(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            done = stream.handshake_step()
        except OSError as exc:  # ssl.SSLError is an OSError
            self._fail(exc)
            return
        if stream.wants_write != self._writing:
            if stream.wants_write:
                self.loop.add_writer(self.fd, self._on_writable)
            else:
                self.loop.remove_writer(self.fd)
            self._writing = stream.wants_write
        if done:
            self._ready()

    def _ready(self) -> None:
        stream = self._stream
        assert stream is not None
        self._let_go()
        self._on_ready(self, stream)

    def _let_go(self) -> None:
        """Stop watching the socket: what follows owns it."""
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        self._on_close = None

    def _fail(self, exc: BaseException) -> None:
        log.debug("TLS handshake with %s failed: %s", self.peer, exc)
        self.close()

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep: close the handshake if it is past due."""
        if now < self.deadline or self._on_close is None:
            return
        self._count_error("timeout")
        log.debug("connection from %s timed out before its first request", self.peer)
        self.close()

    def close(self) -> None:
        on_close = self._on_close
        if on_close is None:
            return
        self._let_go()
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass
        on_close(self)
