"""The bench's plots are slides and its table reads in 80 columns.

Plots: 16:9 and at least 1600 px wide, titled and captioned (CPU, cores, loop, cell
duration, date, pinning), fonts of 12 pt or more, y from 0 (p99 on a log scale), x
ticks at the measured concurrencies, a legend outside every panel and, with the
caption, in under a fifth of the figure, one colour and marker per strategy whatever
the run, a third plot of server CPU-s per GiB, and gaps (not zeros) where nothing was
measured: a cell where no request completed is in no plot, and the figure says so.
Without matplotlib the bench still writes everything else and says in one line how to
get the plots."""

from __future__ import annotations

import csv
import json
import math
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as pyplot
import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text
from rich.console import Console

from tests.support.scripted import ScriptedServer
from zcserve import cli
from zcserve.bench.results import (
    CLIENT_BOUND_MARK,
    MATPLOTLIB_MISSING,
    PLOTS,
    BenchRow,
    Plot,
    plot_figure,
    print_table,
    write_results,
)
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import format_size

ROOT = Path(__file__).resolve().parents[2]
SIZES = (4096, 1 << 20, 64 << 20)
CONCURRENCY = (1, 8, 64, 512)
STRATEGIES = ("readwrite", "sendfile")
NOTHING_COMPLETED = (64 << 20, 512)
"""The cell (size, connections) where no response completed, yet bytes moved."""
META: dict[str, Any] = {
    "date": "2026-11-27 01:00:00 UTC",
    "cpu_model": "Imaginary CPU @ 3.00GHz",
    "cpus": 2,
    "loop": "uvloop",
    "duration": 2.5,
    "warmup": 0.5,
    "placement": "server pinned to CPU [0], load generator on CPU [1] as 1 load process",
}


def _row(strategy: str, size: int, connections: int) -> BenchRow:
    factor = 3 if strategy == "sendfile" else 1
    megabytes = factor * 100.0 * connections**0.5
    nothing = (size, connections) == NOTHING_COMPLETED
    return BenchRow(
        strategy=strategy,
        size=size,
        connections=connections,
        requests_per_second=0.0 if nothing else megabytes * 1e6 / size,
        megabytes_per_second=megabytes,
        p50_ms=None if nothing else 0.1 * connections * factor,
        p99_ms=None if nothing else 0.4 * connections * factor,
        errors=0,
        server_cpu_seconds=2.0 / factor,
        server_peak_rss_mb=40.0,
        duration=2.5,
        requests=0 if nothing else int(megabytes * 1e6 / size * 2.5),
        server_bytes=int(megabytes * 1e6 * 3),
        client_cpu_seconds=0.5,
        client_bound=(strategy, connections) == ("sendfile", 8),
    )


@pytest.fixture
def rows() -> list[BenchRow]:
    return [_row(s, z, c) for s in STRATEGIES for z in SIZES for c in CONCURRENCY]


@pytest.fixture
def figures(rows: list[BenchRow]) -> Any:
    figs = {plot: plot_figure(rows, plot, META) for plot in PLOTS}
    yield figs
    for fig in figs.values():
        pyplot.close(fig)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, the first after the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_three_plots_each_a_16_by_9_slide(rows: list[BenchRow], tmp_path: Path) -> None:
    written = write_results(str(tmp_path), rows, META)
    names = sorted(Path(path).name for path in written if path.endswith(".png"))
    assert names == ["cpu_per_gib.png", "p99.png", "throughput.png"]
    for name in names:
        width, height = png_size(tmp_path / name)
        assert width >= 1600 and width * 9 == height * 16, (name, width, height)


def test_each_figure_is_titled_captioned_and_readable(figures: dict[Plot, Any]) -> None:
    for plot, fig in figures.items():
        assert plot.title in fig.get_suptitle()
        (caption,) = [t for t in fig.texts if t.get_gid() == "caption"]
        for part in (
            "Imaginary CPU @ 3.00GHz",
            "2 cores",
            "loop uvloop",
            "2.5 s per cell",
            "2026-11-27 01:00:00 UTC",
            "server pinned to CPU [0]",
        ):
            assert part in caption.get_text(), (plot.filename, part)
        fig.canvas.draw()
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 12]
        assert not small, (plot.filename, small)


