"""What `zcserve bench` writes: the rich table, results.json, results.csv and plots.

Kept apart from the orchestration so `zcserve report` (and tests) can render
saved results again without running anything. A figure that was not measured
(latency of a cell where no request completed; the CPU and RSS of a server the
bench did not start) is None: `n/a` in the tables and the CSV, null in the JSON,
a gap in the plots, never a 0.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import textwrap
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from zcserve.errors import ConfigError
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
NOT_MEASURED = "n/a"
MATPLOTLIB_MISSING = "matplotlib is not installed (pip install 'zcserve[bench]')"


class PlotsUnavailable(ConfigError):
    """matplotlib cannot be imported: it is in the `zcserve[bench]` extra, not a
    dependency, so a server-only install stays small."""


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
    p50_ms: float | None
    """None when no request completed in the cell: there is no latency to show."""
    p99_ms: float | None
    errors: int
    server_cpu_seconds: float | None
    """None when the bench did not start the server (`--url`): it cannot see its CPU."""
    server_peak_rss_mb: float | None
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
    def cpu_per_gib(self) -> float | None:
        """Server CPU seconds per GiB it sent; None when either is unknown or 0 bytes."""
        if self.server_cpu_seconds is None or not self.server_bytes:
            return None
        return self.server_cpu_seconds / (self.server_bytes / 1024**3)


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


def shown(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, or `n/a` when it was not measured."""
    return NOT_MEASURED if value is None else format(value, spec)


def notes(rows: Iterable[BenchRow], pinning: str) -> list[str]:
    """The pinning line, and the client-bound footnote when some row carries the mark."""
    lines = [pinning] if pinning else []
    if any(row.client_bound for row in rows):
        lines.append(CLIENT_BOUND_NOTE)
    return lines


STRATEGY_STYLES: dict[str, tuple[str, str]] = {
    "readwrite": ("tab:orange", "o"),
    "readall": ("tab:red", "v"),
    "fallback": ("tab:blue", "s"),
    "sendfile": ("tab:green", "^"),
    "mmap": ("tab:purple", "D"),
    "splice": ("tab:brown", "P"),
    "auto": ("tab:pink", "X"),
    "memory": ("tab:olive", "h"),
    "external": ("tab:cyan", "*"),
}
"""Each strategy's colour and marker in every plot, and the order strategies are listed
in, whichever of them a run has: a figure is compared with another by its colours."""
OTHER_STYLES = (("tab:gray", "p"), ("black", "d"), ("navy", "8"), ("gold", "H"))


def strategy_style(strategy: str) -> tuple[str, str]:
    """(colour, marker) of `strategy`; a name not in STRATEGY_STYLES gets one by a
    hash of its name, so it too is the same in every plot."""
    known = STRATEGY_STYLES.get(strategy)
    return known or OTHER_STYLES[zlib.crc32(strategy.encode()) % len(OTHER_STYLES)]


def strategy_rank(strategy: str) -> tuple[int, str]:
    """Sort key: STRATEGY_STYLES's order, then other names alphabetically."""
    order = list(STRATEGY_STYLES)
    return (order.index(strategy) if strategy in order else len(order), strategy)


KEY_HEADERS = ("strategy", "size", "conns")
VALUE_HEADERS = (
    "req/s",
    "MB/s",
    "p50\nms",
    "p99\nms",
    "errors",
    "server\nCPU s",
    "client\nCPU s",
    "CPU s\n/GiB",
    "peak RSS\nMB",
    "vs\nreadwrite",
)
"""Headers of two lines where that narrows the column: no cell ever wraps (so no
number is cut, and `render_tables` knows each table's width exactly)."""


def table_cells(rows: Sequence[BenchRow]) -> list[list[str]]:
    """Each row's cells, in KEY_HEADERS then VALUE_HEADERS order, sorted by size,
    concurrency and strategy."""
    lines = []
    for row in sorted(rows, key=lambda r: (r.size, r.connections, r.strategy)):
        ratio = speedup(rows, row) if row.strategy != "readwrite" else None
        cells = [
            marked(row),
            format_size(row.size),
            str(row.connections),
            f"{row.requests_per_second:,.0f}",
            f"{row.megabytes_per_second:,.1f}",
            shown(row.p50_ms, ".2f"),
            shown(row.p99_ms, ".2f"),
            f"[red]{row.errors}[/red]" if row.errors else "0",
            shown(row.server_cpu_seconds, ".2f"),
            f"{row.client_cpu_seconds:.2f}",
            shown(row.cpu_per_gib, ".2f"),
            shown(row.server_peak_rss_mb, ".0f"),
            f"{ratio:.2f}x" if ratio is not None else "",
        ]
        lines.append(cells)
    return lines


