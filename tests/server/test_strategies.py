"""Copy strategies over real TCP sockets, under both loops; the byte accounting;
and the proof that the zero-copy strategies (sendfile, auto, splice, mmap) move no
file byte through userspace, seen from Python and from the kernel (strace)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import mmap
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiofiles
import psutil
import pytest

from tests.support.httpclient import connect
from tests.support.servers import start_server
from tests.support.site import LOOPS, SIZES, Site
from zcserve.errors import FileShrankError, SendStalledError
from zcserve.runtime import loop_factory
from zcserve.server import strategies
from zcserve.server.files import OpenedFile
from zcserve.server.sockio import SocketStream
from zcserve.server.strategies import STRATEGY_NAMES, CopyOptions, make_strategy


def run_on(loop_name: str, coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        return runner.run(coro())


def open_file(path: str) -> OpenedFile:
    fd = os.open(path, os.O_RDONLY)
    info = os.fstat(fd)
    return OpenedFile(fd, os.path.basename(path), info.st_size, info.st_mtime, info.st_mtime_ns)


class Reader(threading.Thread):
    """Reads everything from a client socket in a thread, optionally slowly."""

    def __init__(self, sock: socket.socket, *, pause: float = 0.0, limit: int | None = None):
        super().__init__(daemon=True)
        self.sock, self.pause, self.limit = sock, pause, limit
        self.data = bytearray()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.limit is not None and len(self.data) >= self.limit:
                self.stop.wait(0.05)
                continue
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk
            if self.pause:
                self.stop.wait(self.pause)


async def _pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return server_side, client


async def _transfer(
    name: str, file: OpenedFile, offset: int, count: int, *, pause: float = 0.0
) -> bytes:
    server_side, client = await _pair()
    reader = Reader(client, pause=pause)
    reader.start()
    stream = SocketStream(server_side, asyncio.get_running_loop(), send_timeout=10)
    try:
        await make_strategy(name, CopyOptions(chunk_size=64 * 1024)).send(
            stream, file, offset, count
        )
        assert stream.bytes_sent == count
    finally:
        server_side.close()
        reader.join(10)
        client.close()
    return bytes(reader.data)


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_moves_exact_bytes(site: Site, name: str, loop_name: str) -> None:
    file = open_file(site.path("big.bin"))
    expected = site.read("big.bin")
    try:
        whole = run_on(loop_name, lambda: _transfer(name, file, 0, file.size))
        assert hashlib.sha256(whole).hexdigest() == site.hashes["big.bin"]
        part = run_on(loop_name, lambda: _transfer(name, file, 12345, 3_000_000))
        assert part == expected[12345 : 12345 + 3_000_000]
    finally:
        file.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_with_slow_reader(site: Site, name: str, loop_name: str) -> None:
    file = open_file(site.path("64k1.bin"))
    try:
        data = run_on(loop_name, lambda: _transfer(name, file, 0, file.size, pause=0.01))
        assert data == site.read("64k1.bin")
    finally:
        file.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_raises_when_file_is_shorter_than_count(
    site: Site, name: str, loop_name: str
) -> None:
    file = open_file(site.path("64k1.bin"))
    try:
        with pytest.raises(FileShrankError):
            run_on(loop_name, lambda: _transfer(name, file, 0, file.size + 100_000))
    finally:
        file.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_gives_up_on_a_peer_that_stops_reading(
    site: Site, name: str, loop_name: str
) -> None:
    file = open_file(site.path("big.bin"))

    async def stalled() -> None:
        server_side, client = await _pair()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stream = SocketStream(server_side, asyncio.get_running_loop(), send_timeout=0.3)
        try:
            await make_strategy(name).send(stream, file, 0, file.size)
        finally:
            server_side.close()
            client.close()

    try:
        with pytest.raises((SendStalledError, TimeoutError)):
            run_on(loop_name, stalled)
    finally:
        file.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_readwrite_buffers_stay_within_its_budget(site: Site, loop_name: str) -> None:
    """readwrite gives large buffers (fewer thread-pool hops) only while its
    buffers hold less than its budget; past it, 256 KiB ones. Peers that read
    nothing keep every transfer alive, so what each took shows; once they are
    cancelled, the strategy holds nothing."""
    strategy = make_strategy("readwrite")
    assert isinstance(strategy, strategies.ReadWriteStrategy)
    large, budget = strategy.LARGE_CHUNK, strategy.LARGE_BUDGET
    fits = budget // (2 * large)
    extra = 3
    file = open_file(site.path("big.bin"))
    assert file.size > 2 * large

    async def stalled_transfers() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        pairs = [await _pair() for _ in range(fits + extra)]
        sends = []
        for server_side, _ in pairs:
            stream = SocketStream(server_side, loop, send_timeout=30)
            sends.append(asyncio.ensure_future(strategy.send(stream, file, 0, file.size)))
        held, unchanged = -1, 0
        for _ in range(500):  # until every transfer has its buffers and waits
            await asyncio.sleep(0.02)
            unchanged = unchanged + 1 if strategy.buffered == held else 0
            held = strategy.buffered
            if unchanged == 10:
                break
        for send in sends:  # as the connection does when its peer leaves
            send.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        for server_side, client in pairs:
            client.close()
            server_side.close()
        return held, strategy.buffered

    try:
        held, after = run_on(loop_name, stalled_transfers)
    finally:
        file.close()
    assert held == fits * 2 * large + extra * 2 * strategies.DEFAULT_CHUNK
    assert after == 0


class _SlowDisk:
    """A file whose reads wait at `gate`, as on a slow disk; `reading` is set once
    a read is in flight in aiofiles' thread."""

    def __init__(self, inner: Any, gate: threading.Event, reading: threading.Event) -> None:
        self._inner, self._gate, self._reading = inner, gate, reading

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read(self, *args: Any) -> Any:
        self._reading.set()
        self._gate.wait(10)
        return self._inner.read(*args)

    def readinto(self, buffer: Any) -> Any:
        self._reading.set()
        self._gate.wait(10)
        return self._inner.readinto(buffer)


