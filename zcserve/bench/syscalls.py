"""`zcserve bench --mode syscalls`: where each strategy's work goes, one request at a time.

For each strategy and size a server is started, warmed with one request, and sent a
fixed number of keep-alive GETs twice: once untraced, counting the context switches
of all its threads (`/proc/PID/task/*/status`), and once under `strace -f`, counting
its syscalls by name and the file bytes that `read`-family calls copied into
userspace. Tracing stops every syscall, so the context switches come from the
untraced pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from rich.console import Console

from zcserve.bench.child import start_serve
from zcserve.bench.workspace import make_files
from zcserve.errors import ConfigError, RunError
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import format_size

SYSCALL_STRATEGIES = tuple(name for name in STRATEGY_NAMES if name != "auto")
"""Every strategy by its own name: auto is one of them at run time."""
SYSCALL_SIZES = (4 * 1024, 1024 * 1024, 64 * 1024 * 1024)
BYTES_PER_SIZE = 256 * 1024 * 1024
"""Requests per size are chosen so each pass moves about this much (200 at most)."""
ATTACH_TIMEOUT = 10.0
FILE_READS = frozenset({"read", "pread64", "readv", "preadv", "preadv2"})
EXPLANATION = (
    "readwrite reads each chunk with read(2) in aiofiles' thread pool (the futex calls "
    "are the hand-offs to and from that thread); readall reads the whole body there in "
    "one read(2) before its first send; sendfile and mmap read nothing into userspace; "
    "splice makes two calls per chunk (file to pipe, pipe to socket); memory read the "
    "file once, before these requests, and sends each answer, head and body, in one sendto."
)

# `1234 read(15</srv/x.bin>, ...) = 4096`, or the same split into an
# `<unfinished ...>` line and a `<... read resumed>` line.
_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<fd>\d+)?(?:<(?P<path>[^>]*)>)?")
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?P<name>\w+) resumed>")
_RESULT = re.compile(r"= (?P<value>-?\d+)(?: \w+ \(.*\))?$")


@dataclass
class SyscallRow:
    """One strategy at one size, every figure per request."""

    strategy: str
    size: int
    requests: int
    per_request: dict[str, float] = field(default_factory=dict)
    file_bytes_read: float = 0.0
    """Bytes of the served file copied into userspace by read-family syscalls."""
    bytes_received: float = 0.0
    """Bytes of response (head and body) the client received."""
    voluntary_switches: float = 0.0
    involuntary_switches: float = 0.0


def requests_for(size: int) -> int:
    return max(2, min(200, BYTES_PER_SIZE // size))


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of `pid` so far."""
    voluntary = involuntary = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
        except FileNotFoundError:
            continue  # a thread that ended
    return voluntary, involuntary


def fetch(url: str, count: int) -> int:
    """GET `url` `count` times on one keep-alive connection; return the bytes received."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    received = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        reader = sock.makefile("rb")
        for _ in range(count):
            sock.sendall(request)
            length = None
            while (line := reader.readline()) not in (b"\r\n", b""):
                received += len(line)
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise RunError(f"GET {url}: no Content-Length in the answer")
            received += 2
            left = length
            while left:
                chunk = reader.read(min(left, 1024 * 1024))
                if not chunk:
                    raise RunError(f"GET {url}: the body ended {left} bytes early")
                left -= len(chunk)
                received += len(chunk)
    return received


def parse_strace(text: str, served: str) -> tuple[Counter[str], int]:
    """Syscall counts by name, and bytes read from files under `served` (a folder)."""
    counts: Counter[str] = Counter()
    file_bytes = 0
    reading: dict[str, bool] = {}  # pid -> its unfinished call reads a served file
    for line in text.splitlines():
        resumed = _RESUMED.match(line)
        if resumed is not None:
            reads_served = reading.pop(resumed["pid"], False)
        else:
            call = _CALL.match(line)
            if call is None:
                continue  # signals, exits
            counts[call["name"]] += 1
            path = call["path"] or ""
            reads_served = call["name"] in FILE_READS and path.startswith(served)
            if line.endswith("<unfinished ...>"):
                reading[call["pid"]] = reads_served
                continue
        result = _RESULT.search(line)
        if reads_served and result is not None and int(result["value"]) > 0:
            file_bytes += int(result["value"])
    return counts, file_bytes


def _threads(pid: int) -> list[int]:
    return [int(task) for task in os.listdir(f"/proc/{pid}/task")]


def _wait_traced(pid: int) -> None:
    """Until every thread of `pid` reports a tracer: strace has attached."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while time.monotonic() < deadline:
        traced = True
        for tid in _threads(pid):
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                tracer = next((ln for ln in status if ln.startswith("TracerPid:")), "0")
            traced = traced and tracer.split()[-1] != "0"
        if traced:
            return
        time.sleep(0.02)
    raise RunError(f"strace did not attach to process {pid} within {ATTACH_TIMEOUT:g} s")