def _table(headers: Sequence[str], lines: Iterable[Sequence[str]], title: str | None) -> Table:
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header == "strategy" else "right", no_wrap=True)
    for cells in lines:
        table.add_row(*cells)
    return table


def render_tables(
    rows: Sequence[BenchRow],
    *,
    pinning: str,
    width: int | None = None,
    title: str = "zcserve bench",
) -> list[RenderableType]:
    """The bench table, split by columns into as many tables as `width` needs, and
    its notes (`notes`).

    Each table repeats the strategy, size and concurrency, and takes as many of the
    other columns, in order, as fit `width` with every number whole: rich would
    otherwise squeeze a column and print `…` in place of digits. No width: one table,
    with the notes as its caption; several: the notes follow them, as wide as the
    terminal rather than the last table."""
    lines = table_cells(rows)

    def table(group: Sequence[int], title: str | None = None) -> Table:
        keys = len(KEY_HEADERS)
        headers = [*KEY_HEADERS, *(VALUE_HEADERS[i] for i in group)]
        return _table(headers, ([*c[:keys], *(c[keys + i] for i in group)] for c in lines), title)

    groups: list[list[int]] = [[]]
    measure = Console(width=10**6)
    for column in range(len(VALUE_HEADERS)):
        trial = [*groups[-1], column]
        needed = Measurement.get(measure, measure.options, table(trial)).minimum
        if needed <= (width or needed) or not groups[-1]:
            groups[-1] = trial
        else:
            groups.append([column])
    tables = [table(group, title if index == 0 else None) for index, group in enumerate(groups)]
    caption = "\n".join(notes(rows, pinning))
    if len(tables) == 1:
        tables[0].caption = caption
        return [tables[0]]
    return [*tables, Text(caption, style="table.caption")] if caption else [*tables]


def print_table(rows: Sequence[BenchRow], *, pinning: str, console: Console | None = None) -> None:
    console = console or Console()
    for table in render_tables(rows, pinning=pinning, width=console.width):
        console.print(table)