def test_y_from_zero_p99_on_a_log_scale_and_x_ticks_at_the_measured_concurrencies(
    figures: dict[Plot, Any],
) -> None:
    """p99 spans decades (0.4 ms at one connection, seconds at 512): a log axis shows
    them all; the other figures start at 0."""
    for plot, fig in figures.items():
        assert len(fig.axes) == len(SIZES)
        for axis, size in zip(fig.axes, SIZES, strict=True):
            assert axis.get_title() == format_size(size)
            if plot.metric == "p99_ms":
                assert axis.get_yscale() == "log", size
            else:
                assert axis.get_yscale() == "linear", (plot.filename, size)
                assert axis.get_ylim()[0] == 0, (plot.filename, size)
            assert list(axis.get_xticks()) == list(CONCURRENCY)
            labels = [label.get_text() for label in axis.get_xticklabels()]
            assert labels == [str(c) for c in CONCURRENCY]
            assert list(axis.xaxis.get_minorticklocs()) == []  # no 2, 4, 16, ... between


def test_the_legend_covers_no_panel(figures: dict[Plot, Any]) -> None:
    for plot, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        for axis in fig.axes:
            # The panel with its ticks, labels and title: nothing of it under the legend.
            assert not box.overlaps(axis.get_tightbbox(renderer)), plot.filename
        notes = [t for t in fig.texts if t.get_gid() in ("caption", "missing")]
        assert len(notes) == 2, plot.filename
        for note in notes:
            assert not box.overlaps(note.get_window_extent(renderer)), plot.filename
            for axis in fig.axes:
                assert not note.get_window_extent(renderer).overlaps(axis.get_tightbbox(renderer))
        assert (
            not notes[0].get_window_extent(renderer).overlaps(notes[1].get_window_extent(renderer))
        )
        names = [text.get_text() for text in legend.get_texts()]
        assert names[: len(STRATEGIES)] == list(STRATEGIES)


@pytest.mark.parametrize("strategies", [STRATEGIES, STRATEGY_NAMES], ids=["two", "every"])
def test_the_legend_and_caption_take_under_a_fifth_of_the_figure(
    strategies: tuple[str, ...],
) -> None:
    """The strip the panels leave below them (their tick labels and axis label drawn)
    holds the legend, the note and the caption, inside the figure, and is under a fifth
    of its area; with every strategy too, whose legend takes two rows."""
    rows = [_row(s, z, c) for s in strategies for z in SIZES for c in CONCURRENCY]
    for plot in PLOTS:
        fig = plot_figure(rows, plot, META)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        figure = fig.bbox
        strip = min(axis.get_tightbbox(renderer).y0 for axis in fig.axes) - figure.y0
        (legend,) = fig.legends
        boxes = [legend.get_window_extent(renderer)]
        notes = [t for t in fig.texts if t.get_gid() in ("caption", "missing")]
        boxes += [note.get_window_extent(renderer) for note in notes]
        assert strip * figure.width < figure.width * figure.height / 5, (plot.filename, strip)
        for box in boxes:
            assert figure.x0 <= box.x0 and box.x1 <= figure.x1, (plot.filename, box)
            assert figure.y0 <= box.y0 and box.y1 <= figure.y0 + strip, (plot.filename, box)
        assert len(boxes) == 3, plot.filename  # legend, note, caption
        pyplot.close(fig)


def _styles(fig: Any) -> dict[str, tuple[str, str]]:
    """(colour, marker) of each name in the figure's legend."""
    (legend,) = fig.legends
    return {
        text.get_text(): (to_hex(handle.get_color()), handle.get_marker())
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }


def test_each_strategy_keeps_one_colour_and_marker_whatever_the_run() -> None:
    """By name, not by place in the run: sendfile looks the same beside readwrite as
    beside fallback, mmap and splice, in the legend and in every panel."""
    seen: dict[str, tuple[str, str]] = {}
    drawn: list[tuple[Any, dict[str, tuple[str, str]]]] = []
    for strategies in (("readwrite", "sendfile"), ("fallback", "mmap", "sendfile", "splice")):
        rows = [_row(s, z, c) for s in strategies for z in SIZES for c in CONCURRENCY]
        for plot in PLOTS:
            fig = plot_figure(rows, plot, META)
            styles = {name: style for name, style in _styles(fig).items() if name in strategies}
            assert sorted(styles) == sorted(strategies), plot.filename
            assert len(set(styles.values())) == len(strategies)  # told apart
            for name, style in styles.items():
                assert seen.setdefault(name, style) == style, (name, plot.filename)
            drawn.append((fig, styles))
    for fig, styles in drawn:  # each line and point in its strategy's legend style
        for axis in fig.axes:
            for line in axis.get_lines():
                colour, marker = styles[line.get_gid()]
                assert to_hex(line.get_color()) == colour, line.get_gid()
                assert line.get_marker() in ("None", marker), line.get_gid()
        pyplot.close(fig)


