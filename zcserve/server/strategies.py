"""Copy strategies: the one thing that differs between benchmarks.

Each strategy moves exactly `count` bytes of an open file, from `offset`, to a
connected socket, or raises. Everything around it (parsing, headers, ranges,
errors) is shared, so comparing two strategies measures the copy path alone.

| strategy  | per chunk                         | copies of each byte           |
|-----------|-----------------------------------|-------------------------------|
| readwrite | executor readinto() a reused buffer, send | disk->page cache->user->socket |
| readall   | one read() of the whole range, send | as readwrite, all of it at once |
| fallback  | preadv into a reused buffer, send | page cache->user->socket       |
| sendfile  | sendfile(2)                       | page cache->socket (in-kernel) |
| mmap      | send(2) from a mapping of the file | page cache->socket (by send)  |
| splice    | splice(2) file->pipe, pipe->socket | page cache->socket (in-kernel) |

The copy loop (count the bytes, check for a shrunken file, yield to the loop every
`TURN_BYTES`) is written once, in `Transfer.advance`; a strategy supplies only its
`Step`: one non-blocking move of what the socket takes now. The connection steps a
transfer from loop callbacks; `pump` awaits one.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import fcntl
import functools
import mmap
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, get_args

import aiofiles

from zcserve.errors import FileShrankError, TransferError
from zcserve.server.files import OpenedFile
from zcserve.server.sockio import SocketStream

StrategyName = Literal[
    "auto", "sendfile", "readwrite", "readall", "fallback", "mmap", "splice", "memory"
]
STRATEGY_NAMES: tuple[StrategyName, ...] = get_args(StrategyName)

DEFAULT_CHUNK = 256 * 1024
"""Userspace copy size: asyncio's and aiohttp's fallback chunk (256 KiB)."""
SENDFILE_MAX_CHUNK = 2 * 1024 * 1024
"""Largest single sendfile(2): nginx's sendfile_max_chunk default (2m)."""
TURN_BYTES = 4 * 1024 * 1024
"""Bytes one connection may send before yielding to the loop, so a fast reader of
a huge file cannot starve other connections."""
SMALL_BODY = 16 * 1024
"""Bodies up to this size the fallback reads whole per step (one TLS record's worth)."""
READALL_MAX = 2 * 1024**3
"""Largest range `readall` holds in memory (2 GiB): past it, 503 rather than a
server that swaps or is killed for one request."""
READALL_BUDGET_CAP = 4 * 1024**3
"""The default budget of all readall bodies at once is a quarter of RAM, up to this."""


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """Tuning shared by every strategy; each reads what applies to it."""

    chunk_size: int | None = None
    """Userspace buffer, mmap slice or pipe size; None: each strategy's tuned default."""
    sendfile_chunk: int = SENDFILE_MAX_CHUNK
    readall_max: int = READALL_MAX
    readall_budget: int | None = None
    """Bytes readall may hold at once over all its requests; None: `default_readall_budget`."""


class Progress(enum.Enum):
    """Where one `Transfer.advance` left a transfer."""

    DONE = "done"
    WAIT = "wait"
    """The socket is full: call again once it is writable."""
    YIELD = "yield"
    """`TURN_BYTES` moved: let the loop run other connections, then call again."""
    HANDOFF = "handoff"
    """The rest goes through `Transfer.rest`, a coroutine (asyncio's sock_sendfile)."""


_DONE, _WAIT, _YIELD, _HANDOFF = Progress.DONE, Progress.WAIT, Progress.YIELD, Progress.HANDOFF

Step = Callable[[int, int], int]
"""`step(offset, size)`: move up to `size` bytes from file `offset` to the socket
now; return how many reached the socket, 0 if the file ended there. Raises
BlockingIOError when the socket is full."""


