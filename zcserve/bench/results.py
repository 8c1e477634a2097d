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

# The instrument must never be what the bench measures. A cell is client-bound when
# the load generator used nearly all the CPU it was given while the server still had
# some of its own to spare: its figures are then the client's limit (a floor for the
# server), not the server's capacity. 90 % on both sides leaves room for the wake-ups
# and scheduling gaps of a process that is busy all the time yet never shows 100 %.
CLIENT_SATURATED = 0.90
"""The load generator's CPU share at or above which it was the bottleneck: its CPU
seconds over (the CPUs it could use x the seconds it measured)."""
SERVER_HEADROOM = 0.90
"""The server's CPU share below which it had headroom: its CPU seconds over (its one
pinned CPU x the seconds the load ran, warm-up included)."""
CLIENT_BOUND_MARK = "†"
CLIENT_BOUND_NOTE = (
    f"{CLIENT_BOUND_MARK} client-bound: the load generator used ≥ {CLIENT_SATURATED:.0%} "
    f"of its CPU while the server used < {SERVER_HEADROOM:.0%} of its own; "
    "the figures are the client's limit, not the server's"
)


def is_client_bound(
    *,
    client_cpu_seconds: float,
    client_cpus: int,
    client_seconds: float,
    server_cpu_seconds: float,
    server_seconds: float,
) -> bool:
    """Whether the load generator, not the server, limited a cell (see CLIENT_SATURATED).

    `client_cpus` is how many CPUs the load could use: those it may run on, at most one
    per load process. A server whose CPU is not seen (`--url`) counts as having headroom."""
    if client_cpus < 1 or client_seconds <= 0:
        return False
    client_share = client_cpu_seconds / (client_cpus * client_seconds)
    server_share = server_cpu_seconds / server_seconds if server_seconds > 0 else 0.0
    return client_share >= CLIENT_SATURATED and server_share < SERVER_HEADROOM


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
    client_cpu_seconds: float = 0.0
    """User + system CPU of every load process over its measurement (after the warm-up,
    to the last response): the instrument's own cost, beside the server's."""
    client_bound: bool = False
    """The load generator, not the server, was the limit (`is_client_bound`)."""

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


def marked(row: BenchRow) -> str:
    """The row's strategy, with the client-bound mark when its client was the limit."""
    return f"{row.strategy} {CLIENT_BOUND_MARK}" if row.client_bound else row.strategy


def notes(rows: Iterable[BenchRow], pinning: str) -> list[str]:
    """The pinning line, and the client-bound footnote when some row carries the mark."""
    lines = [pinning] if pinning else []
    if any(row.client_bound for row in rows):
        lines.append(CLIENT_BOUND_NOTE)
    return lines


def render_table(rows: Sequence[BenchRow], *, pinning: str, title: str = "zcserve bench") -> Table:
    table = Table(title=title, caption="\n".join(notes(rows, pinning)))
    for header in ("strategy", "size", "conns", "req/s", "MB/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(header, justify="left" if header == "strategy" else "right")
    for header in ("server CPU s", "client CPU s", "CPU s/GiB", "peak RSS MB", "vs readwrite"):
        table.add_column(header, justify="right")
    for row in sorted(rows, key=lambda r: (r.size, r.connections, r.strategy)):
        ratio = speedup(rows, row) if row.strategy != "readwrite" else None
        table.add_row(
            marked(row),
            format_size(row.size),
            str(row.connections),
            f"{row.requests_per_second:,.0f}",
            f"{row.megabytes_per_second:,.1f}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"[red]{row.errors}[/red]" if row.errors else "0",
            f"{row.server_cpu_seconds:.2f}",
            f"{row.client_cpu_seconds:.2f}",
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

    written = []
    for metric, label, name in PLOTS:
        fig = plot_figure(rows, metric, label)
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


PLOTS = (
    ("megabytes_per_second", "MB/s (body bytes)", "throughput.png"),
    ("p99_ms", "p99 latency (ms)", "p99.png"),
)


def plot_figure(rows: Sequence[BenchRow], metric: str, label: str) -> Any:
    """One panel per file size: `metric` against concurrency, a line per strategy.

    Client-bound cells are hollow markers: there the client, not the server, set the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    sizes = sorted({r.size for r in rows})
    strategies = sorted({r.strategy for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=True):
        handles = []
        hollow = False
        for strategy in strategies:
            cells = sorted(
                (r.connections, getattr(r, metric), r.client_bound)
                for r in rows
                if r.size == size and r.strategy == strategy
            )
            if not cells:
                continue
            (line,) = axis.plot([x for x, _, _ in cells], [y for _, y, _ in cells])
            color = line.get_color()
            handles.append(Line2D([], [], color=color, marker="o", label=strategy))
            for bound in (False, True):
                points = [(x, y) for x, y, b in cells if b == bound]
                if points:
                    axis.plot(
                        [x for x, _ in points],
                        [y for _, y in points],
                        linestyle="none",
                        marker="o",
                        color=color,
                        markerfacecolor="none" if bound else color,
                    )
                    hollow = hollow or bound
        if hollow:
            hollow_key = Line2D([], [], linestyle="none", marker="o", color="grey")
            hollow_key.set(markerfacecolor="none", label="client-bound")
            handles.append(hollow_key)
        axis.set_xscale("log", base=2)
        axis.set_title(format_size(size))
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend(handles=handles)
    fig.tight_layout()
    return fig


def markdown_table(rows: Iterable[BenchRow], *, pinning: str = "") -> str:
    """The table as Markdown, for BENCHMARKS.md; the pinning line and the client-bound
    footnote (when some row carries the mark) follow it."""
    rows = list(rows)
    lines = [
        "| strategy | size | conns | req/s | MB/s | p50 ms | p99 ms | errors | server CPU s "
        "| client CPU s | CPU s/GiB | peak RSS MB | vs readwrite |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r.size, r.connections, r.strategy)):
        ratio = speedup(rows, row) if row.strategy != "readwrite" else None
        lines.append(
            f"| {marked(row)} | {format_size(row.size)} | {row.connections} "
            f"| {row.requests_per_second:,.0f} | {row.megabytes_per_second:,.1f} "
            f"| {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.errors} "
            f"| {row.server_cpu_seconds:.2f} | {row.client_cpu_seconds:.2f} "
            f"| {row.cpu_per_gib:.2f} "
            f"| {row.server_peak_rss_mb:.0f} | {f'{ratio:.2f}x' if ratio else ''} |"
        )
    return "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes(rows, pinning))
