"""`zcserve bench`: every strategy, several file sizes, several concurrency levels.

With no arguments it generates its files in a temporary folder, starts
`zcserve serve` once per strategy (pinned to one CPU), sweeps the concurrency
levels with the load generator (pinned to the others, one load process per CPU
unless --load-processes says otherwise), stops every process it started, and
writes a table, results.json, results.csv and plots (those need matplotlib, the
`zcserve[bench]` extra; without it everything else is written and one line says
how to get them). Each cell records the load generator's CPU beside the server's
and is marked client-bound when the load generator, not the server, was the limit.
With --url the server is one the bench did not start: its CPU and RSS are `n/a`,
and the caption says it was not pinned.

`--seed-experiment` reproduces the classic teaching experiment (one 1 GiB file,
10 sequential raw downloads: readall, the lab's naive server, against readwrite and
sendfile); `--ceiling` measures
each copy path's plain blocking loop beside the server's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psutil
from rich.console import Console

from zcserve.bench.ceiling import CEILING_STRATEGIES, run_ceiling, split_cpus
from zcserve.bench.child import start_serve
from zcserve.bench.results import (
    BenchRow,
    PlotsUnavailable,
    is_client_bound,
    markdown_table,
    print_table,
    shown,
    write_plots,
    write_results,
)
from zcserve.bench.syscalls import run_syscalls
from zcserve.demo import write_file
from zcserve.errors import ConfigError, RunError
from zcserve.helptext import DefaultsFormatter
from zcserve.load.raw import RawOptions, run_raw
from zcserve.load.run import LoadOptions, run_load
from zcserve.runtime import LOOP_NAMES
from zcserve.server.strategies import STRATEGY_NAMES, StrategyName
from zcserve.units import format_size, parse_duration, parse_size

DEFAULT_STRATEGIES = ("readwrite", "sendfile", "fallback")
DEFAULT_SIZES = (4 * 1024, 1024 * 1024, 64 * 1024 * 1024)
DEFAULT_CONCURRENCY = (1, 8, 64, 512)
DEFAULT_DURATION = 2.5
DEFAULT_WARMUP = 0.5
SEED_SIZE = 1024**3
SEED_DOWNLOADS = 10


@dataclass(frozen=True)
class BenchOptions:
    """One bench run, validated once."""

    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    sizes: tuple[int, ...] = DEFAULT_SIZES
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    duration: float = DEFAULT_DURATION
    warmup: float = DEFAULT_WARMUP
    loop: str = "uvloop"
    url: str | None = None
    out: str | None = None
    load_processes: int | None = None
    """Load generator processes; None is one per CPU the load runs on (`Placement`)."""

    def __post_init__(self) -> None:
        for name in self.strategies:
            if name not in STRATEGY_NAMES:
                raise ConfigError(
                    f"unknown strategy {name!r}; expected some of {', '.join(STRATEGY_NAMES)}"
                )
        if not self.strategies or not self.sizes or not self.concurrency:
            raise ConfigError("strategies, sizes and concurrency each need at least one value")
        if any(c < 1 for c in self.concurrency):
            raise ConfigError("concurrency levels must be 1 or more")
        if any(s < 1 for s in self.sizes):
            raise ConfigError("file sizes must be 1 byte or more")
        if not self.duration > 0 or self.warmup < 0:
            raise ConfigError("duration must be more than 0 and warm-up 0 or more seconds")
        if self.loop not in LOOP_NAMES:
            raise ConfigError(
                f"unknown loop {self.loop!r}; expected one of {', '.join(LOOP_NAMES)}"
            )
        if self.load_processes is not None and self.load_processes < 1:
            raise ConfigError(f"--load-processes must be 1 or more, not {self.load_processes}")
        if self.url is not None and not self.url.startswith("http://"):
            raise ConfigError(f"bad --url {self.url!r}; expected http://host:port/ or a file URL")


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the load generator run on, how many load processes
    share the load generator's CPUs, and how to say so.

    The server gets the first CPU; the load generator (this process, and the workers
    it spawns, which inherit its affinity) gets the rest. By default one load process
    per load CPU: on 2 CPUs that is one process, in the bench's own process, on CPU 1.
    A second process on that one core only adds switching between two event loops:
    measured on 2 CPUs (4 KiB at 64 connections, 1 MiB at 8, interleaved rounds), both
    settings were server-bound at the same rates within noise, and two processes spent
    up to a third more client CPU per byte. More processes than load CPUs is opt-in."""

    server: set[int] | None
    client: set[int] | None
    load_processes: int = 1
    external: bool = False
    """The server is at --url: the bench did not start it, so it neither pinned it
    nor sees its CPU and memory."""

    @classmethod
    def detect(cls, load_processes: int | None = None, *, external: bool = False) -> Placement:
        server_cpu, client_cpu = split_cpus()
        if server_cpu is None or client_cpu is None:
            return cls(None, None, load_processes or 1, external)
        cpus = set(os.sched_getaffinity(0))
        client = cpus - {server_cpu}
        return cls({server_cpu}, client, load_processes or len(client), external)

    @property
    def client_cpus(self) -> int:
        """CPUs the load can use: those it may run on, at most one per process (each
        process is one event loop). The client's CPU share is measured against these."""
        allowed = len(self.client) if self.client else len(_affinity())
        return max(1, min(allowed, self.load_processes))

    def describe(self) -> str:
        n = self.load_processes
        processes = f"{n} load process" + ("es" if n > 1 else " (in the bench's own process)")
        if self.external:
            load = f"CPU {sorted(self.client)}" if self.client is not None else "any CPU"
            return (
                "external server (--url): not started, pinned or watched by the bench, "
                f"its CPU and RSS not measured; load generator on {load} as {processes}"
            )
        if self.server is None or self.client is None:
            return f"one CPU: server and load generator could not be separated; {processes}"
        return (
            f"server pinned to CPU {sorted(self.server)}, "
            f"load generator on CPU {sorted(self.client)} as {processes}"
        )

    def to_json(self) -> dict[str, Any]:
        """The placement for results.json's meta."""
        return {
            "placement": self.describe(),
            "server_cpus": sorted(self.server) if self.server and not self.external else None,
            "external_server": self.external,
            "client_cpus": sorted(self.client) if self.client is not None else None,
            "load_processes": self.load_processes,
        }


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))  # pragma: no cover - Linux has affinity