class Transfer:
    """One body on its way, moved in non-blocking steps. The copy loop (byte
    accounting, the fairness turn, the end-of-file check) is written here once;
    a strategy supplies only its `Step`. Driven from loop callbacks by the
    connection, or awaited by `pump`."""

    __slots__ = (
        "stream", "file", "offset", "end", "rest", "_step", "_release", "_largest"
    )  # fmt: skip

    def __init__(
        self,
        stream: SocketStream,
        file: OpenedFile,
        offset: int,
        count: int,
        step: Step,
        release: Callable[[bool], None] | None = None,
        rest: Callable[[int, int], Coroutine[Any, Any, None]] | None = None,
        largest: int = TURN_BYTES,
    ) -> None:
        self.stream = stream
        self.file = file
        self.offset = offset
        self.end = offset + count
        self.rest = rest
        self._step = step
        self._release = release
        self._largest = largest
        """The most one step is asked for; a step may cap it lower itself."""

    def advance(self) -> Progress:
        # Locals and module-level members: this runs at least once per response.
        step, end, largest, offset = self._step, self.end, self._largest, self.offset
        turn_ends = offset + TURN_BYTES
        while offset < end:
            left = end - offset
            try:
                sent = step(offset, left if left < largest else largest)
            except BlockingIOError:
                return _WAIT if self.rest is None else _HANDOFF
            if sent == 0:
                raise FileShrankError(f"{self.file.name}: file ended at {offset}, expected {end}")
            offset += sent
            self.offset = offset
            self.stream.bytes_sent += sent
            if offset < end:
                if self.rest is not None:  # the first step only; the rest is awaited
                    return _HANDOFF
                if offset >= turn_ends:
                    return _YIELD
        return _DONE

    def close(self) -> None:
        """Release what the step holds; a pooled resource is reused only after a
        complete transfer."""
        if self._release is not None:
            release, self._release = self._release, None
            release(self.offset >= self.end)


async def pump(transfer: Transfer) -> None:
    """Drive `transfer` to its end from a coroutine."""
    stream = transfer.stream
    try:
        while True:
            progress = transfer.advance()
            if progress is Progress.DONE:
                break
            if progress is Progress.WAIT:
                await stream.wait_writable()
            elif progress is Progress.YIELD:
                await asyncio.sleep(0)
            else:
                assert transfer.rest is not None
                await transfer.rest(transfer.offset, transfer.end - transfer.offset)
                break
        await stream.drain()
    finally:
        transfer.close()


class CopyStrategy(Protocol):
    """Moves `count` bytes of `file` starting at `offset` to `stream`, or raises.

    Raises `FileShrankError` if the file ends early, `SendStalledError` if the
    peer stops reading, `OSError` if the connection breaks. `count` is > 0.
    """

    @property
    def name(self) -> str:
        """What metrics and the access log call it."""

    def choose(self, stream: SocketStream) -> CopyStrategy:
        """The strategy that really moves the bytes on `stream` (itself, but for auto)."""

    def start(
        self, stream: SocketStream, file: OpenedFile, offset: int, count: int
    ) -> Transfer | None:
        """A transfer to step from callbacks, or None: then `send` must be awaited."""

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        """Copy the bytes; return only when the kernel holds all of them."""