def _lines_of(axis: Any) -> list[tuple[list[float], list[float], str]]:
    return [
        (list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle())
        for line in axis.get_lines()
    ]


def test_a_cell_where_no_request_completed_is_in_no_plot_and_named(
    rows: list[BenchRow], figures: dict[Plot, Any]
) -> None:
    """64 MiB at 512 connections: no response completed (though bytes moved). No plot
    draws it, as a 0 or as a point; each figure names it in a note. A run where every
    cell completed has no note."""
    size, connections = NOTHING_COMPLETED
    for plot, fig in figures.items():
        axis = fig.axes[SIZES.index(size)]
        for xs, ys, style in _lines_of(axis):
            drawn = [y for x, y in zip(xs, ys, strict=True) if x == connections]
            assert all(math.isnan(y) for y in drawn), (plot.filename, xs, ys, style)
            assert 0 not in ys
        at_512 = [y for _, ys, _ in _lines_of(fig.axes[0]) for y in ys[-1:]]
        assert any(not math.isnan(y) for y in at_512)  # a cell that completed is drawn
        (note,) = [t for t in fig.texts if t.get_gid() == "missing"]
        text = " ".join(note.get_text().split())
        assert f"{format_size(size)} at {connections} connections (readwrite, sendfile)" in text
    complete = [row for row in rows if (row.size, row.connections) != NOTHING_COMPLETED]
    for plot in PLOTS:
        fig = plot_figure(complete, plot, META)
        assert [t for t in fig.texts if t.get_gid() == "missing"] == [], plot.filename
        pyplot.close(fig)


def test_table_and_csv_say_n_a_for_a_missing_latency(rows: list[BenchRow], tmp_path: Path) -> None:
    write_results(str(tmp_path), rows, META, plots=False)
    with open(tmp_path / "results.csv", newline="") as f:
        saved = list(csv.DictReader(f))
    for row, line in zip(rows, saved, strict=True):
        expected = ("n/a", "n/a") if row.requests == 0 else (str(row.p50_ms), str(row.p99_ms))
        assert (line["p50_ms"], line["p99_ms"]) == expected
    data = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert sum(1 for row in data if row["p99_ms"] is None) == len(STRATEGIES)
    console = Console(width=80, record=True)
    print_table(rows, pinning="", console=console)
    cells = table_rows(console.export_text())
    for strategy in STRATEGIES:
        size, connections = NOTHING_COMPLETED
        shown = cells[(strategy, format_size(size), str(connections))]
        assert shown[2:4] == ["n/a", "n/a"], shown  # p50 and p99


# the printed table --------------------------------------------------------------------


def table_rows(text: str) -> dict[tuple[str, str, str], list[str]]:
    """Each row's value cells, by (strategy, size, conns), across every table the
    width made: a row's cells continue in each table after the first."""
    found: dict[tuple[str, str, str], list[str]] = {}
    for line in text.splitlines():
        if "│" not in line:
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        key = (cells[0].removesuffix(CLIENT_BOUND_MARK).strip(), cells[1], cells[2])
        found.setdefault(key, []).extend(cells[3:])
    return found


