"""Copy strategies: the one thing that differs between benchmarks.

Each strategy moves exactly `count` bytes of an open file, from `offset`, to a
connected socket, or raises. Everything around it (parsing, headers, ranges,
errors) is shared, so comparing two strategies measures the copy path alone.

| strategy  | per chunk                         | copies of each byte           |
|-----------|-----------------------------------|-------------------------------|
| readwrite | executor read() -> new bytes, send | disk->page cache->user->socket |
| fallback  | preadv into a reused buffer, send | page cache->user->socket       |
| sendfile  | sendfile(2)                       | page cache->socket (in-kernel) |
| mmap      | send(2) from a mapping of the file | page cache->socket (by send)  |
| splice    | splice(2) file->pipe, pipe->socket | page cache->socket (in-kernel) |
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, get_args

import aiofiles

from zcserve.errors import FileShrankError, TransferError
from zcserve.server.files import OpenedFile
from zcserve.server.sockio import SocketStream

StrategyName = Literal["auto", "sendfile", "readwrite", "fallback", "mmap", "splice"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)

DEFAULT_CHUNK = 256 * 1024
"""Userspace copy size: asyncio's and aiohttp's fallback chunk (256 KiB)."""
SENDFILE_MAX_CHUNK = 2 * 1024 * 1024
"""Largest single sendfile(2): nginx's sendfile_max_chunk default (2m)."""
TURN_BYTES = 4 * 1024 * 1024
"""Bytes one connection may send before yielding to the loop, so a fast reader of
a huge file cannot starve other connections."""


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """Tuning shared by every strategy; each reads what applies to it."""

    chunk_size: int | None = None
    """Userspace buffer, mmap slice or pipe size; None: each strategy's tuned default."""
    sendfile_chunk: int = SENDFILE_MAX_CHUNK


class CopyStrategy(Protocol):
    """Moves `count` bytes of `file` starting at `offset` to `stream`, or raises.

    Raises `FileShrankError` if the file ends early, `SendStalledError` if the
    peer stops reading, `OSError` if the connection breaks. `count` is > 0.
    """

    name: ClassVar[str]

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        """Copy the bytes; return only when the kernel holds all of them."""


class SendfileStrategy:
    """Zero-copy: sendfile(2) moves page-cache pages to the socket inside the kernel.

    Under asyncio this is `loop.sock_sendfile` (native os.sendfile path, no
    fallback); uvloop does not implement it, so there zcserve drives os.sendfile
    on the non-blocking socket itself and waits for writability on EAGAIN.
    """

    name: ClassVar[str] = "sendfile"

    def __init__(self, options: CopyOptions) -> None:
        self.max_chunk = options.sendfile_chunk

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        if _has_native_sock_sendfile(stream.loop):
            await self._send_native(stream, file, offset, count)
        else:
            await self._send_driven(stream, file, offset, count)

    async def _send_driven(
        self, stream: SocketStream, file: OpenedFile, offset: int, count: int
    ) -> None:
        sock_fd, file_fd, chunk = stream.fd, file.fd, self.max_chunk
        end = offset + count
        turn = 0
        while offset < end:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, min(chunk, end - offset))
            except BlockingIOError:
                turn = 0
                await stream.wait_writable()
                continue
            if sent == 0:
                raise FileShrankError(f"{file.name}: file ended at {offset}, expected {end}")
            offset += sent
            stream.bytes_sent += sent
            turn += sent
            if turn >= TURN_BYTES:
                turn = 0
                await asyncio.sleep(0)

    async def _send_native(
        self, stream: SocketStream, file: OpenedFile, offset: int, count: int
    ) -> None:
        loop = stream.loop
        # sock_sendfile reports no progress inside a call, so the stall timeout
        # bounds each call; a peer that takes longer than that for one chunk is
        # treated as stalled, as it would be by the driven path between writes.
        with open(file.fd, "rb", buffering=0, closefd=False) as fileobj:
            end = offset + count
            while offset < end:
                size = min(self.max_chunk, end - offset)
                try:
                    async with asyncio.timeout(stream.send_timeout):
                        sent = await loop.sock_sendfile(
                            stream.sock, fileobj, offset, size, fallback=False
                        )
                except asyncio.SendfileNotAvailableError:
                    # asyncio (3.11 unix_events.py) reports an OSError from the first
                    # os.sendfile of a call, a reset peer's included, as "not available".
                    # An empty send raises the real error if the peer left.
                    stream.sock.send(b"")
                    raise TransferError(f"{file.name}: sendfile failed mid-transfer") from None
                offset += sent
                stream.bytes_sent += sent
                if sent < size:
                    raise FileShrankError(f"{file.name}: file ended at {offset}, expected {end}")


