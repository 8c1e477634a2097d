"""A non-blocking socket owned by zcserve, with the few awaitable operations
that copy strategies need.

zcserve owns its sockets instead of using transports because uvloop's transports
own their descriptors (``add_writer`` on them raises) and uvloop has no
``sendfile``. Owning the socket works the same under uvloop and asyncio, and
guarantees ordering: `send_all` returns only once the kernel holds every byte, so
headers always reach the socket before a strategy sends the body.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import TypeAlias

from zcserve.errors import ConfigError, SendStalledError

MSG_MORE = int(getattr(socket, "MSG_MORE", 0))
"""An int, not the socket.MsgFlag enum member: `flags & MSG_MORE` on the enum runs
Python-level Flag.__and__ (a microsecond) on every TLS send."""
Buffer: TypeAlias = bytes | bytearray | memoryview


_OUTQ = struct.pack("i", 0)


def unacknowledged(sock: socket.socket) -> int:
    """Bytes sent on `sock` that the peer has not acknowledged yet (SIOCOUTQ, which
    Linux numbers as TIOCOUTQ); 0 where the kernel cannot tell. A falling count is a
    peer that reads: the kernel signals writability only once half the queue has
    drained, so a slow but steady reader can go longer than a send timeout without
    one."""
    try:
        count: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _OUTQ))[0]
    except OSError:
        return 0
    return count


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class SocketStream:
    """One accepted connection's socket, its loop and its send-stall timeout.

    The connection core reads and writes through `io_calls()` and never asks which
    stream it has: plain TCP hands out the socket's own calls, TLS (`tls.TlsStream`)
    its record layer's, as wrk's sockets share one table of functions."""

    __slots__ = (
        "sock", "loop", "fd", "send_timeout", "bytes_sent", "supports_sendfile", "unflushed"
    )  # fmt: skip

    encrypted = False
    more_input = False
    """Whether received bytes wait in userspace, where no readable event announces
    them (TLS records read but not yet asked for); never on plain TCP."""

    def __init__(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop, *, send_timeout: float
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop
        self.fd = sock.fileno()
        self.send_timeout = send_timeout
        self.bytes_sent = 0
        self.supports_sendfile = self._sendfile_capable()
        """Plain TCP or Unix stream sockets can take sendfile(2); TLS cannot."""
        self.unflushed = memoryview(b"")
        """Bytes accepted by `io_calls`' send that the kernel does not hold yet (TLS
        ciphertext); always empty on plain TCP. `flush` moves them."""

    def _sendfile_capable(self) -> bool:
        return self.sock.type == socket.SOCK_STREAM and not hasattr(self.sock, "getpeercert")

    def io_calls(self) -> tuple[Callable[[memoryview], int], Callable[[Buffer, int], int]]:
        """`(recv_into(buffer), send(data, flags))`, both non-blocking: they raise
        BlockingIOError when nothing can move now; recv_into returns 0 at the end."""
        return self.sock.recv_into, self.sock.send

    def flush(self) -> None:
        """Hand `unflushed` to the kernel; BlockingIOError while it cannot take it all."""

    def shutdown_write(self) -> None:
        """Say the last word (TLS: close_notify), then shut the socket for writing."""
        self.sock.shutdown(socket.SHUT_WR)

    def close_notify(self) -> None:
        """TLS: send close_notify, best effort; nothing on plain TCP."""

    async def wait_writable(self) -> None:
        """Wait until the socket accepts more bytes, or raise `SendStalledError` when
        the peer took nothing for `send_timeout` (see `unacknowledged`)."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_writer(self.fd, _wake, waiter)
        queued = unacknowledged(self.sock)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.send_timeout):
                        await asyncio.shield(waiter)
                    return
                except TimeoutError:
                    now_queued = unacknowledged(self.sock)
                    if now_queued >= queued:
                        raise SendStalledError(
                            f"peer read nothing for {self.send_timeout:g}s"
                        ) from None
                    queued = now_queued  # a slow reader, still reading: wait on
        finally:
            waiter.cancel()
            self.loop.remove_writer(self.fd)

    def send_some(self, data: Buffer) -> int:
        """Send what the kernel takes now; BlockingIOError when it takes nothing."""
        return self.sock.send(data)

    async def drain(self) -> None:
        """Wait until bytes that `send_some` accepted are in the kernel (TLS may hold some)."""
        while self.unflushed:
            try:
                self.flush()
            except BlockingIOError:
                await self.wait_writable()

    async def send_all(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> None:
        """Hand every byte of `data` to the kernel. `more` sets MSG_MORE (cork until the
        next send), so a head and the body that follows leave in the same segments."""
        await self._send_raw(memoryview(data), MSG_MORE if more else 0, counted=True)

    async def _send_raw(self, view: memoryview, flags: int, *, counted: bool = False) -> None:
        """Send all of `view`; `counted` adds each send's bytes to `bytes_sent` as it
        goes, so a peer that leaves mid-body is logged with what it was sent."""
        send = self.sock.send
        while view:
            try:
                sent = send(view, flags)
            except BlockingIOError:
                await self.wait_writable()
                continue
            if counted:
                self.bytes_sent += sent
            view = view[sent:]


def bind(
    host: str,
    port: int,
    backlog: int,
    *,
    reuse_port: bool = False,
    listen: bool = True,
    purpose: str = "",
) -> socket.socket:
    """A non-blocking listening socket, or `ConfigError` saying why not. Without
    `listen` the socket only holds the port (the supervisor's placeholder);
    `purpose` ("metrics") names the listener in the error."""
    what = f"{purpose} host" if purpose else "host"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {what} {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"for {purpose} on" if purpose else "on"
        raise ConfigError(f"cannot listen {where} {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
