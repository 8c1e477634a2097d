"""TLS on a socket zcserve owns: OpenSSL through memory BIOs, bytes through the
same non-blocking socket calls as plain TCP.

asyncio's sock_* calls refuse SSLSockets, and a transport would take the socket
away from us, so the TLS record layer runs here on `ssl.SSLObject`. Encryption
happens in userspace, so no zero-copy path can carry the body: `supports_sendfile`
is False and `auto` picks the fallback.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from zcserve.server.sockio import SocketStream

FLUSH_BYTES = 256 * 1024
"""Plaintext encrypted before the ciphertext is flushed to the socket."""
RECEIVE_BYTES = 64 * 1024
"""Most ciphertext read per call. Read into a new bytes object that lives only until
the incoming BIO has copied it: a resident buffer per connection would cost its
size on every idle one."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context for HTTP/1.1 (ALPN `http/1.1`), TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class TlsStream(SocketStream):
    """A `SocketStream` whose bytes are TLS records. Call `handshake()` first.

    Build one once the client has sent its first byte: the SSLObject and its
    buffers are most of what a TLS connection costs."""

    __slots__ = ("_incoming", "_outgoing", "_tls", "_unsent", "_notified")

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
        self._unsent = memoryview(b"")
        """Ciphertext `send_some` encrypted that the kernel has not taken yet."""
        self._notified = False

    def _sendfile_capable(self) -> bool:
        return False

    @property
    def alpn_protocol(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    async def handshake(self) -> None:
        """Complete the TLS handshake, or raise `ssl.SSLError` / `ConnectionError`."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("peer closed during the TLS handshake") from None
        await self._flush()

    async def _fill(self) -> bool:
        received = await self.loop.sock_recv(self.sock, RECEIVE_BYTES)
        if not received:
            self._incoming.write_eof()
            return False
        self._incoming.write(received)
        return True

    async def _flush(self) -> None:
        await self.drain()
        pending = self._outgoing.read()
        if pending:
            await self._send_raw(memoryview(pending), 0)

    def recv_ready(self, buffer: bytearray | memoryview) -> int | None:
        # Decrypted bytes may already sit in the TLS buffer; `recv_into` handles both.
        return None

    async def recv_into(self, buffer: bytearray | memoryview) -> int:
        while True:
            try:
                # With a buffer, read() fills it and returns a count (typeshed says bytes).
                count: int = self._tls.read(len(buffer), buffer)  # type: ignore[assignment]
                return count
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    return 0
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0

    def send_some(self, data: memoryview) -> int:
        """Encrypt up to FLUSH_BYTES of `data` and push what the socket takes now;
        ciphertext it leaves behind goes out first on the next call or in `drain`."""
        self._push()
        accepted = self._tls.write(data[:FLUSH_BYTES])
        self._unsent = memoryview(self._outgoing.read())
        try:
            self._push()
        except BlockingIOError:
            pass
        return accepted

    def _push(self) -> None:
        while self._unsent:
            sent = self.sock.send(self._unsent)
            self._unsent = self._unsent[sent:]

    async def drain(self) -> None:
        while self._unsent:
            try:
                self._push()
            except BlockingIOError:
                await self.wait_writable()

    async def send_all(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> None:
        view = memoryview(data)
        for start in range(0, view.nbytes, FLUSH_BYTES):
            self._tls.write(view[start : start + FLUSH_BYTES])
            await self._flush()
        self.bytes_sent += view.nbytes

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
        pending = self._outgoing.read()
        if pending:
            try:
                self.sock.send(pending)
            except OSError:
                pass