def write_results(
    folder: str, rows: Sequence[BenchRow], meta: Mapping[str, Any], *, plots: bool = True
) -> list[str]:
    """results.json, results.csv and (with `plots`) the plots into `folder`; return the
    paths written. Unmeasured figures are null in the JSON and `n/a` in the CSV."""
    os.makedirs(folder, exist_ok=True)
    json_path = os.path.join(folder, "results.json")
    with open(json_path, "w", encoding="utf-8") as out:
        json.dump({"meta": dict(meta), "rows": [_row_json(r) for r in rows]}, out, indent=2)
    csv_path = os.path.join(folder, "results.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        names = [f.name for f in fields(BenchRow)]
        writer.writerow([*names, "cpu_per_gib", "speedup_vs_readwrite"])
        for row in rows:
            ratio = speedup(rows, row)
            values = [getattr(row, n) for n in names]
            cpu_per_gib = None if row.cpu_per_gib is None else round(row.cpu_per_gib, 4)
            writer.writerow(
                [NOT_MEASURED if v is None else v for v in (*values, cpu_per_gib)] + [ratio or ""]
            )
    written = [json_path, csv_path]
    if plots:
        written += write_plots(folder, rows, meta)
    return written


def _row_json(row: BenchRow) -> dict[str, Any]:
    return {**asdict(row), "cpu_per_gib": row.cpu_per_gib}


def load_results(path: str) -> tuple[list[BenchRow], dict[str, Any]]:
    """Rows and metadata from a results.json written by `write_results`."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    names = {f.name for f in fields(BenchRow)}
    rows = []
    for saved in data["rows"]:
        values = {k: v for k, v in saved.items() if k in names}
        if values.get("requests") == 0:  # saved before n/a: a 0 ms latency measured nothing
            values.update(p50_ms=None, p99_ms=None)
        rows.append(BenchRow(**values))
    return rows, dict(data.get("meta", {}))


# plots ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plot:
    metric: str
    """A `BenchRow` attribute; None is a gap."""
    label: str
    filename: str
    title: str
    log_y: bool = False
    """For figures that span decades; the others start at 0."""


PLOTS = (
    Plot("megabytes_per_second", "MB/s (body bytes)", "throughput.png", "Throughput"),
    Plot("p99_ms", "p99 latency (ms, log scale)", "p99.png", "p99 latency", log_y=True),
    Plot(
        "cpu_per_gib",
        "server CPU-s per GiB sent",
        "cpu_per_gib.png",
        "Server CPU per byte (lower is better)",
    ),
)
FIGURE_INCHES = (16.0, 9.0)
FIGURE_DPI = 120
"""16:9 at 120 dpi: 1920 x 1080 pixels, a full-HD slide."""
FONT_POINTS = 14
"""Every text on the plots is this size or larger, except the caption and the note (12 pt)."""
CAPTION_POINTS = 12
GAP_POINTS = 6
"""Between the caption, the note, the legend and the panels' axis labels."""
LEGEND_COLUMNS_MAX = 5
"""More handles than this take a second legend row (every strategy: eight handles)."""


def plotted(row: BenchRow, metric: str) -> float:
    """The value drawn for `row`, NaN (a gap in the line) when there is none: not
    measured, or a cell where no request completed, whose bytes in flight are no
    rate (`missing_note` names those)."""
    value = getattr(row, metric)
    if value is None or row.requests == 0:
        return math.nan
    return float(value)


def missing_note(rows: Iterable[BenchRow]) -> str:
    """The cells where no request completed, which no plot draws; "" when none."""
    cells: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        if row.requests == 0:
            cells.setdefault((row.size, row.connections), []).append(row.strategy)
    if not cells:
        return ""
    named = "; ".join(
        f"{format_size(size)} at {connections} connections "
        f"({', '.join(sorted(names, key=strategy_rank))})"
        for (size, connections), names in sorted(cells.items())
    )
    return textwrap.fill(f"Not drawn, no request completed: {named}", 150)


def plot_caption(meta: Mapping[str, Any]) -> str:
    """What a slide needs to be read alone: CPU model and cores, loop, the length of
    each cell, the date and where the server and the load generator ran."""
    cpu = ", ".join(
        str(part)
        for part in (
            meta.get("cpu_model"),
            f"{meta['cpus']} cores" if meta.get("cpus") else None,
        )
        if part
    ) or str(meta.get("machine", "machine not recorded"))
    cell = "cell duration not recorded"
    if meta.get("duration") is not None:
        cell = f"{float(meta['duration']):g} s per cell"
        if meta.get("warmup"):
            cell += f" after {float(meta['warmup']):g} s warm-up"
    parts = [cpu, f"loop {meta.get('loop', 'not recorded')}", cell, meta.get("date") or "no date"]
    first = " · ".join(str(part) for part in parts)
    placement = str(meta.get("placement") or "pinning not recorded")
    return "\n".join(textwrap.fill(line, 150) for line in (first, placement))


def write_plots(folder: str, rows: Sequence[BenchRow], meta: Mapping[str, Any]) -> list[str]:
    """Throughput, p99 latency and server CPU per GiB against concurrency, one panel
    per file size, one file each; `PlotsUnavailable` without matplotlib."""
    plt = _pyplot()
    written = []
    for plot in PLOTS:
        fig = plot_figure(rows, plot, meta)
        path = os.path.join(folder, plot.filename)
        fig.savefig(path, dpi=FIGURE_DPI)
        plt.close(fig)
        written.append(path)
    return written


def check_plotting() -> None:
    """`PlotsUnavailable` unless matplotlib imports."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(MATPLOTLIB_MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_figure(rows: Sequence[BenchRow], plot: Plot, meta: Mapping[str, Any]) -> Any:
    """One panel per file size: `plot.metric` against concurrency, a line per strategy.

    For a slide: 16:9, titled and captioned (`plot_caption`), y from 0 (or log), x
    ticks at the measured concurrencies, one legend below the panels where it covers
    no line. Each strategy has its colour and marker (`strategy_style`) in every plot;
    client-bound cells are hollow markers: there the client, not the server, set the
    figure. Missing values are gaps; cells where nothing completed are named in a note
    (`missing_note`)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatterSciNotation, NullLocator

    class PlainLog(LogFormatterSciNotation):
        """The ticks matplotlib labels on a log axis, as 0.5 and 20 rather than 5x10^-1."""

        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    sizes = sorted({r.size for r in rows})
    strategies = sorted({r.strategy for r in rows}, key=strategy_rank)
    concurrency = sorted({r.connections for r in rows})
    with plt.rc_context({"font.size": FONT_POINTS}):
        fig, axes = plt.subplots(1, len(sizes), figsize=FIGURE_INCHES, squeeze=False)
        hollow = False
        for axis, size in zip(axes[0], sizes, strict=True):
            for strategy in strategies:
                cells = sorted(
                    (r.connections, plotted(r, plot.metric), r.client_bound)
                    for r in rows
                    if r.size == size and r.strategy == strategy
                )
                if not cells:
                    continue
                color, marker = strategy_style(strategy)
                xs, ys = [x for x, _, _ in cells], [y for _, y, _ in cells]
                axis.plot(xs, ys, color=color, gid=strategy)
                for bound in (False, True):
                    points = [(x, y) for x, y, b in cells if b == bound and not math.isnan(y)]
                    if points:
                        axis.plot(
                            [x for x, _ in points],
                            [y for _, y in points],
                            linestyle="none",
                            marker=marker,
                            markersize=8,
                            color=color,
                            markerfacecolor="none" if bound else color,
                            gid=strategy,
                        )
                        hollow = hollow or bound
            if len(concurrency) > 1:
                axis.set_xscale("log")
            axis.set_xticks(concurrency, labels=[str(c) for c in concurrency])
            axis.xaxis.set_minor_locator(NullLocator())
            axis.set_xlim(concurrency[0] / 1.5, concurrency[-1] * 1.5)
            if plot.log_y:
                positive = [r for r in rows if r.size == size and plotted(r, plot.metric) > 0]
                if positive:  # a log axis with nothing on it has no range
                    axis.set_yscale("log")
                    axis.yaxis.set_major_formatter(PlainLog())
                    axis.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))
            else:
                axis.set_ylim(bottom=0)
            axis.set_title(format_size(size))
            axis.set_xlabel("concurrent connections")
            axis.grid(True, alpha=0.3)
        axes[0][0].set_ylabel(plot.label)
        handles = []
        for name in strategies:
            color, marker = strategy_style(name)
            handles.append(Line2D([], [], color=color, marker=marker, markersize=8, label=name))
        if hollow:
            key = Line2D([], [], linestyle="none", marker="o", markersize=8, color="grey")
            key.set(markerfacecolor="none", label="client-bound (the load generator's limit)")
            handles.append(key)
        fig.suptitle(f"zcserve bench: {plot.title} against concurrency", fontsize=20)
        # bottom is provisional: _below_the_panels sets it once it has measured the rest.
        fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.3, wspace=0.22)
        _below_the_panels(fig, handles, plot_caption(meta), missing_note(rows))
    return fig


