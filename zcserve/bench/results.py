"""What `zcserve bench` writes: the rich table, results.json, results.csv and plots.

Kept apart from the orchestration so `zcserve report` (and tests) can render
saved results again without running anything.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from rich.console import Console
from rich.table import Table

from zcserve.units import format_size


@dataclass(frozen=True)
class BenchRow:
    """One cell of the sweep: a strategy serving one file size at one concurrency."""

    strategy: str
    size: int
    connections: int
    requests_per_second: float
    megabytes_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_seconds: float
    server_peak_rss_mb: float
    duration: float
    requests: int
    loop: str = "uvloop"
    server_bytes: int = 0
    """File bytes the server sent during the cell (its metrics), warm-up and tail
    included: the same span its CPU seconds cover."""

    @property
    def cpu_per_gib(self) -> float:
        """Server CPU seconds per GiB it sent."""
        return self.server_cpu_seconds / (self.server_bytes / 1024**3) if self.server_bytes else 0.0


def speedup(rows: Sequence[BenchRow], row: BenchRow, baseline: str = "readwrite") -> float | None:
    """`row`'s throughput over the `baseline` strategy's in the same size and concurrency.

    Bytes per second, not requests: with large files and many connections a cell can
    end before any response completes, yet every byte that moved counts."""
    for other in rows:
        if (other.strategy, other.size, other.connections) == (baseline, row.size, row.connections):
            if other.megabytes_per_second:
                return row.megabytes_per_second / other.megabytes_per_second
    return None


def render_table(rows: Sequence[BenchRow], *, pinning: str, title: str = "zcserve bench") -> Table:
    table = Table(title=title, caption=pinning)
    for header in ("strategy", "size", "conns", "req/s", "MB/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(header, justify="left" if header == "strategy" else "right")
    for header in ("server CPU s", "CPU s/GiB", "peak RSS MB", "vs readwrite"):
        table.add_column(header, justify="right")
    for row in sorted(rows, key=lambda r: (r.size, r.connections, r.strategy)):
        ratio = speedup(rows, row) if row.strategy != "readwrite" else None
        table.add_row(
            row.strategy,
            format_size(row.size),
            str(row.connections),
            f"{row.requests_per_second:,.0f}",
            f"{row.megabytes_per_second:,.1f}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"[red]{row.errors}[/red]" if row.errors else "0",
            f"{row.server_cpu_seconds:.2f}",
            f"{row.cpu_per_gib:.2f}",
            f"{row.server_peak_rss_mb:.0f}",
            f"{ratio:.2f}x" if ratio is not None else "",
        )
    return table


def print_table(rows: Sequence[BenchRow], *, pinning: str, console: Console | None = None) -> None:
    (console or Console()).print(render_table(rows, pinning=pinning))


def write_results(folder: str, rows: Sequence[BenchRow], meta: dict[str, Any]) -> list[str]:
    """results.json, results.csv and the plots into `folder`; return the paths written."""
    os.makedirs(folder, exist_ok=True)
    json_path = os.path.join(folder, "results.json")
    with open(json_path, "w", encoding="utf-8") as out:
        json.dump({"meta": meta, "rows": [_row_json(r) for r in rows]}, out, indent=2)
    csv_path = os.path.join(folder, "results.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        names = [f.name for f in fields(BenchRow)]
        writer.writerow([*names, "cpu_per_gib", "speedup_vs_readwrite"])
        for row in rows:
            ratio = speedup(rows, row)
            writer.writerow(
                [*(getattr(row, n) for n in names), round(row.cpu_per_gib, 4), ratio or ""]
            )
    return [json_path, csv_path, *write_plots(folder, rows)]


def _row_json(row: BenchRow) -> dict[str, Any]:
    return {**asdict(row), "cpu_per_gib": row.cpu_per_gib}


def load_results(path: str) -> tuple[list[BenchRow], dict[str, Any]]:
    """Rows and metadata from a results.json written by `write_results`."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    names = {f.name for f in fields(BenchRow)}
    rows = [BenchRow(**{k: v for k, v in row.items() if k in names}) for row in data["rows"]]
    return rows, dict(data.get("meta", {}))


def write_plots(folder: str, rows: Sequence[BenchRow]) -> list[str]:
    """Throughput and p99 latency against concurrency, one panel per file size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.size for r in rows})
    strategies = sorted({r.strategy for r in rows})
    written = []
    for metric, label, name in (
        ("megabytes_per_second", "MB/s (body bytes)", "throughput.png"),
        ("p99_ms", "p99 latency (ms)", "p99.png"),
    ):
        fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
        for axis, size in zip(axes[0], sizes, strict=True):
            for strategy in strategies:
                points = sorted(
                    (r.connections, getattr(r, metric))
                    for r in rows
                    if r.size == size and r.strategy == strategy
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    axis.plot(xs, ys, marker="o", label=strategy)
            axis.set_xscale("log", base=2)
            axis.set_title(format_size(size))
            axis.set_xlabel("concurrent connections")
            axis.set_ylabel(label)
            axis.grid(True, alpha=0.3)
            axis.legend()
        fig.tight_layout()
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def markdown_table(rows: Iterable[BenchRow]) -> str:
    """The table as Markdown, for BENCHMARKS.md."""
    rows = list(rows)
    lines = [
        "| strategy | size | conns | req/s | MB/s | p50 ms | p99 ms | errors | server CPU s "
        "| CPU s/GiB | peak RSS MB | vs readwrite |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r.size, r.connections, r.strategy)):
        ratio = speedup(rows, row) if row.strategy != "readwrite" else None
        lines.append(
            f"| {row.strategy} | {format_size(row.size)} | {row.connections} "
            f"| {row.requests_per_second:,.0f} | {row.megabytes_per_second:,.1f} "
            f"| {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.errors} "
            f"| {row.server_cpu_seconds:.2f} | {row.cpu_per_gib:.2f} "
            f"| {row.server_peak_rss_mb:.0f} | {f'{ratio:.2f}x' if ratio else ''} |"
        )
    return "\n".join(lines) + "\n"
