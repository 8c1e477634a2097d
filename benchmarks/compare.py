"""zcserve beside nginx, aiohttp and http.server, driven by wrk and `zcserve load`.

Run by `make compare`, which installs nginx and wrk (apt-get) and aiohttp (pip).
Every server is pinned to CPU 0 and every load tool to CPU 1; each cell is run
`--repeat` times and the median is reported, with the server's CPU seconds per
GiB of body sent beside every throughput.

Usage: python benchmarks/compare.py [--quick] [--duration S] [--repeat N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import psutil

from zcserve.bench.child import start_serve, stop_child
from zcserve.demo import write_file
from zcserve.load.run import LoadOptions, run_load
from zcserve.units import parse_size

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1024**3
SIZES = ("4KiB", "64KiB", "1MiB", "64MiB")
CONCURRENCY = (1, 64, 256)
BIG = "1GiB"
SERVER_CPU, CLIENT_CPU = 0, 1

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile {sendfile};
    tcp_nopush {nopush};
    tcp_nodelay on;
    keepalive_requests 10000000;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
    }}
}}
"""


def free_port() -> int:
    # nginx cannot report a port-0 bind; a race with another binder is acceptable here.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


@dataclass
class Running:
    """A started server: its process (tree) and port."""

    proc: subprocess.Popen[str]
    port: int

    def cpu_seconds(self) -> float:
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for process in [root, *root.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
        return total


@dataclass(frozen=True)
class ServerSpec:
    name: str
    start: Callable[[str, str], Running]
    """(root, scratch folder) -> a running server."""


def _read_port(proc: subprocess.Popen[str], pattern: str) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return int(match.group(1))
    proc.kill()
    raise RuntimeError(f"{proc.args!r} did not announce a port")


def zcserve_spec(strategy: str, workers: str) -> ServerSpec:
    def start(root: str, tmp: str) -> Running:
        args = [root, "--port", "0", "--strategy", strategy, "--workers", workers]
        # One worker: pinned to the server CPU. `auto` workers: every CPU, as deployed.
        child = start_serve(args, cpus={SERVER_CPU} if workers == "1" else None)
        return Running(child.proc, child.port)

    return ServerSpec(f"zcserve {strategy} w={workers}", start)


def nginx_spec(sendfile: str, nopush: str) -> ServerSpec:
    def start(root: str, tmp: str) -> Running:
        port = free_port()
        conf = os.path.join(tmp, f"nginx-{sendfile}-{nopush}.conf")
        with open(conf, "w") as out:
            out.write(
                NGINX_CONF.format(tmp=tmp, port=port, root=root, sendfile=sendfile, nopush=nopush)
            )
        proc = subprocess.Popen(
            ["nginx", "-c", conf, "-p", tmp],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin(SERVER_CPU),
        )
        _wait_port(port)
        return Running(proc, port)

    label = f"nginx sendfile={sendfile}" + (f" nopush={nopush}" if sendfile == "on" else "")
    return ServerSpec(label, start)


def aiohttp_spec(loop: str) -> ServerSpec:
    def start(root: str, tmp: str) -> Running:
        command = [sys.executable, os.path.join(HERE, "aiohttp_static.py"), root, loop]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, preexec_fn=pin(SERVER_CPU)
        )
        return Running(proc, _read_port(proc, r"127\.0\.0\.1:(\d+)"))

    return ServerSpec(f"aiohttp static {loop}", start)


def http_server_spec() -> ServerSpec:
    def start(root: str, tmp: str) -> Running:
        port = free_port()
        command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        command += ["--directory", root]
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=pin(SERVER_CPU),
        )  # fmt: skip
        _wait_port(port)
        return Running(proc, port)

    return ServerSpec("python -m http.server", start)


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextmanager
def running(spec: ServerSpec, root: str, tmp: str) -> Iterator[Running]:
    server = spec.start(root, tmp)
    try:
        yield server
    finally:
        stop_child(server.proc)


@dataclass
class Cell:
    """One measurement: a server, a tool, a file size and a concurrency."""

    server: str
    tool: str
    size: str
    connections: int
    requests_per_second: float = 0.0
    megabytes_per_second: float = 0.0
    p99_ms: float = 0.0
    cpu_per_gib: float = 0.0
    errors: int = 0
    runs: list[dict[str, float]] = field(default_factory=list)


def run_wrk(url: str, connections: int, duration: float) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    out = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=pin(CLIENT_CPU), timeout=duration + 60
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    count = int(errors.group(1)) if errors else 0
    if socket_errors:
        count += sum(int(g) for g in socket_errors.groups())
    # wrk's Transfer/sec counts every byte read, heads included, finished or not.
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    units = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    return {
        "megabytes_per_second": float(transfer.group(1)) * units[transfer.group(2)] / 1e6
        if transfer
        else 0.0,
        "requests_per_second": rps,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
        "errors": count,
    }


def run_zcload(url: str, connections: int, duration: float, tmp: str) -> dict[str, float]:
    # In this process, which main() pinned to the client CPU: no start-up per run.
    options = LoadOptions(urls=(url,), connections=connections, duration=duration, processes=1)
    data = run_load(options).to_json()
    return {
        # Bytes that arrived in the window, so unfinished 64 MiB responses count too.
        "megabytes_per_second": data["window_megabytes_per_second"],
        "requests_per_second": data["requests_per_second"],
        "p99_ms": data["latency_ms"]["p99"],
        "errors": data["error_total"],
    }


