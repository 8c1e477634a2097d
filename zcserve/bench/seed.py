"""The seed experiment, the lab's classic one: `zcserve serve --raw FILE` against
`zcserve load --raw`, one large file downloaded N times in sequence, readall (the
lab's naive server: the whole file read into memory) against readwrite and sendfile,
each from a fresh server; the lab's own ratio printed beside this run's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rich.console import Console

from zcserve.bench.child import serving
from zcserve.bench.placement import Placement, pinned
from zcserve.demo import write_file
from zcserve.errors import RunError
from zcserve.load.raw import RawOptions, run_raw
from zcserve.server.strategies import StrategyName
from zcserve.units import format_size

SEED_SIZE = 1024**3
SEED_DOWNLOADS = 10
SEED_STRATEGIES: tuple[StrategyName, ...] = ("readall", "readwrite", "sendfile")
"""The lab's two servers (readall, sendfile) and zcserve's chunked userspace path."""
LAB_RATIO = 1.93
"""The lab's reference run: its read-whole-file server over its sendfile server."""


def seed_strategies(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The lab's three rows, then any other strategy asked for, each once."""
    return tuple(dict.fromkeys((*SEED_STRATEGIES, *extra)))


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
            with serving(args, placement.server) as server, pinned(placement.client):
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
