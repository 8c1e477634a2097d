"""TLS on a socket zcserve owns: OpenSSL through memory BIOs, bytes through the
same non-blocking socket calls as plain TCP.

TLS is a detail below the connection core: `TlsHandshake` is a short first step
that hands a ready `TlsStream` on, and the stream's `io_calls` encrypt and decrypt
where plain TCP's move bytes. A transport would take the socket away from us (and
uvloop's cannot be waited on for writability), so the record layer runs here on
`ssl.SSLObject`. Encryption happens in userspace, so no zero-copy path can carry
the body: `supports_sendfile` is False and `auto` picks the fallback.
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
"""Most plaintext encrypted per send: the ciphertext a connection may hold unsent."""
RECEIVE_BYTES = 64 * 1024
"""Most ciphertext read per call. Read into a new bytes object that lives only until
the incoming BIO has copied it: a resident buffer per connection would cost its
size on every idle one."""
HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""First bytes of a plain HTTP request; a TLS ClientHello starts with 0x16."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context for HTTP/1.1 (ALPN `http/1.1`), TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class TlsStream(SocketStream):
    """A `SocketStream` whose bytes are TLS records; `TlsHandshake` makes one.

    Built once the client has sent its first byte: the SSLObject and its buffers
    are most of what a TLS connection costs."""

    __slots__ = ("_incoming", "_outgoing", "_tls", "_notified", "_corked", "more_input")

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
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._notified = False
        self._corked = b""
        """A head's plaintext, held back until its body comes (see `send_now`)."""
        self.more_input = False

    def _sendfile_capable(self) -> bool:
        return False

    @property
    def alpn_protocol(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    # the handshake ------------------------------------------------------------------

    def handshake_step(self) -> bool:
        """Feed what the socket holds to the handshake; True once it is complete.
        Raises BlockingIOError-free: ssl.SSLError, or ConnectionResetError at EOF."""
        try:
            received = self.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            received = None
        if received is not None:
            if not received:
                raise ConnectionResetError("peer closed during the TLS handshake")
            self._incoming.write(received)
        try:
            self._tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        self._queue_output()
        self.more_input = done and self._incoming.pending > 0  # the first request, early
        return done

    # the core's calls ---------------------------------------------------------------

    def io_calls(self) -> tuple[Callable[[memoryview], int], Callable[[Buffer, int], int]]:
        return self.recv_into_now, self.send_now

    def recv_into_now(self, buffer: memoryview) -> int:
        """Plaintext into `buffer`: as much as one record layer read gives, reading
        ciphertext from the socket first when none waits (an SSLWantReadError costs
        more than the check); 0 at the end. Sets `more_input`.

        The ciphertext is received into `buffer` itself: the incoming BIO copies it
        before OpenSSL writes plaintext there, and no bytes object is made per read."""
        tls, incoming = self._tls, self._incoming
        if not self.more_input:
            # `_receive_into`, inlined: once per TLS request.
            received = self.sock.recv_into(buffer)  # BlockingIOError: nothing yet
            if received:
                incoming.write(buffer[:received])
            else:
                incoming.write_eof()
            if self._outgoing.pending:  # a key update or a ticket to answer
                self._queue_output()
        while True:
            try:
                # With a buffer, read() fills it and returns a count (typeshed: bytes).
                count: int = tls.read(len(buffer), buffer)  # type: ignore[assignment]
            except ssl.SSLWantReadError:  # part of a record: read on
                self.more_input = False
                self._receive_into(buffer)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.more_input = False
                return 0
            # A full buffer may leave plaintext in OpenSSL; whole records may wait
            # in the incoming BIO. Either way no readable event will announce them.
            self.more_input = count == len(buffer) or incoming.pending > 0
            return count

    def _receive_into(self, buffer: memoryview) -> None:
        received = self.sock.recv_into(buffer)  # BlockingIOError: wait
        if received:
            self._incoming.write(buffer[:received])
        else:
            self._incoming.write_eof()

    def send_now(self, data: Buffer, flags: int = 0) -> int:
        """Encrypt up to FLUSH_BYTES of `data`; return how much was taken. Ciphertext
        the socket does not take now stays in `unflushed` and goes first on the next
        call. A head sent with MSG_MORE waits as plaintext and is encrypted with the
        body that follows: one record and one send for a small response."""
        if self.unflushed:
            self.flush()  # BlockingIOError: still full, nothing taken
        if flags & MSG_MORE and not self._corked and len(data) < FLUSH_BYTES:
            self._corked = bytes(data)
            return len(data)
        # `_encrypt` and `_send_what_fits`, inlined: this runs once per TLS response,
        # and the three calls cost about 1 µs of its 17 (request_cost.py --tls).
        view = data if len(data) <= FLUSH_BYTES else memoryview(data)[:FLUSH_BYTES]
        corked = self._corked
        if corked:
            self._corked = b""
            self._tls.write(corked + view)
        else:
            self._tls.write(view)
        records = self._outgoing.read()  # empty before: flushed above
        try:
            sent = self.sock.send(records)
        except BlockingIOError:
            sent = 0
        if sent < len(records):  # the socket is full: the rest goes first next time
            self.unflushed = memoryview(records)[sent:]
        return len(view)

    send_some = send_now

    def _encrypt(self, view: memoryview) -> None:
        corked = self._corked
        if corked:
            self._corked = b""
            self._tls.write(corked + view)
        else:
            self._tls.write(view)
        self._take_output()

    def _take_output(self) -> None:
        """Append what OpenSSL wrote (records, alerts, tickets) to `unflushed`."""
        more = self._outgoing.read()
        if more:
            self.unflushed = memoryview(bytes(self.unflushed) + more if self.unflushed else more)

    def flush(self) -> None:
        if self._corked:  # a head whose body never came (the transfer failed)
            self._encrypt(memoryview(b""))
        unflushed, send = self.unflushed, self.sock.send
        while unflushed:
            unflushed = unflushed[send(unflushed) :]  # BlockingIOError: full
            self.unflushed = unflushed

    def _queue_output(self) -> None:
        """Move what OpenSSL wrote to `unflushed`, and send what the socket takes."""
        self._take_output()
        self._send_what_fits()

    def _send_what_fits(self) -> None:
        try:
            self.flush()
        except BlockingIOError:  # the rest goes first on the next send, or in `flush`
            pass

    # awaited sends (the strategies that run as coroutines) ------------------------

    async def send_all(self, data: Buffer, *, more: bool = False) -> None:
        view = memoryview(data)
        for start in range(0, view.nbytes, FLUSH_BYTES):
            await self.drain()
            self._encrypt(view[start : start + FLUSH_BYTES])
        await self.drain()
        self.bytes_sent += view.nbytes

    # the end ------------------------------------------------------------------------

    def shutdown_write(self) -> None:
        self.close_notify()
        super().shutdown_write()

    def close_notify(self) -> None:
        """Send TLS close_notify before the socket closes: best effort, never waiting,
        so a peer that stopped reading cannot hold the close. Said once."""
        if self._notified:
            return
        self._notified = True
        try:
            self._tls.unwrap()
        except ssl.SSLError:  # want-read: the peer's close_notify is not awaited
            pass
        pending = bytes(self.unflushed) + self._outgoing.read()
        self.unflushed = memoryview(b"")
        if pending:
            try:
                self.sock.send(pending)
            except OSError:
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
        "_writing", "_complete",
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
        self._complete = False

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
            done = self._stream.handshake_step()
        except BlockingIOError:
            return
        except OSError as exc:  # ssl.SSLError is an OSError
            self._fail(exc)
            return
        if self._stream.unflushed and not self._writing:
            self.loop.add_writer(self.fd, self._on_writable)
            self._writing = True
        self._complete = done
        if done and not self._stream.unflushed:
            self._ready()

    def _on_writable(self) -> None:
        assert self._stream is not None
        try:
            self._stream.flush()
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        self.loop.remove_writer(self.fd)
        self._writing = False
        if self._complete:
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