class ServerProcess:
    """`zcserve serve` in a child process: pinned, watched for CPU and peak RSS."""

    def __init__(self, args: Sequence[str], placement: Placement) -> None:
        # The server's own counters say exactly how many file bytes it sent.
        self.child = start_serve(
            [*args, "--port", "0", "--metrics", "127.0.0.1:0"], cpus=placement.server
        )
        self.proc = self.child.proc
        self.ps = psutil.Process(self.child.pid)
        self.url = self.child.url
        metrics_url = self.child.metrics_url
        if metrics_url is None:
            self.stop()
            raise RunError("zcserve serve started without its --metrics listener")
        self.metrics_url = metrics_url

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def _scrape(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=30) as response:
                text = response.read().decode()
        except OSError as exc:
            code = self.proc.poll()
            state = "running" if code is None else f"exited with code {code}"
            message = f"cannot read {self.metrics_url} (zcserve serve {state}): {exc}"
            raise RunError(message) from None
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                family = name.split("{", 1)[0]
                samples[family] = samples.get(family, 0.0) + float(value)
        return samples

    def bytes_written(self) -> int:
        """File bytes the server has sent, by every strategy (its metrics counter)."""
        return int(self._scrape().get("zcserve_sent_bytes_total", 0))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the connections the load generator dropped are closed and counted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._scrape().get("zcserve_active_connections", 0) == 0:
                return
            time.sleep(0.05)

    @contextmanager
    def watch_rss(self) -> Iterator[list[float]]:
        """Sample RSS every 50 ms while the block runs; yields [peak MB] filled at exit."""
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], self.ps.memory_info().rss / 1e6)
                except psutil.Error:
                    return
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield peak
        finally:
            stop.set()
            sampler.join()

    def stop(self) -> None:
        self.child.stop()


