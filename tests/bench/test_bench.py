"""`zcserve bench` end to end at a tiny scale, the seed experiment with every
strategy, and the ceiling measurement.

The sweep runs once for the module with every strategy, and each cell is checked
against the server's own counters (`zcserve_sent_bytes_total{strategy=...}` from its
--metrics endpoint, scraped by the test around each cell) and the load generator's
result for that cell: a row must name the strategy that really moved the bytes, and
its MB/s must be the bytes that arrived in the window over the window's length.

Each cell also records the load generator's CPU beside the server's, and is marked
client-bound (table, results.json, CSV, plots, `zcserve report`) when the load
generator, not the server, was the limit; the load runs where the caption says."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as pyplot
import pytest
from rich.console import Console

from tests.support.metrics import ACTIVE, moved_by, sent_by_strategy, settled
from tests.support.scripted import Behaviour, ScriptedServer
from tests.support.servers import zcserve_command
from zcserve import cli
from zcserve.bench import command as bench_command
from zcserve.bench import sweep
from zcserve.bench.ceiling import CEILING_STRATEGIES, run_ceiling
from zcserve.bench.placement import Placement
from zcserve.bench.results import (
    CLIENT_BOUND_MARK,
    CLIENT_BOUND_NOTE,
    PLOTS,
    BenchRow,
    is_client_bound,
    load_results,
    plot_figure,
)
from zcserve.bench.seed import SEED_STRATEGIES, run_seed_experiment
from zcserve.bench.sweep import BenchOptions
from zcserve.bench.syscalls import SYSCALL_STRATEGIES
from zcserve.demo import write_file
from zcserve.load.raw import RawOptions, RawResult
from zcserve.load.raw import run_raw as real_run_raw
from zcserve.load.run import LoadOptions
from zcserve.load.run import run_load as real_run_load
from zcserve.load.stats import LoadResult
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import format_size

pytestmark = pytest.mark.serial  # it pins CPUs, measures, and judges a busy client

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = (4096, 65536)
CONCURRENCY = (1, 3)
DURATION = 0.1
"""Seconds per cell: hundreds of responses, even at 64 KiB on one connection."""


@dataclass(frozen=True)
class MeasuredCell:
    """One measured cell: the row the bench made, the load generator's result, and
    what the server's byte counter grew by, per strategy label, during the cell."""

    row: BenchRow
    load: LoadResult
    sent: dict[str, int]
    options: LoadOptions
    """What the bench asked the load generator for."""
    cpus: set[int]
    """The CPUs the load generator was allowed while it ran."""


@dataclass(frozen=True)
class Bench:
    cells: list[MeasuredCell]
    rows: list[BenchRow]
    """As read back from results.json."""
    meta: dict[str, object]
    out: str
    text: str
    """Everything the bench printed."""


def counted(metrics_url: str) -> dict[str, float]:
    """Sent bytes by strategy once every connection the cell opened is closed."""
    return sent_by_strategy(settled(metrics_url, ACTIVE, 0))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    """`run_bench` over every strategy, with the server scraped around each cell."""
    out = str(tmp_path_factory.mktemp("bench") / "results")
    options = BenchOptions(
        strategies=STRATEGY_NAMES,
        sizes=SIZES,
        concurrency=CONCURRENCY,
        duration=DURATION,
        warmup=0.0,  # so every response the server sent is one the load generator counted
        out=out,
    )
    cells: list[MeasuredCell] = []
    loads: list[tuple[LoadResult, LoadOptions, set[int]]] = []
    real_measure_cell = sweep.measure_cell

    def run_load(load: LoadOptions) -> LoadResult:
        cpus = os.sched_getaffinity(0)  # what the load processes run on (spawned: inherit)
        result = real_run_load(load)
        loads.append((result, load, cpus))
        return result

    def measure_cell(cell: sweep.Cell) -> BenchRow:
        assert cell.server is not None
        before = counted(cell.server.metrics_url)
        loads.clear()
        row = real_measure_cell(cell)
        after = counted(cell.server.metrics_url)
        sent = {k: int(v - before.get(k, 0)) for k, v in after.items() if v != before.get(k, 0)}
        ((load, asked, cpus),) = loads
        cells.append(MeasuredCell(row, load, sent, asked, cpus))
        return row

    console = Console(record=True, width=200)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "run_load", run_load)
        patch.setattr(sweep, "measure_cell", measure_cell)
        assert sweep.run_bench(options, console) == 0
    rows, meta = load_results(os.path.join(out, "results.json"))
    return Bench(cells, rows, meta, out, console.export_text())