def measure(
    server: Running, tool: str, url: str, size: int, connections: int, duration: float, tmp: str
) -> dict[str, float]:
    before = server.cpu_seconds()
    if tool == "wrk":
        figures = run_wrk(url, connections, duration)
    else:
        figures = run_zcload(url, connections, duration, tmp)
    cpu = server.cpu_seconds() - before
    body = figures["megabytes_per_second"] * 1e6 * duration
    figures["cpu_per_gib"] = cpu / (body / GIB) if body else 0.0
    return figures


def single_download(server: Running, name: str, size: int) -> dict[str, float]:
    """One connection, one GET of the big file, timed by the client (curl)."""
    before = server.cpu_seconds()
    url = f"http://127.0.0.1:{server.port}/{name}"
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url],
        capture_output=True, text=True, preexec_fn=pin(CLIENT_CPU), timeout=600,
    ).stdout.split()  # fmt: skip
    cpu = server.cpu_seconds() - before
    seconds, got = float(out[0]), int(out[1])
    return {
        "requests_per_second": 1 / seconds,
        "megabytes_per_second": got / seconds / 1e6,
        "p99_ms": seconds * 1000,
        "cpu_per_gib": cpu / (size / GIB),
        "errors": 0 if got == size else 1,
    }


def median_cell(cell: Cell) -> Cell:
    for key in ("requests_per_second", "megabytes_per_second", "p99_ms", "cpu_per_gib"):
        setattr(cell, key, statistics.median(run[key] for run in cell.runs))
    cell.errors = int(sum(run["errors"] for run in cell.runs))
    return cell


def all_servers(quick: bool) -> list[ServerSpec]:
    strategies = (
        ("sendfile", "mmap") if quick else ("sendfile", "readwrite", "fallback", "mmap", "splice")
    )
    specs = [zcserve_spec(s, "1") for s in strategies]
    specs += [zcserve_spec(s, "auto") for s in (("sendfile",) if quick else strategies)]
    specs += [nginx_spec("on", "on"), nginx_spec("on", "off"), nginx_spec("off", "off")]
    specs += (
        [aiohttp_spec("uvloop")] if quick else [aiohttp_spec("uvloop"), aiohttp_spec("asyncio")]
    )
    specs += [] if quick else [http_server_spec()]
    return specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer servers and cells")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated file sizes")
    parser.add_argument(
        "--no-single", action="store_true", help="skip the single-connection 1 GiB download"
    )
    parser.add_argument(
        "--concurrency", default=",".join(map(str, CONCURRENCY)), help="comma-separated"
    )
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("compare: needs 2 CPUs to separate server and client", file=sys.stderr)
        return 2
    for tool in ("nginx", "wrk", "curl"):
        if shutil.which(tool) is None:
            print(f"compare: {tool} not found (make compare installs it)", file=sys.stderr)
            return 2
    os.sched_setaffinity(0, {CLIENT_CPU})  # zcserve load runs in this process
    sizes = tuple(args.sizes.split(","))
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    if args.quick:
        sizes, concurrency = sizes[:1] + sizes[-1:], concurrency[:2]
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="zcserve-compare-") as tmp:
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        for size in (*sizes, BIG):
            write_file(os.path.join(root, f"{size}.bin"), parse_size(size))
        for spec in all_servers(args.quick):
            with running(spec, root, tmp) as server:
                for size in sizes:
                    url = f"http://127.0.0.1:{server.port}/{size}.bin"
                    for connections in concurrency:
                        for tool in ("wrk", "zcserve-load"):
                            cell = Cell(spec.name, tool, size, connections)
                            for _ in range(args.repeat):
                                cell.runs.append(
                                    measure(server, tool, url, parse_size(size), connections,
                                            args.duration, tmp)
                                )  # fmt: skip
                            cells.append(median_cell(cell))
                            _print_cell(cell)
                if args.no_single:
                    continue
                big = Cell(spec.name, "curl", BIG, 1)
                for _ in range(args.repeat):
                    big.runs.append(single_download(server, f"{BIG}.bin", parse_size(BIG)))
                cells.append(median_cell(big))
                _print_cell(big)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    with open(os.path.join(args.out, f"compare-{stamp}.json"), "w") as out:
        json.dump([asdict(c) for c in cells], out, indent=1)
    table = markdown(cells)
    with open(os.path.join(args.out, f"compare-{stamp}.md"), "w") as out:
        out.write(table)
    print(table)
    return 0


def _print_cell(cell: Cell) -> None:
    print(
        f"{cell.server:28} {cell.tool:12} {cell.size:>6} c={cell.connections:<4} "
        f"{cell.requests_per_second:10.0f} req/s {cell.megabytes_per_second:9.1f} MB/s "
        f"p99 {cell.p99_ms:8.2f} ms cpu {cell.cpu_per_gib:6.2f} s/GiB err {cell.errors}",
        flush=True,
    )


def markdown(cells: list[Cell]) -> str:
    lines = [
        "| server | tool | size | conns | req/s | MB/s | p99 ms | server CPU-s/GiB | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.server} | {c.tool} | {c.size} | {c.connections} | {c.requests_per_second:,.0f} "
            f"| {c.megabytes_per_second:,.1f} | {c.p99_ms:.2f} | {c.cpu_per_gib:.2f} | {c.errors} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