class BaseStrategy:
    """What every strategy but `auto` shares: it moves the bytes itself, and
    awaiting it is pumping the transfer it starts."""

    name: ClassVar[str]

    def choose(self, stream: SocketStream) -> CopyStrategy:
        return self

    def start(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> Transfer:
        raise NotImplementedError

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        await pump(self.start(stream, file, offset, count))


class SteppedStrategy(BaseStrategy):
    """A strategy made of one `Step` per transfer."""


class SendfileStrategy(SteppedStrategy):
    """Zero-copy: sendfile(2) moves page-cache pages to the socket inside the kernel.

    The first sendfile(2) is called directly. Under asyncio a body it does not
    finish goes on through `loop.sock_sendfile` (native os.sendfile path, no
    fallback); uvloop does not implement that, so there zcserve drives os.sendfile
    on the non-blocking socket itself and waits for writability on EAGAIN.
    """

    name: ClassVar[str] = "sendfile"

    def __init__(self, options: CopyOptions) -> None:
        self.max_chunk = options.sendfile_chunk
        self._loop: asyncio.AbstractEventLoop | None = None
        self._native = False
        """Whether `_loop` has a native sock_sendfile: asked once per loop, not per body."""

    def start(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> Transfer:
        # The step is os.sendfile itself, its descriptors bound: no Python frame per step.
        step = functools.partial(os.sendfile, stream.fd, file.fd)
        if stream.loop is not self._loop:
            self._loop = stream.loop
            self._native = _has_native_sock_sendfile(stream.loop)
        # Under asyncio a body that one sendfile(2) does not finish goes on through
        # the loop's own sock_sendfile, the path the standard library offers.
        if self._native:
            rest = functools.partial(self._sock_sendfile, stream, file)
            return Transfer(stream, file, offset, count, step, None, rest, self.max_chunk)
        return Transfer(stream, file, offset, count, step, None, None, self.max_chunk)

    async def _sock_sendfile(
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


class AwaitedReadStrategy(BaseStrategy):
    """A strategy whose file reads are awaitable by nature (aiofiles): the whole body
    moves in its `_copy` coroutine, handed off from the first step."""

    def start(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> Transfer:
        return _handed_off(stream, file, offset, count, self._copy)

    async def _copy(
        self, stream: SocketStream, file: OpenedFile, fd: int, offset: int, count: int
    ) -> None:
        raise NotImplementedError


class ReadWriteStrategy(AwaitedReadStrategy):
    """The classic path: read a chunk into a userspace buffer (aiofiles, one
    thread-pool hop per read), write it out, repeat. The next read is in flight
    while a chunk is sent (read-ahead), into the other of two buffers made once per
    transfer: a fresh `bytes` per chunk would cost more in page faults and zeroing
    than the copy itself (see readall).

    Each hop costs about as much as copying 256 KiB, so while the strategy's buffers
    hold less than `LARGE_BUDGET` (in this process), a transfer gets `LARGE_CHUNK`
    buffers (one download runs at the fallback's pace); past it, 256 KiB ones (512
    downloads still hold 256 MiB, not 2 GiB). `--chunk-size` sets one size for all."""

    name: ClassVar[str] = "readwrite"
    LARGE_CHUNK: ClassVar[int] = 2 * 1024 * 1024
    LARGE_BUDGET: ClassVar[int] = 64 * 1024 * 1024

    def __init__(self, options: CopyOptions) -> None:
        self.chunk_size = options.chunk_size
        self.buffered = 0
        """Bytes of buffers that live transfers hold now."""

    def _chunk_for(self, count: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        if count > DEFAULT_CHUNK and self.buffered + 2 * self.LARGE_CHUNK <= self.LARGE_BUDGET:
            return self.LARGE_CHUNK
        return DEFAULT_CHUNK

    async def _copy(
        self, stream: SocketStream, file: OpenedFile, fd: int, offset: int, count: int
    ) -> None:
        async with aiofiles.open(fd, "rb", buffering=0) as afile:  # closes `fd`
            await afile.seek(offset)
            chunk, left = self._chunk_for(count), count
            # One buffer being sent while the other fills; the second only if needed.
            buffers = [_fresh_buffer(min(chunk, left))]
            if left > chunk:
                buffers.append(_fresh_buffer(min(chunk, left - chunk)))
            held = sum(map(len, buffers))
            self.buffered += held
            filling = 0
            reading = asyncio.ensure_future(afile.readinto(buffers[0][: min(chunk, left)]))
            try:
                while left:
                    got = await asyncio.shield(reading)  # a cancel must not orphan it
                    if not got:
                        raise FileShrankError(f"{file.name}: file ended {left} bytes early")
                    data = buffers[filling][:got]
                    left -= got
                    if left:
                        filling = 1 - filling
                        target = buffers[filling][: min(chunk, left)]
                        reading = asyncio.ensure_future(afile.readinto(target))
                    await stream.send_all(data)
            finally:
                try:
                    await _settle(reading)
                finally:
                    self.buffered -= held


def default_readall_budget() -> int:
    """A quarter of this machine's memory, at most 4 GiB: what the bodies of all
    readall requests may hold at once, per worker process."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        memory = 16 * 1024**3
    return min(memory // 4, READALL_BUDGET_CAP)


class ReadAllStrategy(AwaitedReadStrategy):
    """The lab's naive server: read the whole range into one `bytes` with a single
    aiofiles read, then send it, as `f.read()` then `sendall()` do in the lab.

    The only strategy that holds a body in memory, as much of it as was asked for.
    It exists for the lab's comparison, so that one command shows what reading the
    whole file costs beside readwrite's chunks and sendfile's none; never serve
    with it. Ranges above `readall_max` are refused before the head (503). Not
    part of auto.
    """

    name: ClassVar[str] = "readall"

    def __init__(self, options: CopyOptions) -> None:
        self.max_size = options.readall_max
        self.budget = (
            options.readall_budget
            if options.readall_budget is not None
            else default_readall_budget()
        )
        self.held = 0
        """Bytes reserved by the bodies in flight, whether read yet or not."""
        self.on_held: Callable[[int], object] | None = None
        """Told `held` whenever it changes (the server's metrics gauge)."""

    def start(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> Transfer:
        # The connection answers ENOMEM with 503 before the head; the limits are this
        # strategy's own, not the kernel's.
        if count > self.max_size:
            raise OSError(
                errno.ENOMEM,
                f"{file.name}: {count} bytes in one read is over --readall-max {self.max_size}",
            )
        if self.held + count > self.budget:
            raise OSError(
                errno.ENOMEM,
                f"{file.name}: {count} bytes more would pass --readall-budget {self.budget} "
                f"({self.held} held)",
            )
        self._hold(count)
        reserved = [count]

        def give_back() -> None:
            if reserved:
                self._hold(-reserved.pop())

        async def copy(
            stream: SocketStream, file: OpenedFile, fd: int, offset: int, count: int
        ) -> None:
            try:
                await self._copy(stream, file, fd, offset, count)
            finally:
                give_back()

        return _handed_off(stream, file, offset, count, copy, give_back)

    def _hold(self, change: int) -> None:
        self.held += change
        if self.on_held is not None:
            self.on_held(self.held)

    async def _copy(
        self, stream: SocketStream, file: OpenedFile, fd: int, offset: int, count: int
    ) -> None:
        os.lseek(fd, offset, os.SEEK_SET)  # no I/O: not worth a hop to the thread pool
        # Buffered, as the lab's open(): its read(count) loops until `count` or the end
        # of the file, where one read(2) stops short of 2 GiB.
        async with aiofiles.open(fd, "rb") as afile:  # closes `fd`
            reading = asyncio.ensure_future(afile.read(count))
            try:
                body = await asyncio.shield(reading)  # a cancel must not orphan it
            finally:
                await _settle(reading)
        if len(body) != count:
            raise FileShrankError(f"{file.name}: read {len(body)} bytes of {count}")
        view = memoryview(body)
        await stream.send_all(view[:TURN_BYTES])
        for start in range(TURN_BYTES, count, TURN_BYTES):
            await asyncio.sleep(0)  # a turn for other connections, as `Transfer` gives
            await stream.send_all(view[start : start + TURN_BYTES])


def _fresh_buffer(size: int) -> memoryview:
    """A buffer of its own mapping, unmapped when its last view goes: megabytes taken
    from malloc's heap stay in the process after a burst of downloads (glibc raises
    its mmap threshold after the first free, and long-lived TLS objects pin the heap
    top), so RSS would keep the peak of every burst."""
    return memoryview(mmap.mmap(-1, size))


async def _settle(reading: asyncio.Future[Any]) -> None:
    """Wait for a file read that a cancelled transfer leaves in flight. It goes on in
    aiofiles' thread whatever asyncio says, so its file must not close under it: the
    descriptor's number could be reused by the next accepted socket, and the read
    would take that client's bytes."""
    if not reading.done():
        await asyncio.wait([reading])
    if not reading.cancelled():
        reading.exception()  # retrieved: the transfer's own error is the one raised


def _handed_off(
    stream: SocketStream,
    file: OpenedFile,
    offset: int,
    count: int,
    copy: Callable[[SocketStream, OpenedFile, int, int, int], Coroutine[Any, Any, None]],
    never_began: Callable[[], None] | None = None,
) -> Transfer:
    """A transfer that hands everything to `copy(stream, file, fd, offset, count)`
    (file reads are awaitable by nature), holding the descriptor `fd` it reads
    through: taken now, before the head is sent, so that running out of descriptors
    is a 503, not a 200 whose body never comes."""
    owned = [_own_description(file.fd)]

    async def rest(offset: int, count: int) -> None:
        await copy(stream, file, owned.pop(), offset, count)

    def release(complete: bool) -> None:
        if owned:  # the copy never began: the descriptor is still ours
            os.close(owned.pop())
            if never_began is not None:
                never_began()

    return Transfer(stream, file, offset, count, _hand_off, release, rest)


def _hand_off(offset: int, size: int) -> int:
    """The step of a transfer whose bytes all move in its `rest` coroutine."""
    raise BlockingIOError


def _own_description(fd: int) -> int:
    """The same file with an offset of its own: the descriptor may be shared (open-file
    cache) and this path moves a file offset, as the classic server's own open()
    would. Reopened through /proc (no path lookup, no disk I/O); a dup elsewhere."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return os.dup(fd)


class FallbackStrategy(SteppedStrategy):
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

    def start(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> Transfer:
        # send_some, not the socket's send: under TLS this is the one path, and it
        # encrypts.
        send = stream.send_some
        if count <= SMALL_BODY:
            # A small body is read whole per step: a new `bytes` of a few KiB costs
            # less than lending a pooled buffer and taking it back. A partial send
            # reads the rest again from its offset.
            pread, file_fd = os.pread, file.fd
            return Transfer(
                stream, file, offset, count, lambda offset, size: send(pread(file_fd, size, offset))
            )
        buffer = self._pool.pop() if self._pool else bytearray(self.chunk_size)
        view = memoryview(buffer)
        unsent = view[:0]  # read from the file, not yet taken by the socket
        preadv, file_fd, chunk = os.preadv, file.fd, self.chunk_size

        def step(offset: int, size: int) -> int:
            nonlocal unsent
            if not unsent:
                got = preadv(file_fd, [view[: min(chunk, size)]], offset)
                if got == 0:
                    return 0
                unsent = view[:got]
            sent = send(unsent)
            unsent = unsent[sent:]
            return sent

        def release(complete: bool) -> None:
            unsent.release()
            view.release()
            if len(self._pool) < self.POOL_SIZE:
                self._pool.append(buffer)

        return Transfer(stream, file, offset, count, step, release)


class MmapStrategy(SteppedStrategy):
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

    def start(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> Transfer:
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(
                file.fd, offset - start + count, access=mmap.ACCESS_READ, offset=start
            )
        except ValueError:  # the file is already shorter than offset + count
            raise FileShrankError(f"{file.name}: file shorter than {offset + count}") from None
        view = memoryview(mapping)
        send, chunk = stream.sock.send, self.chunk_size

        def step(offset: int, size: int) -> int:
            with view[offset - start : offset - start + min(chunk, size)] as piece:
                try:
                    return send(piece)
                except OSError as exc:
                    if exc.errno == errno.EFAULT:
                        raise FileShrankError(f"{file.name}: file shrank while mapped") from None
                    raise

        def release(complete: bool) -> None:
            # No view may outlive the transfer, or the mapping cannot be closed.
            view.release()
            mapping.close()

        return Transfer(stream, file, offset, count, step, release)


class SpliceStrategy(SteppedStrategy):
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

    def start(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> Transfer:
        read_end, write_end, pipe_size = self._pipe()
        splice, flags, sock_fd, file_fd = os.splice, self.FLAGS, stream.fd, file.fd
        in_pipe = 0  # spliced from the file, not yet into the socket

        def step(offset: int, size: int) -> int:
            nonlocal in_pipe
            if in_pipe == 0:
                in_pipe = splice(file_fd, write_end, min(pipe_size, size), offset, None, flags)
                if in_pipe == 0:
                    return 0
            moved = splice(read_end, sock_fd, in_pipe, None, None, flags)
            in_pipe -= moved
            return moved

        def release(complete: bool) -> None:
            if complete and in_pipe == 0 and len(self._pipes) < self.POOL_SIZE:
                self._pipes.append((read_end, write_end, pipe_size))
            else:  # bytes may be left in the pipe: never reuse it
                os.close(read_end)
                os.close(write_end)

        return Transfer(stream, file, offset, count, step, release)


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

    def start(
        self, stream: SocketStream, file: OpenedFile, offset: int, count: int
    ) -> Transfer | None:
        return self.choose(stream).start(stream, file, offset, count)

    async def send(self, stream: SocketStream, file: OpenedFile, offset: int, count: int) -> None:
        await self.choose(stream).send(stream, file, offset, count)


class MemoryStrategy(AutoStrategy):
    """Small files from memory: the open-file cache holds their bytes (its
    `MemoryCache`), and a whole-file answer goes out as one send of head and body,
    with no copy strategy at all. Everything else (larger files, ranges, a file
    the cache had no room for) goes as `auto` sends it."""

    name: ClassVar[str] = "memory"


StrategyClass = type[
    SendfileStrategy
    | ReadWriteStrategy
    | ReadAllStrategy
    | FallbackStrategy
    | MmapStrategy
    | SpliceStrategy
    | AutoStrategy
    | MemoryStrategy
]

STRATEGIES: dict[str, StrategyClass] = {
    cls.name: cls
    for cls in (
        AutoStrategy,
        SendfileStrategy,
        ReadWriteStrategy,
        ReadAllStrategy,
        FallbackStrategy,
        MmapStrategy,
        SpliceStrategy,
        MemoryStrategy,
    )
}
"""Every strategy by name; the CLI's choices come from here."""


def make_strategy(name: str, options: CopyOptions | None = None) -> CopyStrategy:
    """The strategy registered under `name`."""
    return STRATEGIES[name](options or CopyOptions())