def traced_counts(pid: int, url: str, requests: int, served: str) -> tuple[Counter[str], int, int]:
    """Run `requests` GETs while strace follows every thread of `pid`."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as log:
        command = ["strace", "-f", "-qq", "-y", "-o", log.name]
        for tid in _threads(pid):
            command += ["-p", str(tid)]
        tracer = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            _wait_traced(pid)
            received = fetch(url, requests)
        finally:
            tracer.send_signal(signal.SIGINT)  # detach; the server goes on untraced
            try:
                _, err = tracer.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                tracer.kill()
                _, err = tracer.communicate()
        if tracer.returncode not in (0, -signal.SIGINT) and "attach" in (err or ""):
            raise RunError(f"strace could not attach: {err.strip().splitlines()[-1]}")
        counts, file_bytes = parse_strace(log.read(), served)
    return counts, file_bytes, received


def measure(strategy: str, folder: str, size: int, loop: str) -> SyscallRow:
    name = f"{format_size(size)}.bin"
    requests = requests_for(size)
    args = [folder, "--port", "0", "--strategy", strategy, "--loop", loop]
    with start_serve(args, stderr=subprocess.DEVNULL) as child:
        url = f"{child.url}/{name}"
        fetch(url, 1)  # the open-file cache, the thread pool, the first-use costs
        before = context_switches(child.pid)
        fetch(url, requests)
        after = context_switches(child.pid)
        counts, file_bytes, received = traced_counts(
            child.pid, url, requests, os.path.realpath(folder)
        )
    return SyscallRow(
        strategy=strategy,
        size=size,
        requests=requests,
        per_request={call: n / requests for call, n in counts.most_common()},
        file_bytes_read=file_bytes / requests,
        bytes_received=received / requests,
        voluntary_switches=(after[0] - before[0]) / requests,
        involuntary_switches=(after[1] - before[1]) / requests,
    )


def run_syscalls(
    strategies: Sequence[str], sizes: Sequence[int], loop: str, out: str, console: Console
) -> list[SyscallRow]:
    """Measure every strategy at every size; print the table, write syscalls.json."""
    if shutil.which("strace") is None:
        raise ConfigError("--syscalls needs strace; install it (apt-get install strace)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="zcserve-syscalls-") as folder:
        make_files(folder, sizes)
        for size in sizes:
            for strategy in strategies:
                rows.append(measure(strategy, folder, size, loop))
                console.print(_row_text(rows[-1]), soft_wrap=True, highlight=False)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "syscalls.json")
    with open(path, "w") as handle:
        json.dump(syscalls_json(rows), handle, indent=2)
    console.print(syscalls_table(rows), markup=False, highlight=False, soft_wrap=True)
    console.print(EXPLANATION, soft_wrap=True)
    console.print(f"wrote {path}")
    return rows


def syscalls_json(rows: Sequence[SyscallRow]) -> dict[str, object]:
    """`{"strategies": {NAME: {SIZE: {"size": ..., "per_request": {...}, ...}}}}`."""
    strategies: dict[str, dict[str, object]] = {}
    for row in rows:
        strategies.setdefault(row.strategy, {})[format_size(row.size)] = asdict(row)
    return {"strategies": strategies, "explanation": EXPLANATION}


def syscalls_table(rows: Sequence[SyscallRow], top: int = 5) -> str:
    """A Markdown table: the busiest calls, file bytes read and switches, per request."""
    lines = [
        "| strategy | size | syscalls | busiest calls | file bytes read | switches vol/invol |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        busiest = ", ".join(
            f"{name} {count:.1f}" for name, count in list(row.per_request.items())[:top]
        )
        lines.append(
            f"| {row.strategy} | {format_size(row.size)} | {sum(row.per_request.values()):.1f} "
            f"| {busiest} | {row.file_bytes_read:,.0f} "
            f"| {row.voluntary_switches:.1f} / {row.involuntary_switches:.1f} |"
        )
    return "\n".join(lines)


def _row_text(row: SyscallRow) -> str:
    calls = ", ".join(
        f"{name} {count:.2f}".rstrip("0").rstrip(".") for name, count in row.per_request.items()
    )
    return (
        f"{row.strategy:9} {format_size(row.size):>6} ({row.requests} requests), per request: "
        f"{calls}; file bytes read into userspace {row.file_bytes_read:,.0f}; "
        f"received {row.bytes_received:,.0f}; context switches "
        f"{row.voluntary_switches:.1f} voluntary, {row.involuntary_switches:.1f} involuntary"
    )
