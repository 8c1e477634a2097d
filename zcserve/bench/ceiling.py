"""The ceiling of each copy path: the same copy done by a plain blocking loop, with
no event loop and no HTTP around it, beside the async server's figure.

One file, one client, the copier on one CPU and the client on another. The ratio
server/ceiling says how much of its own path's speed the server keeps.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import resource
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

import psutil

from zcserve.bench.child import start_serve
from zcserve.bench.placement import split_cpus
from zcserve.bench.workspace import make_files
from zcserve.errors import RunError
from zcserve.units import format_size

GIB = 1024**3
CLIENT_BUFFER = 1024 * 1024
CEILING_STRATEGIES = ("sendfile", "readwrite", "fallback", "mmap", "splice")
CEILING_SIZES = (64 * 1024**2, GIB)
READWRITE_CHUNK = 64 * 1024
"""The classic read/write loop's buffer, as in the reference measurement."""
COPY_CHUNK = 1024 * 1024


def _send_sendfile(sock: socket.socket, fd: int, size: int) -> None:
    offset = 0
    while offset < size:
        sent = os.sendfile(sock.fileno(), fd, offset, min(2 * COPY_CHUNK, size - offset))
        if sent == 0:
            raise EOFError("file shrank")
        offset += sent


def _send_readwrite(sock: socket.socket, fd: int, size: int) -> None:
    left = size
    while left:
        data = os.read(fd, min(READWRITE_CHUNK, left))
        if not data:
            raise EOFError("file shrank")
        sock.sendall(data)
        left -= len(data)


def _send_fallback(sock: socket.socket, fd: int, size: int) -> None:
    buffer = memoryview(bytearray(256 * 1024))
    offset = 0
    while offset < size:
        got = os.preadv(fd, [buffer[: min(len(buffer), size - offset)]], offset)
        if not got:
            raise EOFError("file shrank")
        sock.sendall(buffer[:got])
        offset += got


def _send_mmap(sock: socket.socket, fd: int, size: int) -> None:
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapping:
        view = memoryview(mapping)
        for start in range(0, size, COPY_CHUNK):
            piece = view[start : start + COPY_CHUNK]
            sock.sendall(piece)
            piece.release()
        view.release()


def _send_splice(sock: socket.socket, fd: int, size: int) -> None:
    import fcntl

    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, COPY_CHUNK)
        offset = 0
        while offset < size:
            filled = os.splice(fd, write_end, min(COPY_CHUNK, size - offset), offset)
            if not filled:
                raise EOFError("file shrank")
            offset += filled
            while filled:
                filled -= os.splice(read_end, sock.fileno(), filled)
    finally:
        os.close(read_end)
        os.close(write_end)