def _below_the_panels(fig: Any, handles: Sequence[Any], caption: str, note: str) -> None:
    """Caption, note and legend stacked up from the bottom edge, each as tall as its
    text, then the panels just above them: as little of the slide as they need."""
    renderer = fig.canvas.get_renderer()
    height = float(fig.bbox.height)
    gap = GAP_POINTS * fig.dpi / 72 / height

    def top(artist: Any) -> float:
        return float(artist.get_window_extent(renderer).y1) / height

    texts = [(caption, "caption")] + ([(note, "missing")] if note else [])
    y = gap
    for text, gid in texts:
        drawn = fig.text(0.5, y, text, ha="center", va="bottom", fontsize=CAPTION_POINTS, gid=gid)
        y = top(drawn) + gap
    # As many columns as fit the width: a long legend takes a second row, not the edges.
    for columns in range(min(len(handles), LEGEND_COLUMNS_MAX), 0, -1):
        legend = fig.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, y),
            ncol=columns,
            frameon=False,
            borderaxespad=0,
        )
        if legend.get_window_extent(renderer).width <= 0.96 * fig.bbox.width or columns == 1:
            break
        legend.remove()
    y = top(legend) + gap
    labels = max(
        axis.get_position().y0 - axis.get_tightbbox(renderer).y0 / height for axis in fig.axes
    )
    fig.subplots_adjust(bottom=y + labels)


def headline_table(rows: Sequence[BenchRow], size: int, connections: int) -> str:
    """One cell's MB/s and server CPU-s per GiB for each strategy, as Markdown (the
    README's results table), with the client-bound mark and its footnote; `ConfigError`
    when no row has that size and concurrency."""
    chosen = sorted(
        (row for row in rows if (row.size, row.connections) == (size, connections)),
        key=lambda row: strategy_rank(row.strategy),
    )
    if not chosen:
        cells = sorted({(row.size, row.connections) for row in rows})
        raise ConfigError(
            f"no row for {format_size(size)} at {connections} connections; the rows have "
            + ", ".join(f"{format_size(s)},{c}" for s, c in cells)
        )
    spaced = re.sub(r"^(\d+)", r"\1 ", format_size(size))  # 1MiB -> 1 MiB
    conns = f"{connections} connection{'' if connections == 1 else 's'}"
    lines = [
        f"| {spaced} file, {conns} | MB/s | server CPU-s per GiB |",
        "|---|---|---|",
        *(
            f"| {marked(row)} | {row.megabytes_per_second:,.0f} | {shown(row.cpu_per_gib, '.2f')} |"
            for row in chosen
        ),
    ]
    return "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes(chosen, ""))


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
            f"| {shown(row.p50_ms, '.2f')} | {shown(row.p99_ms, '.2f')} | {row.errors} "
            f"| {shown(row.server_cpu_seconds, '.2f')} | {row.client_cpu_seconds:.2f} "
            f"| {shown(row.cpu_per_gib, '.2f')} "
            f"| {shown(row.server_peak_rss_mb, '.0f')} | {f'{ratio:.2f}x' if ratio else ''} |"
        )
    return "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes(rows, pinning))