@contextmanager
def serving(args: Sequence[str], placement: Placement) -> Iterator[ServerProcess]:
    server = ServerProcess(args, placement)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block (this process: the load generator) on `cpus`."""
    if cpus is None:
        yield
        return
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, original)


def make_files(folder: str, sizes: Sequence[int]) -> dict[int, str]:
    names = {}
    for size in sizes:
        name = f"{format_size(size)}.bin"
        write_file(os.path.join(folder, name), size, seed=size % 251)
        names[size] = name
    return names


def measure_cell(
    server: ServerProcess | None,
    url: str,
    size: int,
    connections: int,
    options: BenchOptions,
    placement: Placement,
    strategy: str,
) -> BenchRow:
    load = LoadOptions(
        urls=(url,),
        connections=connections,
        duration=options.duration,
        warmup=options.warmup,
        processes=placement.load_processes,
        loop=options.loop,
    )
    with pinned(placement.client):
        before = server.cpu_seconds() if server else 0.0
        written = server.bytes_written() if server else 0
        peak: list[float] | None = None  # an external server's RSS is not seen
        if server is not None:
            with server.watch_rss() as peak:
                result = run_load(load)
        else:
            result = run_load(load)
        if server is not None:
            server.wait_idle()
        cpu = (server.cpu_seconds() - before) if server else None
        written = (server.bytes_written() - written) if server else 0
    # No request completed (a 64 MiB file at 512 connections in a short cell): its
    # latency is unknown, not 0 ms.
    latency: dict[str, float | None] = {"p50": None, "p99": None}
    if result.requests:
        latency = {**result.latency_ms()}
    client_bound = is_client_bound(
        # The client's CPU covers its measurement: after the warm-up, to the last response.
        client_cpu_seconds=result.cpu_seconds,
        client_cpus=min(placement.client_cpus, result.processes),
        client_seconds=result.duration,
        # The server's covers the whole cell; it was busy while the load ran, warm-up
        # included, and idle around it (workers starting, connections closing).
        server_cpu_seconds=cpu or 0.0,
        server_seconds=options.warmup + result.duration,
    )
    return BenchRow(
        strategy=strategy,
        size=size,
        connections=connections,
        requests_per_second=result.requests_per_second,
        megabytes_per_second=result.window_megabytes_per_second,
        p50_ms=latency["p50"],
        p99_ms=latency["p99"],
        errors=result.error_total,
        server_cpu_seconds=cpu,
        server_peak_rss_mb=peak[0] if peak is not None else None,
        duration=result.window_seconds or result.duration,
        requests=result.requests,
        loop=options.loop,
        server_bytes=written,
        client_cpu_seconds=result.cpu_seconds,
        client_bound=client_bound,
    )


def run_sweep(options: BenchOptions, console: Console) -> tuple[list[BenchRow], Placement]:
    placement = Placement.detect(options.load_processes, external=options.url is not None)
    rows: list[BenchRow] = []
    if options.url is not None:
        for connections in options.concurrency:
            rows.append(
                measure_cell(None, options.url, 0, connections, options, placement, "external")
            )
            console.print(_progress_line(rows[-1]))
        return rows, placement
    with tempfile.TemporaryDirectory(prefix="zcserve-bench-") as folder:
        names = make_files(folder, options.sizes)
        for strategy in options.strategies:
            args = [folder, "--strategy", strategy, "--loop", options.loop]
            with serving(args, placement) as server:
                for size in options.sizes:
                    for connections in options.concurrency:
                        url = f"{server.url}/{names[size]}"
                        row = measure_cell(
                            server, url, size, connections, options, placement, strategy
                        )
                        rows.append(row)
                        console.print(_progress_line(row))
    return rows, placement


def _progress_line(row: BenchRow) -> str:
    return (
        f"  {row.strategy:9} {format_size(row.size):>6} c={row.connections:<4} "
        f"{row.requests_per_second:10,.0f} req/s {row.megabytes_per_second:9,.1f} MB/s "
        f"p99 {shown(row.p99_ms, '7.2f'):>7} ms errors {row.errors}"
        f"{'  client-bound' if row.client_bound else ''}"
    )


def output_folder(requested: str | None) -> str:
    if requested:
        return requested
    return os.path.join("bench-results", time.strftime("%Y%m%d-%H%M%S"))


def run_bench(options: BenchOptions, console: Console) -> int:
    started = time.monotonic()
    rows, placement = run_sweep(options, console)
    print_table(rows, pinning=placement.describe(), console=console)
    folder = output_folder(options.out)
    meta = {
        "command": " ".join(["zcserve", *sys.argv[1:]]) if sys.argv else "zcserve bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_description(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count() or 0,
        **placement.to_json(),
        "duration": options.duration,
        "warmup": options.warmup,
        "loop": options.loop,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_results(folder, rows, meta, plots=False)
    with open(os.path.join(folder, "table.md"), "w", encoding="utf-8") as out:
        out.write(markdown_table(rows, pinning=placement.describe()))
    try:
        write_plots(folder, rows, meta)
    except PlotsUnavailable as exc:
        console.print(f"plots skipped: {exc}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"results written to {folder}/ (table.md, results.json, results.csv)")
    else:
        console.print(f"results written to {folder}/ (table.md, results.json, results.csv, *.png)")
    errors = sum(row.errors for row in rows)
    if errors:
        console.print(f"[red]ERRORS: {errors} requests failed during the bench[/red]")
        return 1
    return 0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, "" when it does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_description() -> str:
    cpus = os.cpu_count() or 0
    memory = psutil.virtual_memory().total / 1024**3
    model = cpu_model()
    return f"{cpus} CPUs {model}, {memory:.0f} GiB RAM, Linux {os.uname().release}".strip()


# The seed experiment -------------------------------------------------------------


SEED_STRATEGIES: tuple[StrategyName, ...] = ("readall", "readwrite", "sendfile")
"""The lab's two servers (readall, sendfile) and zcserve's chunked userspace path."""
LAB_RATIO = 1.93
"""The lab's reference run: its read-whole-file server over its sendfile server."""


