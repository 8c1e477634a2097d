"""Copy strategies over real TCP sockets, under both loops; and the proof that
`sendfile` moves no file byte through userspace."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import aiofiles
import psutil
import pytest

from tests.conftest import LOOPS, SIZES, Site
from tests.httpclient import get
from tests.serverthread import start_server
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


# The proof: sendfile(2) is issued and no file byte is read into Python. --------------


class Spy:
    """Counts os.sendfile calls and bytes; records any read of a served file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sendfile_calls = 0
        self.sendfile_bytes = 0
        self.empty_calls = 0
        self.reads: list[str] = []
        real_sendfile = os.sendfile

        def counting_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
            if count <= 0:
                self.empty_calls += 1
            sent = real_sendfile(out_fd, in_fd, offset, count)
            self.sendfile_calls += 1
            self.sendfile_bytes += sent
            return sent

        monkeypatch.setattr(os, "sendfile", counting_sendfile)
        for name in ("read", "pread", "preadv", "readv"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._recording(name, real))

        def no_aiofiles(*args: object, **kwargs: object) -> None:
            self.reads.append("aiofiles.open")
            raise AssertionError("sendfile strategy opened the file for reading")

        monkeypatch.setattr(aiofiles, "open", no_aiofiles)

    def _recording(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fd: int, *args: Any) -> Any:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.endswith(".bin"):
                self.reads.append(f"{name}({target})")
            return real(fd, *args)

        return wrapper


@pytest.mark.parametrize("loop_name", LOOPS)
def test_sendfile_strategy_uses_sendfile_and_no_userspace_reads(
    site: Site, loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    server = start_server(root=site.root, strategy="sendfile", loop=loop_name)
    try:
        big = get(server.port, "/big.bin")
        ranged = get(server.port, "/64k1.bin", {"Range": "bytes=10-5009"})
        empty = get(server.port, "/empty.bin")
    finally:
        server.stop()  # joins the server thread: every call it made is counted
    assert hashlib.sha256(big.body).hexdigest() == site.hashes["big.bin"]
    assert ranged.body == site.read("64k1.bin")[10:5010]
    assert empty.status == 200 and empty.body == b""
    assert spy.empty_calls == 0, "sendfile was called for zero bytes"
    assert spy.sendfile_bytes == SIZES["big.bin"] + 5000
    assert spy.sendfile_calls >= SIZES["big.bin"] // strategies.SENDFILE_MAX_CHUNK
    assert spy.reads == [], f"file bytes passed through userspace: {spy.reads[:5]}"


def test_spy_sees_userspace_reads(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof above can fail: the same spy catches the fallback's reads."""
    spy = Spy(monkeypatch)
    server = start_server(root=site.root, strategy="fallback", loop="uvloop")
    try:
        assert get(server.port, "/64k1.bin").body == site.read("64k1.bin")
    finally:
        server.stop()
    assert spy.sendfile_calls == 0
    assert spy.reads and spy.reads[0].startswith("preadv(")


_STRACE_LINE = re.compile(r"^(\d+)\s+(\w+)\((\d+)?(.*)\)\s+=\s+(-?\d+)")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
@pytest.mark.parametrize("loop_name", LOOPS)
def test_sendfile_under_strace(site: Site, loop_name: str, tmp_path: Any) -> None:
    """Outside Python's view too: the kernel saw sendfile(2) and no read of the file."""
    trace = tmp_path / "trace"
    command = [
        "strace", "-f", "-qq", "-o", str(trace),
        "-e", "trace=openat,close,read,pread64,preadv,preadv2,readv,sendfile",
        sys.executable, "-m", "zcserve", "serve", site.root, "--port", "0",
        "--strategy", "sendfile", "--loop", loop_name,
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(re.search(r":(\d+) \(", line).group(1))  # type: ignore[union-attr]
        body = get(port, "/big.bin").body
    finally:
        # Stop the traced server itself; strace exits with it.
        for child in psutil.Process(proc.pid).children():
            child.terminate()
        proc.wait(20)
        proc.stdout.close()  # type: ignore[union-attr]
    assert hashlib.sha256(body).hexdigest() == site.hashes["big.bin"]
    file_fds: set[tuple[str, str]] = set()
    sent = 0
    file_reads = []
    for entry in trace.read_text().splitlines():
        match = _STRACE_LINE.match(entry)
        if not match:
            continue
        pid, call, fd, rest, result = match.groups()
        if call == "openat" and "big.bin" in rest and int(result) >= 0:
            file_fds.add((pid, result))
        elif call == "close" and fd is not None:
            file_fds.discard((pid, fd))
        elif call == "sendfile" and int(result) > 0:
            sent += int(result)
        elif call in ("read", "pread64", "preadv", "preadv2", "readv"):
            if (pid, fd) in file_fds:
                file_reads.append(entry)
    assert sent == SIZES["big.bin"]
    assert file_reads == []


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_file_truncated_mid_transfer(tmp_path: Any, name: str, loop_name: str) -> None:
    """Shrinking the file mid-send ends the transfer with FileShrankError: no hang, no
    spin, and for mmap no SIGBUS (send(2) reports EFAULT instead)."""
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
        with pytest.raises(FileShrankError):
            run_on(loop_name, shrink_mid_send)
    finally:
        file.close()
