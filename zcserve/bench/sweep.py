"""The sweep, `zcserve bench`'s default mode: every strategy, several file sizes,
several concurrency levels.

It generates its files in a temporary folder, starts `zcserve serve` once per
strategy (pinned to one CPU), sweeps the concurrency levels with the load generator
(pinned to the others, one load process per CPU unless --load-processes says
otherwise), stops every process it started, and writes a table, results.json,
results.csv and plots (those need matplotlib, the `zcserve[bench]` extra; without
it everything else is written and one line says how to get them). Each cell
records the load generator's CPU beside the server's and is marked client-bound
when the load generator, not the server, was the limit. With --url the server is
one the bench did not start: its CPU and RSS are `n/a`, and the caption says it
was not pinned.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
from rich.console import Console

from zcserve.bench.child import ServerProcess, serving
from zcserve.bench.placement import Placement, pinned
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
from zcserve.bench.workspace import make_files, output_folder
from zcserve.errors import ConfigError
from zcserve.load.run import LoadOptions, run_load
from zcserve.runtime import LOOP_NAMES
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import format_size

DEFAULT_STRATEGIES = ("readwrite", "sendfile", "fallback")
DEFAULT_SIZES = (4 * 1024, 1024 * 1024, 64 * 1024 * 1024)
DEFAULT_CONCURRENCY = (1, 8, 64, 512)
DEFAULT_DURATION = 2.5
DEFAULT_WARMUP = 0.5


def check_strategies(names: Sequence[str]) -> None:
    """ConfigError, on one line, for the first name that is not a strategy."""
    for name in names:
        if name not in STRATEGY_NAMES:
            raise ConfigError(
                f"unknown strategy {name!r}; expected some of {', '.join(STRATEGY_NAMES)}"
            )


def check_sizes(sizes: Sequence[int]) -> None:
    """ConfigError unless every file size is 1 byte or more."""
    if any(size < 1 for size in sizes):
        raise ConfigError("file sizes must be 1 byte or more")


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
        check_strategies(self.strategies)
        if not self.strategies or not self.sizes or not self.concurrency:
            raise ConfigError("strategies, sizes and concurrency each need at least one value")
        if any(c < 1 for c in self.concurrency):
            raise ConfigError("concurrency levels must be 1 or more")
        check_sizes(self.sizes)
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


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One cell of the sweep: `connections` clients on `url`, a file of `size` bytes
    served by `strategy`; `server` is the process serving it, None at --url."""

    strategy: str
    size: int
    connections: int
    url: str
    server: ServerProcess | None
    options: BenchOptions
    placement: Placement


def measure_cell(cell: Cell) -> BenchRow:
    """The load generator against one cell, with the server's CPU, peak RSS and
    file bytes sent over the same time."""
    server, options, placement = cell.server, cell.options, cell.placement
    load = LoadOptions(
        urls=(cell.url,),
        connections=cell.connections,
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
        strategy=cell.strategy,
        size=cell.size,
        connections=cell.connections,
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
            cell = Cell(
                strategy="external",
                size=0,
                connections=connections,
                url=options.url,
                server=None,
                options=options,
                placement=placement,
            )
            rows.append(measure_cell(cell))
            console.print(_progress_line(rows[-1]))
        return rows, placement
    with tempfile.TemporaryDirectory(prefix="zcserve-bench-") as folder:
        paths = make_files(folder, options.sizes)
        for strategy in options.strategies:
            args = [folder, "--strategy", strategy, "--loop", options.loop]
            with serving(args, placement.server) as server:
                for size in options.sizes:
                    url = f"{server.url}/{os.path.basename(paths[size])}"
                    for connections in options.concurrency:
                        cell = Cell(
                            strategy=strategy,
                            size=size,
                            connections=connections,
                            url=url,
                            server=server,
                            options=options,
                            placement=placement,
                        )
                        rows.append(measure_cell(cell))
                        console.print(_progress_line(rows[-1]))
    return rows, placement


def _progress_line(row: BenchRow) -> str:
    return (
        f"  {row.strategy:9} {format_size(row.size):>6} c={row.connections:<4} "
        f"{row.requests_per_second:10,.0f} req/s {row.megabytes_per_second:9,.1f} MB/s "
        f"p99 {shown(row.p99_ms, '7.2f'):>7} ms errors {row.errors}"
        f"{'  client-bound' if row.client_bound else ''}"
    )


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