def _has_native_sock_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """asyncio's Unix selector loop implements sock_sendfile with os.sendfile; uvloop
    raises NotImplementedError, so it gets the driven path."""
    return isinstance(loop, asyncio.SelectorEventLoop) and hasattr(os, "sendfile")


class ReadWriteStrategy:
    """The classic path: read a chunk into a new userspace buffer (aiofiles, one
    thread-pool hop per read), write it out, repeat. One chunk in memory at a time."""

    name: ClassVar[str] = "readwrite"

    def __init__(self, options: CopyOptions) -> None:
        self.chunk_size = options.chunk_size or DEFAULT_CHUNK

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        # The descriptor may be shared (open-file cache) and this path moves a file
        # offset, so read through a description of its own, as the classic server's
        # own open() would.
        async with aiofiles.open(_own_description(file.fd), "rb", buffering=0) as afile:
            await afile.seek(offset)
            left = count
            while left:
                data = await afile.read(min(self.chunk_size, left))
                if not data:
                    raise FileShrankError(f"{file.name}: file ended {left} bytes early")
                await stream.send_all(data)
                left -= len(data)


def _own_description(fd: int) -> str | int:
    """A path that opens the same file anew (with its own offset), where /proc has one."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else os.dup(fd)


class FallbackStrategy:
    """The userspace fallback: preadv into a reused buffer, send from a memoryview.

    No allocation per chunk; buffers come from a small pool so memory stays
    bounded at one chunk per active transfer. Reads are issued inline, like
    sendfile's: both block only on a page-cache miss.
    """

    name: ClassVar[str] = "fallback"
    POOL_SIZE: ClassVar[int] = 64

    def __init__(self, options: CopyOptions) -> None:
        self.chunk_size = options.chunk_size or DEFAULT_CHUNK
        self._pool: list[bytearray] = []

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        buffer = self._pool.pop() if self._pool else bytearray(self.chunk_size)
        try:
            view = memoryview(buffer)
            end = offset + count
            turn = 0
            while offset < end:
                want = min(self.chunk_size, end - offset)
                got = os.preadv(file.fd, [view[:want]], offset)
                if got == 0:
                    raise FileShrankError(f"{file.name}: file ended at {offset}, expected {end}")
                await stream.send_all(view[:got])
                offset += got
                turn += got
                if turn >= TURN_BYTES:
                    turn = 0
                    await asyncio.sleep(0)
            view.release()
        finally:
            if len(self._pool) < self.POOL_SIZE:
                self._pool.append(buffer)


class MmapStrategy:
    """Map the file and send(2) from the mapping in slices: the kernel copies each
    byte once, straight from the page cache into the socket buffer.

    Python never reads the mapped bytes: a page past a truncated end would raise
    SIGBUS in userspace, while handed to send(2) it fails with EFAULT, which is
    reported as `FileShrankError`.
    """

    name: ClassVar[str] = "mmap"
    DEFAULT_CHUNK: ClassVar[int] = 1024 * 1024

    def __init__(self, options: CopyOptions) -> None:
        self.chunk_size = options.chunk_size or self.DEFAULT_CHUNK

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(
                file.fd, offset - start + count, access=mmap.ACCESS_READ, offset=start
            )
        except ValueError:  # the file is already shorter than offset + count
            raise FileShrankError(f"{file.name}: file shorter than {offset + count}") from None
        view = memoryview(mapping)
        send = stream.sock.send
        try:
            position, end = offset - start, offset - start + count
            turn = 0
            while position < end:
                piece = view[position : min(position + self.chunk_size, end)]
                try:
                    sent = send(piece)
                except BlockingIOError:
                    turn = 0
                    await stream.wait_writable()
                    continue
                except OSError as exc:
                    if exc.errno == errno.EFAULT:
                        raise FileShrankError(f"{file.name}: file shrank while mapped") from None
                    raise
                finally:
                    # No view may outlive the loop, or the mapping cannot be closed.
                    piece.release()
                position += sent
                stream.bytes_sent += sent
                turn += sent
                if turn >= TURN_BYTES:
                    turn = 0
                    await asyncio.sleep(0)
        finally:
            view.release()
            mapping.close()


class SpliceStrategy:
    """splice(2) the file into a pipe, then the pipe into the socket: page references
    move, bytes do not. Two syscalls per chunk where sendfile needs one; pipes are
    sized with F_SETPIPE_SZ and reused."""

    name: ClassVar[str] = "splice"
    DEFAULT_CHUNK: ClassVar[int] = 1024 * 1024
    POOL_SIZE: ClassVar[int] = 64
    FLAGS: ClassVar[int] = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

    def __init__(self, options: CopyOptions) -> None:
        self.chunk_size = options.chunk_size or self.DEFAULT_CHUNK
        self._pipes: list[tuple[int, int, int]] = []

    def _pipe(self) -> tuple[int, int, int]:
        if self._pipes:
            return self._pipes.pop()
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, self.chunk_size)
        except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
            size = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        return read_end, write_end, size

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        read_end, write_end, pipe_size = self._pipe()
        clean = False
        try:
            await self._copy(stream, file, offset, count, read_end, write_end, pipe_size)
            clean = True
        finally:
            if clean and len(self._pipes) < self.POOL_SIZE:
                self._pipes.append((read_end, write_end, pipe_size))
            else:  # bytes may be left in the pipe: never reuse it
                os.close(read_end)
                os.close(write_end)

    async def _copy(
        self,
        stream: SocketStream,
        file: OpenedFile,
        offset: int,
        count: int,
        read_end: int,
        write_end: int,
        pipe_size: int,
    ) -> None:
        splice, flags, sock_fd = os.splice, self.FLAGS, stream.fd
        end = offset + count
        in_pipe = 0
        left = count
        turn = 0
        while left:
            if in_pipe == 0:
                in_pipe = splice(
                    file.fd, write_end, min(pipe_size, end - offset), offset, None, flags
                )
                if in_pipe == 0:
                    raise FileShrankError(f"{file.name}: file ended at {offset}, expected {end}")
                offset += in_pipe
            try:
                moved = splice(read_end, sock_fd, in_pipe, None, None, flags)
            except BlockingIOError:
                turn = 0
                await stream.wait_writable()
                continue
            in_pipe -= moved
            left -= moved
            stream.bytes_sent += moved
            turn += moved
            if turn >= TURN_BYTES:
                turn = 0
                await asyncio.sleep(0)


class AutoStrategy:
    """sendfile where the socket and file allow it, otherwise the fallback, per response."""

    name: ClassVar[str] = "auto"

    def __init__(self, options: CopyOptions) -> None:
        self.zero_copy = SendfileStrategy(options)
        self.fallback = FallbackStrategy(options)

    def choose(self, stream: SocketStream) -> CopyStrategy:
        if hasattr(os, "sendfile") and stream.supports_sendfile:
            return self.zero_copy
        return self.fallback

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        await self.choose(stream).send(stream, file, offset, count)


StrategyClass = type[
    SendfileStrategy
    | ReadWriteStrategy
    | FallbackStrategy
    | MmapStrategy
    | SpliceStrategy
    | AutoStrategy
]

STRATEGIES: dict[str, StrategyClass] = {
    cls.name: cls
    for cls in (
        AutoStrategy,
        SendfileStrategy,
        ReadWriteStrategy,
        FallbackStrategy,
        MmapStrategy,
        SpliceStrategy,
    )
}
"""Every strategy by name; the CLI's choices come from here."""


def make_strategy(name: str, options: CopyOptions | None = None) -> CopyStrategy:
    """The strategy registered under `name`."""
    return STRATEGIES[name](options or CopyOptions())