COPIERS: dict[str, Callable[[socket.socket, int, int], None]] = {
    "sendfile": _send_sendfile,
    "readwrite": _send_readwrite,
    "fallback": _send_fallback,
    "mmap": _send_mmap,
    "splice": _send_splice,
}


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _blocking_server(
    strategy: str, path: str, listener: socket.socket, cpu: int | None, report: Connection
) -> None:
    """Child process: accept one client, copy the file with the plain loop, report CPU."""
    _pin(cpu)
    conn, _ = listener.accept()
    fd = os.open(path, os.O_RDONLY)
    before = resource.getrusage(resource.RUSAGE_SELF)
    COPIERS[strategy](conn, fd, os.fstat(fd).st_size)
    after = resource.getrusage(resource.RUSAGE_SELF)
    conn.close()
    os.close(fd)
    report.send((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def download(sock: socket.socket, expect: int) -> int:
    """Receive until EOF or `expect` body bytes, into one reused buffer; return bytes."""
    buffer = bytearray(CLIENT_BUFFER)
    got = 0
    while got < expect:
        n = sock.recv_into(buffer)
        if not n:
            break
        got += n
    return got


@dataclass(frozen=True)
class PathFigure:
    """One transfer: how fast and how much CPU the sending side spent."""

    seconds: float
    cpu_seconds: float
    size: int

    @property
    def gbps(self) -> float:
        return self.size / self.seconds / 1e9

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu_seconds / (self.size / GIB)


def ceiling_once(strategy: str, path: str, cpus: tuple[int | None, int | None]) -> PathFigure:
    """One plain-loop transfer of `path` over loopback TCP."""
    size = os.path.getsize(path)
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_blocking_server, args=(strategy, path, listener, cpus[0], sender))
    child.start()
    sender.close()  # the child's copy is the only one left: recv() sees its death as EOF
    _pin(cpus[1])
    try:
        with socket.create_connection(listener.getsockname()) as client:
            started = time.perf_counter()
            got = download(client, size)
            seconds = time.perf_counter() - started
        try:
            cpu = receiver.recv()
        except EOFError:
            raise RunError(f"{strategy}: the plain copy loop died before reporting") from None
    finally:
        child.join(30)
        listener.close()
    if got != size:
        raise RunError(f"{strategy}: received {got} of {size} bytes")
    return PathFigure(seconds, cpu, size)


def server_once(
    strategy: str, path: str, cpus: tuple[int | None, int | None], loop: str
) -> PathFigure:
    """One HTTP download of `path` from `zcserve serve` pinned to the server CPU."""
    folder, name = os.path.split(path)
    size = os.path.getsize(path)
    args = [folder, "--port", "0", "--strategy", strategy, "--loop", loop]
    if strategy == "readwrite":
        args += ["--chunk-size", str(READWRITE_CHUNK)]
    pin = None if cpus[0] is None else {cpus[0]}
    with start_serve(args, cpus=pin) as child:
        server = psutil.Process(child.pid)
        _pin(cpus[1])
        with socket.create_connection(("127.0.0.1", child.port)) as client:
            client.sendall(f"GET /{name} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(1)
                if not chunk:
                    raise RunError(f"{strategy}: zcserve serve closed before a response head")
                head += chunk
            before = server.cpu_times()
            started = time.perf_counter()
            got = download(client, size)
            seconds = time.perf_counter() - started
            after = server.cpu_times()
    if got != size:
        raise RunError(f"{strategy}: received {got} of {size} bytes")
    cpu = (after.user - before.user) + (after.system - before.system)
    return PathFigure(seconds, cpu, size)


@dataclass(frozen=True)
class CeilingRow:
    """Medians over repeats for one strategy and file size."""

    strategy: str
    size: int
    ceiling_gbps: float
    ceiling_cpu_per_gib: float
    server_gbps: float
    server_cpu_per_gib: float

    @property
    def ratio(self) -> float:
        return self.server_gbps / self.ceiling_gbps if self.ceiling_gbps else 0.0

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "ratio": self.ratio}


def run_ceiling(
    paths: list[str], strategies: tuple[str, ...], repeat: int, loop: str
) -> list[CeilingRow]:
    """Ceiling and server figures for every strategy and file; medians of `repeat` runs."""
    cpus = split_cpus()
    original = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    rows = []
    try:
        for path in paths:
            for strategy in strategies:
                plain = [ceiling_once(strategy, path, cpus) for _ in range(repeat)]
                served = [server_once(strategy, path, cpus, loop) for _ in range(repeat)]
                rows.append(
                    CeilingRow(
                        strategy,
                        os.path.getsize(path),
                        statistics.median(f.gbps for f in plain),
                        statistics.median(f.cpu_per_gib for f in plain),
                        statistics.median(f.gbps for f in served),
                        statistics.median(f.cpu_per_gib for f in served),
                    )
                )
    finally:
        if original is not None:
            os.sched_setaffinity(0, original)
    return rows


def run_ceiling_sizes(
    sizes: tuple[int, ...], strategies: tuple[str, ...], repeat: int, loop: str
) -> list[CeilingRow]:
    """`run_ceiling` on one file of each size, made in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="zcserve-ceiling-") as folder:
        paths = make_files(folder, sizes)
        return run_ceiling([paths[size] for size in sizes], strategies, repeat, loop)


def ceiling_table(rows: list[CeilingRow]) -> list[str]:
    """The rows as Markdown table lines, the server's figure beside its ceiling."""
    lines = [
        "| strategy | size | ceiling GB/s | ceiling CPU-s/GiB | server GB/s | "
        "server CPU-s/GiB | server/ceiling |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.strategy} | {format_size(row.size)} | {row.ceiling_gbps:.2f} "
            f"| {row.ceiling_cpu_per_gib:.2f} | {row.server_gbps:.2f} "
            f"| {row.server_cpu_per_gib:.2f} | {row.ratio:.0%} |"
        )
    return lines