def expected_cells(row: BenchRow, ratio: str) -> list[str]:
    def maybe(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    return [
        f"{row.requests_per_second:,.0f}",
        f"{row.megabytes_per_second:,.1f}",
        maybe(row.p50_ms, ".2f"),
        maybe(row.p99_ms, ".2f"),
        str(row.errors),
        maybe(row.server_cpu_seconds, ".2f"),
        f"{row.client_cpu_seconds:.2f}",
        maybe(row.cpu_per_gib, ".2f"),
        maybe(row.server_peak_rss_mb, ".0f"),
        ratio,
    ]


def wide_row(strategy: str, *, bound: bool, rate: float, extreme: bool) -> BenchRow:
    """Figures as wide as the default sweep makes (6-digit rates, 5-digit MB/s, 4-digit
    p99, 512 connections), or with `extreme` wider still (5-digit p99, errors and RSS,
    4096 connections)."""
    return BenchRow(
        strategy=strategy,
        size=64 * 1024**2 if not extreme else 512 * 1024,
        connections=4096 if extreme else 512,
        requests_per_second=rate,
        megabytes_per_second=rate / 10,
        p50_ms=1234.56 if extreme else 123.45,
        p99_ms=12345.67 if extreme else 1234.56,
        errors=12345 if extreme else 12,
        server_cpu_seconds=1234.56 if extreme else 12.34,
        server_peak_rss_mb=12345.0 if extreme else 456.0,
        duration=2.5,
        requests=int(rate * 2.5),
        server_bytes=int(rate * 512 * 1024 * 2.5),
        client_cpu_seconds=123.45 if extreme else 2.5,
        client_bound=bound,
    )


@pytest.mark.parametrize(
    ("width", "extreme", "tables"),
    [
        (80, False, 2),  # the default sweep's figures: two tables
        (80, True, 3),  # wider figures: as many tables as it takes, numbers whole
        (200, True, 1),  # a wide terminal, or a pipe (180 columns): one table
    ],
)
def test_the_table_reads_in_80_columns(width: int, extreme: bool, tables: int) -> None:
    """In 80 columns the table wraps into several, each repeating the key columns;
    every figure of every row appears whole, in order, and no line is wider than the
    terminal."""
    rows = [
        wide_row("readwrite", bound=True, rate=123_456.0, extreme=extreme),
        wide_row("fallback", bound=False, rate=234_567.0, extreme=extreme),
        wide_row("external", bound=False, rate=34_567.0, extreme=extreme),
    ]
    rows[2] = replace(rows[2], server_cpu_seconds=None, server_peak_rss_mb=None)
    console = Console(width=width, record=True)
    print_table(
        rows, pinning="server pinned to CPU [0], load generator on CPU [1]", console=console
    )
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    assert text.count("┏") == tables
    shown = table_rows(text)
    ratios = {"readwrite": "", "fallback": "1.90x", "external": "0.28x"}
    for row in rows:
        key = (row.strategy, format_size(row.size), str(row.connections))
        assert shown[key] == expected_cells(row, ratios[row.strategy]), key
    assert f"readwrite {CLIENT_BOUND_MARK}" in text
    notes = " ".join(text.split("┘")[-1].split())  # the caption, after the last table
    assert notes.startswith("server pinned to CPU [0], load generator on CPU [1] † client-bound")


# without matplotlib -------------------------------------------------------------------

BLOCK_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None\n"
WITHOUT_MATPLOTLIB = (
    BLOCK_MATPLOTLIB
    + """\
import json
from zcserve import cli
from zcserve.bench.results import PlotsUnavailable, load_results, write_plots
url, out = sys.argv[1], sys.argv[2]
code = cli.main(["bench", "--url", url, "--duration", "0.3", "--warmup", "0",
                 "--concurrency", "2", "--out", out])
rows, meta = load_results(out + "/results.json")
try:
    write_plots(out, rows, meta)
except PlotsUnavailable as exc:
    print("write_plots:", exc)
report = cli.main(["report", out + "/results.json", "--plots", out + "/again"])
assert [m for m in sys.modules if m.startswith("matplotlib") and sys.modules[m]] == []
print("exit codes:", code, report)
"""
)


def test_without_matplotlib_the_bench_writes_all_but_the_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ScriptedServer(delay=0.005) as server:
        result = subprocess.run(
            [sys.executable, "-c", WITHOUT_MATPLOTLIB, server.url, str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    skipped = f"plots skipped: {MATPLOTLIB_MISSING}"
    assert skipped == "plots skipped: matplotlib is not installed (pip install 'zcserve[bench]')"
    assert lines.count(skipped) == 1, result.stdout
    assert f"write_plots: {MATPLOTLIB_MISSING}" in lines
    assert "exit codes: 0 2" in lines  # the bench ran; report --plots refused
    assert "zcserve bench" in result.stdout  # the table
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "table.md"]
    assert result.stderr.splitlines() == [
        f"zcserve report: error: cannot draw the plots: {MATPLOTLIB_MISSING}"
    ]


def test_results_saved_before_n_a_show_no_latency_for_an_empty_cell(
    rows: list[BenchRow], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Older results.json files wrote 0.0 ms for a cell where no request completed;
    read again they show `n/a` (and the plots a gap), as new ones do."""
    write_results(str(tmp_path), rows, META, plots=False)
    path = tmp_path / "results.json"
    data = json.loads(path.read_text())
    for row in data["rows"]:
        if row["p99_ms"] is None:
            row["p50_ms"] = row["p99_ms"] = 0.0
    path.write_text(json.dumps(data))
    assert cli.main(["report", str(path)]) == 0
    cells = table_rows(capsys.readouterr().out)
    size, connections = NOTHING_COMPLETED
    for strategy in STRATEGIES:
        assert cells[(strategy, format_size(size), str(connections))][2:4] == ["n/a", "n/a"]