def test_bench_end_to_end(bench: Bench) -> None:
    assert "zcserve bench" in bench.text and "readwrite" in bench.text
    assert "server pinned to CPU" in bench.text or "could not be separated" in bench.text
    rows = bench.rows
    assert len(rows) == len(STRATEGY_NAMES) * len(SIZES) * len(CONCURRENCY)
    assert {(r.strategy, r.size, r.connections) for r in rows} == {
        (s, z, c) for s in STRATEGY_NAMES for z in SIZES for c in CONCURRENCY
    }
    assert rows == [cell.row for cell in bench.cells]  # results.json holds what was measured
    for row in rows:
        assert row.errors == 0 and row.requests > 0 and row.requests_per_second > 0
        assert row.p50_ms is not None and row.p99_ms is not None
        assert row.megabytes_per_second > 0 and row.p99_ms >= row.p50_ms > 0
        assert row.server_peak_rss_mb is not None and row.server_peak_rss_mb > 0
        assert row.server_cpu_seconds is not None and row.server_cpu_seconds > 0
    assert bench.meta["placement"]
    with open(os.path.join(bench.out, "results.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["megabytes_per_second"]) for r in table] == [
        r.megabytes_per_second for r in rows
    ]
    assert [float(r["client_cpu_seconds"]) for r in table] == [r.client_cpu_seconds for r in rows]
    assert [r["client_bound"] for r in table] == [str(r.client_bound) for r in rows]
    for plot in PLOTS:
        with open(os.path.join(bench.out, plot.filename), "rb") as f:
            assert f.read(8) == PNG_MAGIC


def _key(row: BenchRow) -> tuple[str, str, str]:
    return row.strategy, format_size(row.size), str(row.connections)


def shown_rows(lines: list[list[str]]) -> dict[tuple[str, ...], tuple[bool, list[str]]]:
    """Table lines by (strategy, size, conns): whether the strategy carries the
    client-bound mark, and the cells."""
    by_key = {}
    for line in lines:
        cells = [c.strip() for c in line]
        strategy = cells[0].removesuffix(CLIENT_BOUND_MARK).strip()
        by_key[(strategy, *cells[1:3])] = (cells[0].endswith(CLIENT_BOUND_MARK), cells)
    return by_key


def printed_lines(text: str) -> list[list[str]]:
    return [line.split("│")[1:-1] for line in text.splitlines() if "│" in line]


def markdown_lines(path: str) -> list[list[str]]:
    with open(path) as f:
        return [line.split("|")[1:-1] for line in f if line.startswith("| ")]


def test_tables_show_the_measured_figures(bench: Bench) -> None:
    """The printed table and table.md show each row's own MB/s, req/s, client CPU and
    client-bound mark."""
    markdown = markdown_lines(os.path.join(bench.out, "table.md"))
    for lines in (markdown, printed_lines(bench.text)):
        cells = shown_rows(lines)
        for row in bench.rows:
            bound, shown = cells[_key(row)]
            assert shown[3] == f"{row.requests_per_second:,.0f}", shown
            assert shown[4] == f"{row.megabytes_per_second:,.1f}", shown
            assert shown[9] == f"{row.client_cpu_seconds:.2f}", shown
            assert bound == row.client_bound, shown


def test_each_row_names_the_strategy_that_ran(bench: Bench) -> None:
    """The server's counter grew under the row's strategy (auto: sendfile, on plain
    TCP) by exactly the bytes the row reports, and under no other name."""
    assert {cell.row.strategy for cell in bench.cells} == set(STRATEGY_NAMES)
    for cell in bench.cells:
        row = cell.row
        assert row.server_bytes > 0, row
        assert cell.sent == {moved_by(row.strategy, size=row.size): row.server_bytes}, _key(row)


def test_megabytes_per_second_is_bytes_in_the_window_over_its_length(bench: Bench) -> None:
    for cell in bench.cells:
        row, load = cell.row, cell.load
        size, connections = row.size, row.connections
        assert row.requests == load.requests and load.failed == 0 and row.errors == 0
        # Enough responses that a figure off by a factor shows against the bounds below.
        assert row.requests > 4 * connections, row
        assert row.duration == load.window_seconds == pytest.approx(DURATION, rel=1e-6)
        # With no warm-up, every response the server sent was counted when it ended.
        assert size * row.requests <= row.server_bytes <= size * (row.requests + connections)
        window_bytes = row.megabytes_per_second * 1e6 * row.duration
        assert window_bytes == pytest.approx(load.window_bytes, rel=1e-9)
        # What arrived in the window the server sent; at most one response per
        # connection was still on its way when the window closed.
        assert row.server_bytes - size * connections - 1 <= window_bytes <= row.server_bytes + 1
        assert row.requests_per_second == pytest.approx(row.requests / load.duration)


def test_the_load_runs_where_the_caption_says(bench: Bench) -> None:
    """One load process per load CPU (on 2 CPUs: one, in-process, on CPU 1), pinned
    there, as the caption and results.json's meta say."""
    meta = bench.meta
    client = meta["client_cpus"]
    processes = meta["load_processes"]
    assert isinstance(processes, int)
    if client is None:  # one CPU: nothing to separate
        assert processes == 1 and meta["server_cpus"] is None
    else:
        assert isinstance(client, list) and isinstance(meta["server_cpus"], list)
        assert processes == len(client)
        assert not set(client) & set(meta["server_cpus"])
    said = f"{processes} load processes"
    if processes == 1:
        said = "1 load process (in the bench's own process)"
    assert said in str(meta["placement"])
    assert said in bench.text  # the table's caption
    for cell in bench.cells:
        assert cell.options.processes == processes
        assert cell.load.processes == min(processes, cell.row.connections)
        if client is not None:
            assert cell.cpus == set(client)


def test_client_cpu_is_recorded_and_judged_per_cell(bench: Bench) -> None:
    """Each row holds its load generator's CPU seconds, and its client-bound flag is the
    rule applied to the CPU each side had: the load's CPUs (one per process at most)
    over its measurement, the server's one CPU over the warm-up and the measurement."""
    client = bench.meta["client_cpus"]
    allowed = len(client) if isinstance(client, list) else len(os.sched_getaffinity(0))
    for cell in bench.cells:
        row, load = cell.row, cell.load
        assert row.client_cpu_seconds == load.cpu_seconds > 0
        assert row.server_cpu_seconds is not None
        assert row.client_bound == is_client_bound(
            client_cpu_seconds=load.cpu_seconds,
            client_cpus=min(allowed, load.processes),
            client_seconds=load.duration,
            server_cpu_seconds=row.server_cpu_seconds,
            server_seconds=load.duration,  # warm-up 0 in this bench
        )
    with open(os.path.join(bench.out, "results.json")) as f:
        saved = json.load(f)["rows"]
    for cell, row in zip(bench.cells, saved, strict=True):
        assert row["client_cpu_seconds"] == cell.row.client_cpu_seconds
        assert row["client_bound"] is cell.row.client_bound


@pytest.mark.parametrize(
    ("client_cpu", "client_cpus", "server_cpu", "bound"),
    [
        (0.95, 1, 0.50, True),  # the client saturated its one CPU, the server idled half
        (0.90, 1, 0.50, True),  # at the threshold
        (0.89, 1, 0.50, False),
        (0.95, 1, 0.90, False),  # both saturated: the server may be the limit too
        (0.95, 1, 0.0, True),  # server CPU not seen (--url): headroom assumed
        (1.90, 2, 0.30, True),  # two load CPUs, both busy
        (0.95, 2, 0.30, False),  # one of two load CPUs busy: the client had more
        (0.10, 1, 0.99, False),  # server-bound
    ],
)
def test_client_bound_rule(
    client_cpu: float, client_cpus: int, server_cpu: float, bound: bool
) -> None:
    """Over 2 s: client CPU s / (its CPUs x 2 s) >= 90 % and server CPU s / 2 s < 90 %."""
    assert (
        is_client_bound(
            client_cpu_seconds=client_cpu * 2,
            client_cpus=client_cpus,
            client_seconds=2.0,
            server_cpu_seconds=server_cpu * 2,
            server_seconds=2.0,
        )
        is bound
    )


@pytest.mark.parametrize(
    ("processes", "busy", "bound"),
    [
        (1, 1.0, True),  # one process at 100 %: it could not use the second CPU
        (2, 0.5, False),  # two at 50 % each: the client had CPU to spare
    ],
)
def test_client_bound_counts_the_cpus_the_load_processes_could_use(
    processes: int, busy: float, bound: bool
) -> None:
    """On two load CPUs the client's share is over the CPUs its processes could use
    (one per process), not the two it was given."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    placement = Placement(server=None, client=set(cpus), load_processes=processes, external=True)
    loads: list[LoadResult] = []

    def run_load(load: LoadOptions) -> LoadResult:
        result = real_run_load(load)
        result = replace(result, cpu_seconds=busy * result.duration * result.processes)
        loads.append(result)
        return result

    with ScriptedServer(delay=0.05) as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "run_load", run_load)
        options = BenchOptions(concurrency=(4,), duration=0.5, warmup=0.0, url=server.url)
        cell = sweep.Cell(
            strategy="external",
            size=0,
            connections=4,
            url=server.url,
            server=None,
            options=options,
            placement=placement,
        )
        row = sweep.measure_cell(cell)
    (load,) = loads
    assert load.processes == processes and row.requests > 0
    assert row.client_cpu_seconds == pytest.approx(busy * processes * load.duration)
    assert row.client_bound is bound


@dataclass(frozen=True)
class External:
    """A bench run by the command line against an external --url."""

    rows: list[BenchRow]
    meta: dict[str, Any]
    loads: list[LoadResult]
    out: Path
    text: str


def bench_url(
    url: str,
    out: Path,
    capsys: pytest.CaptureFixture[str],
    *flags: str,
    client_cpu: float | None = None,
) -> External:
    """`zcserve bench --url URL FLAGS` in this process; `client_cpu`, when given, is the
    share of its CPU each load run reports having used (a saturated client, on demand)."""
    loads: list[LoadResult] = []

    def run_load(load: LoadOptions) -> LoadResult:
        result = real_run_load(load)
        if client_cpu is not None:
            result = replace(result, cpu_seconds=client_cpu * result.duration * result.processes)
        loads.append(result)
        return result

    argv = ["bench", "--url", url, "--duration", "0.5", "--warmup", "0", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "run_load", run_load)
        code = cli.main([*argv, *flags])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows, meta = load_results(str(out / "results.json"))
    return External(rows, meta, loads, out, printed)


def test_a_slow_server_is_not_client_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each response 50 ms late: the load generator waits, far from its CPU's limit."""
    with ScriptedServer(delay=0.05) as server:
        run = bench_url(server.url, tmp_path / "out", capsys, "--concurrency", "4")
    (row,) = run.rows
    (load,) = run.loads
    assert row.requests > 0 and row.errors == 0
    assert 0 < row.client_cpu_seconds == load.cpu_seconds < 0.5 * load.duration
    assert row.client_bound is False
    assert CLIENT_BOUND_MARK not in run.text and CLIENT_BOUND_NOTE not in run.text
    assert "client-bound" not in run.text
    with open(run.out / "results.csv", newline="") as f:
        (saved,) = csv.DictReader(f)
    assert saved["client_bound"] == "False"
    assert float(saved["client_cpu_seconds"]) == row.client_cpu_seconds
    assert CLIENT_BOUND_MARK not in (run.out / "table.md").read_text()


def test_a_saturated_client_is_marked_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A load generator that used all of its one CPU while the server had headroom: the
    row is marked in the table (mark and footnote), results.json, the CSV, table.md, the
    plots (hollow) and `zcserve report`; the progress line says so too."""
    with ScriptedServer(delay=0.05) as server:
        run = bench_url(
            server.url, tmp_path / "out", capsys, "--concurrency", "1,4", client_cpu=1.0
        )
    assert [row.client_bound for row in run.rows] == [True, True]
    for row, load in zip(run.rows, run.loads, strict=True):
        assert row.client_cpu_seconds == load.cpu_seconds == pytest.approx(load.duration)
    assert "client-bound" in run.text  # the progress lines
    assert CLIENT_BOUND_NOTE in " ".join(run.text.split())  # the caption, however wrapped
    for lines in (printed_lines(run.text), markdown_lines(str(run.out / "table.md"))):
        shown = shown_rows(lines)
        assert [shown[_key(row)][0] for row in run.rows] == [True, True]
    assert CLIENT_BOUND_NOTE in (run.out / "table.md").read_text()
    data = json.loads((run.out / "results.json").read_text())
    assert [row["client_bound"] for row in data["rows"]] == [True, True]
    assert all(row["client_cpu_seconds"] > 0 for row in data["rows"])
    with open(run.out / "results.csv", newline="") as f:
        assert [saved["client_bound"] for saved in csv.DictReader(f)] == ["True", "True"]
    # `zcserve report` renders the saved rows with the mark and the footnote.
    assert cli.main(["report", str(run.out / "results.json")]) == 0
    report = capsys.readouterr().out
    assert [shown_rows(printed_lines(report))[_key(row)][0] for row in run.rows] == [True, True]
    assert CLIENT_BOUND_NOTE in " ".join(report.split())


def test_an_external_server_has_no_cpu_or_rss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--url: the bench did not start the server, so it cannot see its CPU or memory:
    `n/a` in the table, table.md and the CSV, null in results.json, never 0.00; and the
    captions (table and plots) do not claim it pinned the server."""
    with ScriptedServer(delay=0.01) as server:
        run = bench_url(server.url, tmp_path / "out", capsys, "--concurrency", "2")
    (row,) = run.rows
    assert row.requests > 0 and row.p99_ms is not None  # the load itself was measured
    assert row.server_cpu_seconds is None and row.server_peak_rss_mb is None
    assert row.cpu_per_gib is None
    (saved,) = json.loads((run.out / "results.json").read_text())["rows"]
    assert saved["server_cpu_seconds"] is None and saved["server_peak_rss_mb"] is None
    assert saved["cpu_per_gib"] is None
    with open(run.out / "results.csv", newline="") as f:
        (line,) = csv.DictReader(f)
    assert [line[n] for n in ("server_cpu_seconds", "server_peak_rss_mb", "cpu_per_gib")] == [
        "n/a"
    ] * 3
    for lines in (printed_lines(run.text), markdown_lines(str(run.out / "table.md"))):
        _, cells = shown_rows(lines)[_key(row)]
        assert [cells[8], cells[10], cells[11]] == ["n/a"] * 3, cells  # server CPU, /GiB, RSS
        assert cells[9] == f"{row.client_cpu_seconds:.2f}"  # the client's CPU is seen
    assert run.meta["server_cpus"] is None and run.meta["external_server"] is True
    placement = str(run.meta["placement"])
    assert "server pinned" not in placement and "external server" in placement
    assert "server pinned" not in run.text and "external server (--url)" in run.text
    fig = plot_figure(run.rows, PLOTS[0], run.meta)
    captions = [text.get_text() for text in fig.texts]
    pyplot.close(fig)
    assert any("external server" in caption for caption in captions), captions
    assert not any("server pinned" in caption for caption in captions), captions


def test_a_cell_where_no_request_completed_has_no_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that hangs up on every request: no response completed, so the cell's
    latency is `n/a` in the table and the CSV, null in results.json, never `0.00`."""
    out = tmp_path / "out"
    argv = ["bench", "--url", "", "--duration", "0.3", "--warmup", "0", "--concurrency", "2"]
    with ScriptedServer(Behaviour.HANG_UP) as server:
        argv[2] = server.url
        code = cli.main([*argv, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed  # every request failed: the bench says so
    rows, _ = load_results(str(out / "results.json"))
    (row,) = rows
    assert row.requests == 0 and row.errors > 0
    assert row.p50_ms is None and row.p99_ms is None
    (saved,) = json.loads((out / "results.json").read_text())["rows"]
    assert saved["p50_ms"] is None and saved["p99_ms"] is None
    with open(out / "results.csv", newline="") as f:
        (line,) = csv.DictReader(f)
    assert (line["p50_ms"], line["p99_ms"]) == ("n/a", "n/a")
    _, cells = shown_rows(printed_lines(printed))[_key(row)]
    assert (cells[5], cells[6]) == ("n/a", "n/a"), cells
    assert "p99     n/a ms" in printed  # the progress line


def test_more_load_processes_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--load-processes 2: two load processes ran, on the load CPUs, as the caption says."""
    with ScriptedServer(delay=0.01) as server:
        run = bench_url(
            server.url, tmp_path / "out", capsys, "--concurrency", "2", "--load-processes", "2"
        )
    assert run.meta["load_processes"] == 2
    assert "2 load processes" in str(run.meta["placement"]) and "2 load processes" in run.text
    assert [load.processes for load in run.loads] == [2]


def _row(strategy: str, connections: int, rate: float, *, bound: bool) -> BenchRow:
    return BenchRow(
        strategy=strategy,
        size=4096,
        connections=connections,
        requests_per_second=rate,
        megabytes_per_second=rate * 4096 / 1e6,
        p50_ms=0.5,
        p99_ms=rate / 1000,  # each point of the plots apart from the others
        errors=0,
        server_cpu_seconds=0.5,
        server_peak_rss_mb=40.0,
        duration=1.0,
        requests=int(rate),
        server_bytes=int(rate * 4096),
        client_cpu_seconds=0.95 if bound else 0.3,
        client_bound=bound,
    )


def test_client_bound_points_are_hollow() -> None:
    rows = [
        _row("sendfile", 1, 1000.0, bound=False),
        _row("sendfile", 8, 8000.0, bound=True),
        _row("readwrite", 1, 900.0, bound=False),
        _row("readwrite", 8, 5000.0, bound=False),
    ]
    for plot in PLOTS:
        fig = plot_figure(rows, plot, {})
        (axis,) = fig.axes
        points = {}
        for line in axis.get_lines():
            if line.get_linestyle() == "None":  # the points, not the line through them
                face = line.get_markerfacecolor()
                for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
                    points[(int(x), float(y))] = face
        for row in rows:
            face = points[(row.connections, float(getattr(row, plot.metric)))]
            assert (face == "none") is row.client_bound, (row, face)
        (legend,) = fig.legends
        assert any("client-bound" in text.get_text() for text in legend.get_texts())
        pyplot.close(fig)


def test_report_reads_results_from_before_the_client_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older results.json, without client_cpu_seconds and client_bound, still renders
    (unmarked); a client_bound that is not true or false is one line, exit 2."""
    row = asdict(_row("sendfile", 8, 8000.0, bound=False))
    del row["client_cpu_seconds"], row["client_bound"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"meta": {"placement": "server on CPU 0"}, "rows": [row]}))
    assert cli.main(["report", str(old)]) == 0
    printed = capsys.readouterr().out
    assert "8,000" in printed and CLIENT_BOUND_MARK not in printed
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"meta": {}, "rows": [{**row, "client_bound": "yes"}]}))
    assert cli.main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "client_bound is 'yes', expected true or false" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--load-processes", "0"], "--load-processes must be 1 or more"),
        (["--strategies", "teleport"], "unknown strategy 'teleport'"),
        (["--concurrency", "0"], "concurrency levels must be 1 or more"),
        (["--sizes", "huge"], "'huge' is not a size"),
        (["--duration", "soon"], "'soon' is not a duration"),
        (["--seed-size", ""], "'' is not a size"),
        (["--repeat", "0", "--ceiling"], "'0' must be at least 1"),
        (["--seed-experiment", "--ceiling"], "not allowed with argument --seed-experiment"),
        (["--mode", "ceiling", "--syscalls"], "not allowed with argument --mode"),
        (["--mode", "seed", "--strategies", "teleport"], "unknown strategy 'teleport'"),
        (["--mode", "ceiling", "--strategies", "auto"], "the ceiling measures only sendfile"),
        (["--ceiling", "--sizes", "0"], "file sizes must be 1 byte or more"),
        (["--syscalls", "--sizes", "4KiB,0"], "file sizes must be 1 byte or more"),
    ],
)
def test_bench_bad_flags_exit_2(argv: list[str], message: str) -> None:
    result = subprocess.run(
        zcserve_command("bench", *argv), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zcserve bench: error: "), result.stderr
    assert message in lines[0]


def test_seed_experiment_with_every_strategy(tmp_path: Path) -> None:
    strategies = list(STRATEGY_NAMES)
    console = Console(record=True, width=200)
    size, downloads = 8 * 1024 * 1024, 3
    figures = run_seed_experiment(strategies, size, downloads, "uvloop", console, out=str(tmp_path))
    assert [f.strategy for f in figures] == strategies
    for figure in figures:
        assert figure.seconds > 0 and figure.megabytes_per_second > 0
        assert figure.server_cpu_seconds >= 0 and figure.peak_rss_bytes > 1024 * 1024
    assert "x readwrite" in console.export_text()
    seed = json.loads((tmp_path / "seed.json").read_text())
    assert (seed["size"], seed["downloads"]) == (size, downloads)
    assert [row["strategy"] for row in seed["rows"]] == strategies
    assert set(seed["rows"][0]) == {
        "strategy",
        "seconds",
        "megabytes_per_second",
        "server_cpu_seconds",
        "peak_rss_bytes",
    }


def test_seed_experiment_cli_writes_its_rows(tmp_path: Path) -> None:
    result = subprocess.run(
        zcserve_command(
            "bench", "--seed-experiment", "--seed-size", "2MiB", "--seed-downloads", "2",
            "--out", str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "seed.json").read_text())["rows"]
    assert [row["strategy"] for row in rows] == list(SEED_STRATEGIES)
    assert SEED_STRATEGIES == ("readall", "readwrite", "sendfile")  # the lab's three rows
    for row in rows:
        assert set(row) == {
            "strategy",
            "seconds",
            "megabytes_per_second",
            "server_cpu_seconds",
            "peak_rss_bytes",
        }
        assert row["seconds"] > 0 and row["peak_rss_bytes"] > 0
    readall = rows[0]
    assert readall["peak_rss_bytes"] > 2 * 1024 * 1024  # it held the whole 2 MiB body
    assert "sendfile is" in result.stdout and "x readall" in result.stdout
    assert "x readwrite" in result.stdout
    assert "The lab measured readall / sendfile = 1.93x" in result.stdout


SEED_SECONDS = {"readall": 6.0, "readwrite": 2.4, "sendfile": 2.0}
"""Each strategy's total download time, set so the ratios are known: readall /
sendfile is 3.00 one way round and 0.33 the other."""


def test_the_lab_line_shows_the_ratio_as_the_rows_and_seed_json_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lab line's "this run" is readall's time over sendfile's, as the row
    "sendfile is Nx readall (total time readall / sendfile)" and seed.json (and
    `zcserve report` of it) have it."""
    times = iter(SEED_SECONDS[name] for name in SEED_STRATEGIES)

    def run_raw(options: RawOptions) -> RawResult:
        return replace(real_run_raw(options), total_seconds=next(times))

    argv = ["bench", "--seed-experiment", "--seed-size", "1MiB", "--seed-downloads", "2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("zcserve.bench.seed.run_raw", run_raw)
        assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    lab = re.search(r"The lab measured readall / sendfile = 1\.93x .*this run: (\S+)x\.", printed)
    row = re.search(r"sendfile is (\S+)x readall \(total time (\S+) s / (\S+) s\)", printed)
    assert lab is not None and row is not None, printed
    assert row.group(2, 3) == ("6.00", "2.00")  # readall's time over sendfile's
    seed = json.loads((tmp_path / "seed.json").read_text())
    seconds = {saved["strategy"]: saved["seconds"] for saved in seed["rows"]}
    assert seed["lab_ratio"] == 1.93
    assert lab.group(1) == row.group(1) == f"{seconds['readall'] / seconds['sendfile']:.2f}"
    assert lab.group(1) == "3.00"
    assert cli.main(["report", str(tmp_path / "seed.json")]) == 0
    assert "readall / sendfile: 3.00x the time (the lab measured 1.93x)" in capsys.readouterr().out


def test_ceiling_measures_every_path(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "c.bin")
    write_file(path, 8 * 1024 * 1024)
    rows = run_ceiling([path], CEILING_STRATEGIES, 1, "uvloop")
    assert [r.strategy for r in rows] == list(CEILING_STRATEGIES)
    for row in rows:
        assert row.size == 8 * 1024 * 1024
        assert row.ceiling_gbps > 0 and row.server_gbps > 0 and row.ratio > 0
        json.dumps(row.to_dict())


@dataclass
class ModeCall:
    """What the bench's command asked a mode for."""

    mode: str = ""
    strategies: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()


@pytest.fixture
def mode_call(monkeypatch: pytest.MonkeyPatch) -> ModeCall:
    """Each mode's entry point replaced by one that records what it was given."""
    call = ModeCall()

    def record(mode: str, strategies: Any, sizes: Any = ()) -> None:
        call.mode, call.strategies, call.sizes = mode, tuple(strategies), tuple(sizes)

    def sweep_(options: BenchOptions, console: Console) -> int:
        record("sweep", options.strategies, options.sizes)
        return 0

    def seed_(strategies: Any, size: int, *rest: Any, **options: Any) -> list[Any]:
        record("seed", strategies, (size,))
        return []

    def ceiling_(sizes: Any, strategies: Any, repeat: int, loop: str) -> list[Any]:
        record("ceiling", strategies, sizes)
        return []

    def syscalls_(strategies: Any, sizes: Any, *rest: Any) -> list[Any]:
        record("syscalls", strategies, sizes)
        return []

    monkeypatch.setattr(bench_command, "run_bench", sweep_)
    monkeypatch.setattr(bench_command, "run_seed_experiment", seed_)
    monkeypatch.setattr(bench_command, "run_ceiling_sizes", ceiling_)
    monkeypatch.setattr(bench_command, "run_syscalls", syscalls_)
    return call


MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("argv", "mode", "strategies", "sizes"),
    [
        ([], "sweep", ("readwrite", "sendfile", "fallback"), (4096, MiB, 64 * MiB)),
        (["--mode", "sweep", "--strategies", "mmap"], "sweep", ("mmap",), (4096, MiB, 64 * MiB)),
        (["--mode", "seed"], "seed", SEED_STRATEGIES, (1024 * MiB,)),
        (["--seed-experiment"], "seed", SEED_STRATEGIES, (1024 * MiB,)),
        (
            ["--seed-experiment", "--strategies", "splice", "--seed-size", "2MiB"],
            "seed",
            (*SEED_STRATEGIES, "splice"),
            (2 * MiB,),
        ),
        (["--ceiling"], "ceiling", CEILING_STRATEGIES, (64 * MiB, 1024 * MiB)),
        (
            ["--mode", "ceiling", "--strategies", "auto,mmap", "--sizes", "1MiB"],
            "ceiling",
            ("mmap",),
            (MiB,),
        ),
        (["--syscalls"], "syscalls", SYSCALL_STRATEGIES, (4096, MiB, 64 * MiB)),
        (["--mode", "syscalls", "--sizes", "4KiB"], "syscalls", SYSCALL_STRATEGIES, (4096,)),
    ],
)
def test_the_mode_is_chosen_by_name_and_brings_its_own_defaults(
    mode_call: ModeCall,
    tmp_path: Path,
    argv: list[str],
    mode: str,
    strategies: tuple[str, ...],
    sizes: tuple[int, ...],
) -> None:
    """`--mode NAME` or the flag it replaced runs that mode; a bare `zcserve bench` is
    the sweep (`make bench`); --strategies and --sizes not given are the mode's own."""
    assert cli.main(["bench", *argv, "--out", str(tmp_path)]) == 0
    assert (mode_call.mode, mode_call.strategies, mode_call.sizes) == (mode, strategies, sizes)