@dataclass(frozen=True)
class SeedFigure:
    strategy: str
    seconds: float
    megabytes_per_second: float
    server_cpu_seconds: float
    peak_rss_bytes: int


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_seed_experiment(
    strategies: Sequence[str],
    size: int,
    downloads: int,
    loop: str,
    console: Console,
    *,
    out: str | None = None,
) -> list[SeedFigure]:
    """The lab's experiment: `zcserve serve --raw FILE` against `zcserve load --raw`,
    N sequential downloads per strategy, each from a fresh server."""
    placement = Placement.detect()
    figures = []
    with tempfile.TemporaryDirectory(prefix="zcserve-seed-") as folder:
        path = os.path.join(folder, "seed.bin")
        write_file(path, size)
        for strategy in strategies:
            args = ["--raw", path, "--strategy", strategy, "--loop", loop]
            with serving(args, placement) as server, pinned(placement.client):
                address = server.url.removeprefix("http://")
                before = server.cpu_seconds()
                result = run_raw(RawOptions(address, downloads=downloads, timeout=60))
                cpu = server.cpu_seconds() - before
                peak = peak_rss_bytes(server.child.pid)
            if result.total_bytes != size * downloads:
                raise RunError(
                    f"{strategy}: received {result.total_bytes} of {size * downloads} bytes"
                )
            figure = SeedFigure(
                strategy, result.total_seconds, result.megabytes_per_second, cpu, peak
            )
            figures.append(figure)
            console.print(
                f"  {strategy:9} {downloads} x {format_size(size)}: {figure.seconds:.2f} s, "
                f"{figure.megabytes_per_second:,.0f} MB/s, server CPU {cpu:.2f} s, "
                f"peak RSS {peak / 2**20:,.0f} MiB"
            )
    for name in ("readall", "readwrite"):
        baseline = next((f for f in figures if f.strategy == name), None)
        for figure in figures:
            if baseline is not None and figure is not baseline and figure.seconds:
                console.print(
                    f"{figure.strategy} is {baseline.seconds / figure.seconds:.2f}x {name} "
                    f"(total time {baseline.seconds:.2f} s / {figure.seconds:.2f} s)"
                )
    naive = next((f for f in figures if f.strategy == "readall"), None)
    zero_copy = next((f for f in figures if f.strategy == "sendfile"), None)
    if naive is not None and zero_copy is not None and zero_copy.seconds:
        console.print(
            f"The lab measured readall / sendfile = {LAB_RATIO}x (its reference run); "
            f"this run: {naive.seconds / zero_copy.seconds:.2f}x."
        )
    console.print(placement.describe())
    if out is not None:
        os.makedirs(out, exist_ok=True)
        seed_path = os.path.join(out, "seed.json")
        with open(seed_path, "w") as handle:
            json.dump(
                {
                    "size": size,
                    "downloads": downloads,
                    "loop": loop,
                    "lab_ratio": LAB_RATIO,
                    "rows": [asdict(figure) for figure in figures],
                },
                handle,
                indent=2,
            )
        console.print(f"wrote {seed_path}")
    return figures


# CLI ----------------------------------------------------------------------------