@pytest.mark.parametrize("name", ["readwrite", "readall"])
def test_a_cancelled_transfer_waits_for_its_read_in_flight(
    site: Site, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read in aiofiles' thread goes on whatever asyncio cancels: the transfer must
    not close the file under it (its descriptor's number could go to the next
    accepted socket, whose bytes the read would take). So a cancelled transfer ends
    only once its read has returned. (The abort storms check that no descriptor is
    left behind.)"""
    gate, reading = threading.Event(), threading.Event()
    real_open = aiofiles.open

    class SlowOpen:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._opening = real_open(*args, **kwargs)

        async def __aenter__(self) -> Any:
            afile = await self._opening.__aenter__()
            afile._file = _SlowDisk(afile._file, gate, reading)
            return afile

        async def __aexit__(self, *exc: Any) -> Any:
            return await self._opening.__aexit__(*exc)

    monkeypatch.setattr(aiofiles, "open", SlowOpen)
    file = open_file(site.path("64k1.bin"))

    async def cancel_mid_read() -> tuple[bool, bool]:
        server_side, client = await _pair()
        stream = SocketStream(server_side, asyncio.get_running_loop(), send_timeout=10)
        sending = asyncio.ensure_future(make_strategy(name).send(stream, file, 0, file.size))
        try:
            for _ in range(500):
                if reading.is_set():
                    break
                await asyncio.sleep(0.01)
            sending.cancel()
            await asyncio.sleep(0.3)
            ended_under_the_read = sending.done()
            gate.set()
            await asyncio.gather(sending, return_exceptions=True)
            return ended_under_the_read, sending.cancelled()
        finally:
            gate.set()
            server_side.close()
            client.close()

    try:
        ended_under_the_read, cancelled = run_on("uvloop", cancel_mid_read)
    finally:
        file.close()
    assert reading.is_set()
    assert not ended_under_the_read, "the transfer ended while its read was in flight"
    assert cancelled


# Byte accounting: what the access log and the metrics report. ----------------------


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_bytes_sent_grows_by_exactly_count(site: Site, name: str, loop_name: str) -> None:
    """Every strategy adds exactly the bytes of the body it sent to `stream.bytes_sent`,
    on top of what the stream sent before it (a head, an earlier response)."""
    file = open_file(site.path("big.bin"))
    expected = site.read("big.bin")
    head = b"HTTP/1.1 200 OK\r\n\r\n"

    async def head_and_two_bodies() -> tuple[list[int], bytes]:
        server_side, client = await _pair()
        reader = Reader(client)
        reader.start()
        stream = SocketStream(server_side, asyncio.get_running_loop(), send_timeout=10)
        strategy = make_strategy(name, CopyOptions(chunk_size=100_000))
        counts = []
        try:
            await stream.send_all(head)
            counts.append(stream.bytes_sent)
            await strategy.send(stream, file, 12345, 5_000_000)
            counts.append(stream.bytes_sent)
            await strategy.send(stream, file, 7, 1)
            counts.append(stream.bytes_sent)
        finally:
            server_side.close()
            reader.join(10)
            client.close()
        return counts, bytes(reader.data)

    try:
        counts, received = run_on(loop_name, head_and_two_bodies)
    finally:
        file.close()
    assert counts == [len(head), len(head) + 5_000_000, len(head) + 5_000_001]
    assert received == head + expected[12345 : 12345 + 5_000_000] + expected[7:8]


# The proof: the zero-copy strategies move no file byte through userspace. ------------

HAS_RCHAR = os.path.exists("/proc/self/io")
READ_SLACK = 16 * 1024
"""Bytes the process may move through read(2) and friends during a watched window
without reading a served file: the loop's wakeup reads, /proc/self/io itself. A copy
of the file moves megabytes."""
COPY_SLACK = 512 * 1024
"""How far Python's heap may grow at its peak during a watched window without holding a
copy of the file: half the smallest chunk of a zero-copy strategy (1 MiB)."""


def read_chars() -> int:
    """This process's `rchar`: bytes moved by read(2), pread(2), readv(2), ... in any of
    its threads, whoever asked: a file object's read or readinto, io.FileIO, os.fdopen,
    an executor thread. The kernel adds sendfile(2) to it; not recv(2) on a socket,
    nor splice(2)."""
    with open("/proc/self/io", "rb", buffering=0) as proc_io:
        for line in proc_io.read().splitlines():
            if line.startswith(b"rchar:"):
                return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar")


def _served(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".bin")
    except OSError:
        return False


class Spy:
    """Counts the calls that should carry a served file (`*.bin`) to the socket, and
    watches every way the process could read one into userspace instead:

    - os.read/pread/preadv/readv and aiofiles.open: recorded by name;
    - any read(2)-family system call, however issued: the process's rchar, less what
      sendfile(2) adds to it, must not grow by more than `READ_SLACK`;
    - Python reads of a mapping (`m[a:b]`, `m.read()`): mmap.mmap is replaced by a
      subclass that records them;
    - a copy held in Python memory by any other means (`bytes(view)`): tracemalloc's
      peak must not rise by more than `COPY_SLACK`.

    `begin()` opens the watched window (after a warm-up request), `end()` closes it
    once the server thread is joined; `copies()` then lists what was seen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sendfile_calls = 0
        self.sendfile_bytes = 0
        self.empty_calls = 0
        self.spliced_from_file = 0
        self.spliced_to_socket = 0
        self.mapped: list[int] = []
        self.reads: list[str] = []
        self.read_excess = 0
        self.peak_growth = 0
        self._rchar = 0
        self._heap = 0
        self._tracing = False
        real_sendfile, real_splice, real_aiofiles_open = os.sendfile, os.splice, aiofiles.open

        def counting_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
            if count <= 0:
                self.empty_calls += 1
            sent = real_sendfile(out_fd, in_fd, offset, count)
            self.sendfile_calls += 1
            self.sendfile_bytes += sent
            return sent

        def counting_splice(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
            moved = real_splice(src, dst, count, *args, **kwargs)
            if _served(src):
                self.spliced_from_file += moved
            elif stat.S_ISSOCK(os.fstat(dst).st_mode):
                self.spliced_to_socket += moved
            return moved

        def recording_aiofiles_open(*args: Any, **kwargs: Any) -> Any:
            self.reads.append(f"aiofiles.open{args}")
            return real_aiofiles_open(*args, **kwargs)

        monkeypatch.setattr(os, "sendfile", counting_sendfile)
        monkeypatch.setattr(os, "splice", counting_splice)
        monkeypatch.setattr(aiofiles, "open", recording_aiofiles_open)
        for name in ("read", "pread", "preadv", "readv"):
            monkeypatch.setattr(os, name, self._recording(name, getattr(os, name)))
        monkeypatch.setattr(mmap, "mmap", self._recording_mmap())

    def _recording(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fd: int, *args: Any) -> Any:
            if _served(fd):
                self.reads.append(f"os.{name}({os.readlink(f'/proc/self/fd/{fd}')})")
            return real(fd, *args)

        return wrapper

    def _recording_mmap(self) -> type[mmap.mmap]:
        spy = self

        class RecordingMmap(mmap.mmap):
            def __new__(cls, *args: Any, **kwargs: Any) -> RecordingMmap:
                mapping = super().__new__(cls, *args, **kwargs)
                spy.mapped.append(len(mapping))
                return mapping

            def __getitem__(self, key: Any) -> Any:
                spy.reads.append(f"mmap[{key!r}]")
                return super().__getitem__(key)

            def read(self, n: int | None = None) -> bytes:
                spy.reads.append(f"mmap.read({n})")
                return super().read(n)

            def read_byte(self) -> int:
                spy.reads.append("mmap.read_byte()")
                return super().read_byte()

            def readline(self) -> bytes:
                spy.reads.append("mmap.readline()")
                return super().readline()

        return RecordingMmap

    def begin(self) -> None:
        self.sendfile_calls = self.sendfile_bytes = self.empty_calls = 0
        self.spliced_from_file = self.spliced_to_socket = 0
        self.mapped.clear()
        self.reads.clear()
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._tracing = True
        self._heap = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        self._rchar = read_chars() if HAS_RCHAR else 0

    def end(self) -> None:
        if HAS_RCHAR:
            self.read_excess = read_chars() - self._rchar - self.sendfile_bytes
        self.peak_growth = tracemalloc.get_traced_memory()[1] - self._heap
        self.stop()

    def stop(self) -> None:
        if self._tracing:
            tracemalloc.stop()
            self._tracing = False

    def copies(self) -> list[str]:
        """Every sign of a served file read into userspace in the window."""
        seen = list(self.reads)
        if self.read_excess > READ_SLACK:
            seen.append(f"read(2)-family calls moved {self.read_excess} bytes (rchar)")
        if self.peak_growth > COPY_SLACK:
            seen.append(f"Python memory grew by {self.peak_growth} bytes at its peak")
        return seen


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    watcher = Spy(monkeypatch)
    try:
        yield watcher
    finally:
        watcher.stop()


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]
    length: int
    sha256: str


def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> Fetched:
    """GET `path`, hashing the body as it arrives in one fixed buffer (the client makes
    no copy of the body in Python memory, so a copy made by the server stands out), and
    read on until the server closes."""
    lines = [f"GET {path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    buffer = bytearray(64 * 1024)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    with connect(port) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        filled = 0
        while (head_end := buffer.find(b"\r\n\r\n", 0, filled)) < 0:
            got = sock.recv_into(view[filled:])
            assert got, "the connection closed inside the head"
            filled += got
        status_line, *fields = bytes(view[:head_end]).decode("latin-1").split("\r\n")
        found = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        length = int(found["content-length"])
        received = filled - head_end - 4
        digest.update(view[head_end + 4 : filled])
        while received < length:
            got = sock.recv_into(view)
            assert got, f"the connection closed after {received} of {length} body bytes"
            digest.update(view[:got])
            received += got
        # The server closes once it is done with the response: after that, every call
        # it made for it is counted.
        while got := sock.recv_into(view):
            received += got
    assert received == length, f"{received - length} bytes past Content-Length"
    return Fetched(int(status_line.split(" ")[1]), found, length, digest.hexdigest())


RANGE = (1000, 5_000_999)
"""A Range of big.bin that starts off a page boundary (mmap maps from one)."""
RANGE_HEADER = {"Range": f"bytes={RANGE[0]}-{RANGE[1]}"}


def serve_and_fetch(site: Site, spy: Spy, strategy: str, loop_name: str) -> int:
    """Fetch big.bin whole and in a range from a live server while `spy` watches, check
    every byte, and return how many body bytes were sent."""
    server = start_server(root=site.root, strategy=strategy, loop=loop_name)
    try:
        assert fetch(server.port, "/one.bin").status == 200  # warm-up: first-request work
        spy.begin()
        whole = fetch(server.port, "/big.bin")
        part = fetch(server.port, "/big.bin", RANGE_HEADER)
        empty = fetch(server.port, "/empty.bin")
    finally:
        server.stop()  # joins the server thread: every call it made is counted
    spy.end()
    first, last = RANGE
    expected_part = hashlib.sha256(site.read("big.bin")[first : last + 1]).hexdigest()
    assert (whole.status, whole.sha256) == (200, site.hashes["big.bin"])
    assert (part.status, part.length, part.sha256) == (206, last + 1 - first, expected_part)
    assert (empty.status, empty.length) == (200, 0)
    return whole.length + part.length


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("strategy", ["sendfile", "auto"])
def test_sendfile_carries_the_body_and_nothing_reads_the_file(
    site: Site, spy: Spy, strategy: str, loop_name: str
) -> None:
    """sendfile, and auto (the default) on plain TCP: sendfile(2) carries every body
    byte, whole file and range, and no byte of the file is read into userspace."""
    body = serve_and_fetch(site, spy, strategy, loop_name)
    assert spy.copies() == [], "file bytes passed through userspace"
    assert spy.empty_calls == 0, "sendfile was called for zero bytes"
    assert spy.sendfile_bytes == body
    assert spy.sendfile_calls >= body // strategies.SENDFILE_MAX_CHUNK
    assert (spy.spliced_from_file, spy.mapped) == (0, [])


@pytest.mark.parametrize("loop_name", LOOPS)
def test_splice_carries_the_body_and_nothing_reads_the_file(
    site: Site, spy: Spy, loop_name: str
) -> None:
    """splice(2) moves every body byte from the file into a pipe and from the pipe into
    the socket; nothing reads the file, or the pipe, into userspace."""
    body = serve_and_fetch(site, spy, "splice", loop_name)
    assert spy.copies() == [], "file bytes passed through userspace"
    assert spy.spliced_from_file == body
    assert spy.spliced_to_socket == body
    assert spy.sendfile_bytes == 0


@pytest.mark.parametrize("loop_name", LOOPS)
def test_mmap_sends_from_the_mapping_and_never_reads_it(
    site: Site, spy: Spy, loop_name: str
) -> None:
    """The mmap strategy maps each body and hands the mapping to send(2): Python never
    reads a mapped byte, nor reads the file."""
    body = serve_and_fetch(site, spy, "mmap", loop_name)
    assert spy.copies() == [], "file bytes passed through userspace"
    assert spy.mapped and sum(spy.mapped) >= body
    assert spy.sendfile_bytes == 0 and spy.spliced_from_file == 0


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("strategy", ["fallback", "readwrite"])
def test_spy_sees_the_userspace_strategies_read(
    site: Site, spy: Spy, strategy: str, loop_name: str
) -> None:
    """The proofs above can fail: the same spy sees the userspace strategies' reads,
    by name and in rchar (readwrite's happen in executor threads)."""
    body = serve_and_fetch(site, spy, strategy, loop_name)
    assert spy.sendfile_calls == 0
    assert spy.reads and spy.reads[0].startswith(("os.preadv(", "aiofiles.open("))
    if HAS_RCHAR:
        assert spy.read_excess >= body


def _file_object_read(path: str, size: int) -> None:
    with open(path, "rb") as file:
        file.read(size)


def _descriptor_file_object_read(path: str, size: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(fd, "rb", closefd=False) as file:
            file.read(size)
    finally:
        os.close(fd)


def _fileio_readinto(path: str, size: int) -> None:
    buffer = bytearray(64 * 1024)  # reused: no copy piles up in Python memory
    with io.FileIO(path) as file:
        while size > 0:
            size -= file.readinto(buffer) or size


def _os_readv(path: str, size: int) -> None:
    buffer = bytearray(64 * 1024)
    fd = os.open(path, os.O_RDONLY)
    try:
        while size > 0:
            size -= os.readv(fd, [buffer]) or size
    finally:
        os.close(fd)


def _mmap_slice(path: str, size: int) -> None:
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for start in range(0, size, 64 * 1024):
            m[start : start + 64 * 1024]


def _mmap_read(path: str, size: int) -> None:
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
        m.read(size)


def _mapping_view_copied(path: str, size: int) -> None:
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
        with memoryview(m) as view, view[:size] as piece:
            bytes(piece)


USERSPACE_READS: dict[str, Callable[[str, int], None]] = {
    "open(path).read": _file_object_read,
    "open(fd).read": _descriptor_file_object_read,
    "io.FileIO.readinto": _fileio_readinto,
    "os.readv": _os_readv,
    "mmap[a:b]": _mmap_slice,
    "mmap.read": _mmap_read,
    "bytes(memoryview(mmap))": _mapping_view_copied,
}


@pytest.mark.parametrize("kind", USERSPACE_READS)
def test_spy_catches_each_kind_of_read(site: Site, spy: Spy, kind: str) -> None:
    """Each way Python can read a file into userspace is seen by the spy, through
    plain file objects, io.FileIO, os.readv and Python reads of a mapping alike."""
    if not HAS_RCHAR and kind in ("open(path).read", "open(fd).read", "io.FileIO.readinto"):
        pytest.skip("no /proc/self/io")
    spy.begin()
    USERSPACE_READS[kind](site.path("big.bin"), SIZES["big.bin"])
    spy.end()
    assert spy.copies(), f"the spy missed {kind}"


# The same proof outside Python's view: the kernel's own record (strace). -------------

TRACED_CALLS = (
    "openat,close,fcntl,dup,dup2,dup3,accept,accept4,"
    "read,pread64,readv,preadv,preadv2,sendfile,splice,mmap,munmap,sendto"
)
_CALL = re.compile(r"(\w+)\((.*)\)\s+=\s+(-?(?:0x[0-9a-f]+|\d+))")
_RESUMED = re.compile(r"<\.\.\. \w+ resumed>(.*)")


@dataclass
class KernelView:
    """What the traced server did with a served file's descriptors."""

    sendfile: int = 0
    spliced_from_file: int = 0
    spliced_to_socket: int = 0
    sent_from_mapping: int = 0
    file_reads: list[str] = field(default_factory=list)


def read_trace(text: str, name: str) -> KernelView:
    """Follow `name`'s descriptors (dups included), accepted sockets and mappings of the
    file through an `strace -f` log whose mmap, munmap and sendto are raw (hex)."""
    view = KernelView()
    files: set[int] = set()
    sockets: set[int] = set()
    mappings: dict[int, int] = {}  # address: length
    unfinished: dict[str, str] = {}
    for line in text.splitlines():
        pid, _, entry = line.partition(" ")
        entry = entry.strip()
        if entry.endswith("<unfinished ...>"):
            unfinished[pid] = entry.removesuffix("<unfinished ...>").rstrip()
            continue
        resumed = _RESUMED.match(entry)
        if resumed:
            entry = unfinished.pop(pid, "") + resumed.group(1)
        match = _CALL.match(entry)
        if match is None:
            continue
        call, args, result_text = match.groups()
        result = int(result_text, 0)
        values = [
            int(a, 0) if re.fullmatch(r"-?(0x[0-9a-f]+|\d+)", a) else -1 for a in args.split(", ")
        ]
        first = values[0] if values else -1
        if result < 0:
            continue
        if call == "openat" and f'/{name}"' in args:
            files.add(result)
        elif call in ("accept", "accept4"):
            sockets.add(result)
        elif call == "close":
            files.discard(first)
            sockets.discard(first)
        elif call in ("dup", "dup2", "dup3") or (call == "fcntl" and "F_DUPFD" in args):
            if first in files:
                files.add(result)
        elif call in ("read", "pread64", "readv", "preadv", "preadv2") and first in files:
            view.file_reads.append(entry)
        elif call == "sendfile" and values[1] in files and first in sockets:
            view.sendfile += result
        elif call == "splice" and first in files:
            view.spliced_from_file += result
        elif call == "splice" and values[2] in sockets:
            view.spliced_to_socket += result
        elif call == "mmap" and values[4] in files:
            mappings[result] = values[1]
        elif call == "munmap":
            mappings.pop(first, None)
        elif call == "sendto" and first in sockets:
            address = values[1]
            if any(a <= address < a + n for a, n in mappings.items()):
                view.sent_from_mapping += result
    return view


ZERO_COPY_STRATEGIES = ("sendfile", "auto", "splice", "mmap")
CARRIER = {"sendfile": "sendfile", "auto": "sendfile", "splice": "splice", "mmap": "mmap"}


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("strategy", ZERO_COPY_STRATEGIES)
def test_zero_copy_under_strace(site: Site, strategy: str, loop_name: str, tmp_path: Any) -> None:
    """Outside Python's view too: for a whole file and a range, the kernel saw the body
    carried by sendfile(2), by splice(2) file->pipe->socket, or by send(2) from a
    mapping of the file; and no read of the file's descriptors."""
    trace = tmp_path / "trace"
    command = [
        "strace", "-f", "-qq", "--seccomp-bpf", "-o", str(trace),
        "-e", f"trace={TRACED_CALLS}", "-e", "raw=mmap,munmap,sendto",
        sys.executable, "-m", "zcserve", "serve", site.root, "--port", "0",
        "--strategy", strategy, "--loop", loop_name,
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(re.search(r":(\d+) \(", line).group(1))  # type: ignore[union-attr]
        whole = fetch(port, "/big.bin")
        part = fetch(port, "/big.bin", RANGE_HEADER)
    finally:
        # Stop the traced server itself; strace exits with it.
        for child in psutil.Process(proc.pid).children():
            child.terminate()
        proc.wait(20)
        proc.stdout.close()  # type: ignore[union-attr]
    first, last = RANGE
    expected_part = hashlib.sha256(site.read("big.bin")[first : last + 1]).hexdigest()
    assert (whole.status, whole.sha256) == (200, site.hashes["big.bin"])
    assert (part.status, part.sha256) == (206, expected_part)
    body = whole.length + part.length
    seen = read_trace(trace.read_text(), "big.bin")
    assert seen.file_reads == [], "the file was read into userspace"
    carried = {
        "sendfile": seen.sendfile,
        "splice": seen.spliced_from_file,
        "mmap": seen.sent_from_mapping,
    }
    assert carried == {way: body if way == CARRIER[strategy] else 0 for way in carried}
    if strategy == "splice":
        assert seen.spliced_to_socket == body


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_file_truncated_mid_transfer(tmp_path: Any, name: str, loop_name: str) -> None:
    """Shrinking the file mid-send ends the transfer with FileShrankError: no hang, no
    spin, and for mmap no SIGBUS (send(2) reports EFAULT instead). readall read the
    whole body before its first send, so it sends all of it (test_readall.py shrinks
    the file before that read)."""
    path = str(tmp_path / "shrinking.bin")
    size = 16 * 1024 * 1024
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    file = open_file(path)

    async def shrink_mid_send() -> int:
        server_side, client = await _pair()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        reader = Reader(client, limit=1024 * 1024)
        reader.start()
        stream = SocketStream(server_side, asyncio.get_running_loop(), send_timeout=5)
        sending = asyncio.ensure_future(make_strategy(name).send(stream, file, 0, size))
        try:
            async with asyncio.timeout(5):
                while len(reader.data) < 1024 * 1024:
                    await asyncio.sleep(0.01)
            os.truncate(path, 2 * 1024 * 1024)
            reader.limit = None
            async with asyncio.timeout(5):
                await sending
        finally:
            sending.cancel()
            server_side.close()
            reader.stop.set()
            reader.join(5)
            client.close()
        return stream.bytes_sent

    try:
        if name == "readall":
            assert run_on(loop_name, shrink_mid_send) == size
        else:
            with pytest.raises(FileShrankError):
                run_on(loop_name, shrink_mid_send)
    finally:
        file.close()