def _list_of(parse: Any, text: str, what: str) -> tuple[Any, ...]:
    try:
        return tuple(parse(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad {what} list {text!r}: {exc}") from None


def add_command(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "bench",
        help="compare copy strategies across sizes and concurrency",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "--strategies",
        type=lambda t: _list_of(str, t, "strategy"),
        default=",".join(DEFAULT_STRATEGIES),
        help=f"comma-separated, from {','.join(STRATEGY_NAMES)}",
    )
    p.add_argument(
        "--sizes",
        type=lambda t: _list_of(parse_size, t, "size"),
        default=",".join(format_size(s) for s in DEFAULT_SIZES),
        help="comma-separated file sizes",
    )
    p.add_argument(
        "--concurrency",
        type=lambda t: _list_of(int, t, "concurrency"),
        default=",".join(str(c) for c in DEFAULT_CONCURRENCY),
        help="comma-separated connection counts",
    )
    p.add_argument("--duration", type=_seconds, default=DEFAULT_DURATION, help="seconds per cell")
    p.add_argument("--warmup", type=_seconds, default=DEFAULT_WARMUP, help="seconds per cell")
    p.add_argument("--loop", choices=LOOP_NAMES, default="uvloop", help="server and client loop")
    p.add_argument("--url", default=None, help="bench this existing server URL instead")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/DATE)")
    p.add_argument(
        "--load-processes",
        type=int,
        default=None,
        metavar="P",
        help="load generator processes, all on the load CPUs (default: one per load CPU; "
        "on 2 CPUs one, in-process, on CPU 1)",
    )
    p.add_argument(
        "--seed-experiment",
        action="store_true",
        help="the lab's experiment: 10 sequential raw downloads of a 1 GiB file, "
        "readall (the lab's naive server), readwrite and sendfile",
    )
    p.add_argument(
        "--seed-size",
        type=lambda t: _list_of(parse_size, t, "size")[0],
        default=format_size(SEED_SIZE),
        help="file size for --seed-experiment",
    )
    p.add_argument(
        "--seed-downloads",
        type=int,
        default=SEED_DOWNLOADS,
        help="sequential downloads for --seed-experiment",
    )
    p.add_argument(
        "--syscalls",
        action="store_true",
        help="each strategy's syscalls, file bytes read and context switches per request, "
        "under strace",
    )
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="each path's plain blocking loop beside the server (64MiB and 1GiB files)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per ceiling figure (median)")
    p.set_defaults(run=run_command)


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_command(args: argparse.Namespace) -> int:
    # A pipe or a CI log gets the whole table rather than 80 squeezed columns.
    console = Console(width=None if sys.stdout.isatty() else 180)
    if args.seed_experiment:
        strategies = SEED_STRATEGIES
        if args.strategies != tuple(DEFAULT_STRATEGIES):
            strategies = tuple(dict.fromkeys((*SEED_STRATEGIES, *args.strategies)))
        if args.seed_downloads < 1:
            raise ConfigError("--seed-downloads must be 1 or more")
        run_seed_experiment(
            strategies,
            args.seed_size,
            args.seed_downloads,
            args.loop,
            console,
            out=output_folder(args.out),
        )
        return 0
    if args.syscalls:
        strategies = args.strategies
        if strategies == tuple(DEFAULT_STRATEGIES):
            strategies = tuple(name for name in STRATEGY_NAMES if name != "auto")
        run_syscalls(strategies, args.sizes, args.loop, output_folder(args.out), console)
        return 0
    if args.ceiling:
        return _run_ceiling_command(args, console)
    options = BenchOptions(
        strategies=args.strategies,
        sizes=args.sizes,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        loop=args.loop,
        url=args.url,
        out=args.out,
        load_processes=args.load_processes,
    )
    return run_bench(options, console)


def _run_ceiling_command(args: argparse.Namespace, console: Console) -> int:
    strategies = tuple(s for s in args.strategies if s in CEILING_STRATEGIES)
    if args.strategies == tuple(DEFAULT_STRATEGIES):
        strategies = CEILING_STRATEGIES
    sizes = args.sizes if args.sizes != DEFAULT_SIZES else (64 * 1024**2, 1024**3)
    with tempfile.TemporaryDirectory(prefix="zcserve-ceiling-") as folder:
        paths = []
        for size in sizes:
            path = os.path.join(folder, f"{format_size(size)}.bin")
            write_file(path, size)
            paths.append(path)
        rows = run_ceiling(paths, strategies, args.repeat, args.loop)
    console.print("| strategy | size | ceiling GB/s | ceiling CPU-s/GiB | server GB/s | "
                  "server CPU-s/GiB | server/ceiling |")  # fmt: skip
    console.print("|---|---|---|---|---|---|---|")
    for row in rows:
        console.print(
            f"| {row.strategy} | {format_size(row.size)} | {row.ceiling_gbps:.2f} "
            f"| {row.ceiling_cpu_per_gib:.2f} | {row.server_gbps:.2f} "
            f"| {row.server_cpu_per_gib:.2f} | {row.ratio:.0%} |"
        )
    return 0
