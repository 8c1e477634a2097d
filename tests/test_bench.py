"""`zcserve bench` end to end at a tiny scale, the seed experiment with every
strategy, and the ceiling measurement.

The sweep runs once for the module with every strategy, and each cell is checked
against the server's own counters (`zcserve_sent_bytes_total{strategy=...}` from its
--metrics endpoint, scraped by the test around each cell) and the load generator's
result for that cell: a row must name the strategy that really moved the bytes, and
its MB/s must be the bytes that arrived in the window over the window's length."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from dataclasses import dataclass

import pytest
from rich.console import Console

from tests.procs import zcserve_command
from tests.test_metrics import ACTIVE, moved_by, sent_by_strategy, settled
from zcserve.bench import sweep
from zcserve.bench.ceiling import CEILING_STRATEGIES, run_ceiling
from zcserve.bench.results import BenchRow, load_results
from zcserve.bench.sweep import BenchOptions, Placement, ServerProcess, run_seed_experiment
from zcserve.demo import write_file
from zcserve.load.run import LoadOptions
from zcserve.load.run import run_load as real_run_load
from zcserve.load.stats import LoadResult
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import format_size

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = (4096, 65536)
CONCURRENCY = (1, 3)
DURATION = 0.25


@dataclass(frozen=True)
class Cell:
    """One measured cell: the row the bench made, the load generator's result, and
    what the server's byte counter grew by, per strategy label, during the cell."""

    row: BenchRow
    load: LoadResult
    sent: dict[str, int]


@dataclass(frozen=True)
class Bench:
    cells: list[Cell]
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
    cells: list[Cell] = []
    loads: list[LoadResult] = []
    real_measure_cell = sweep.measure_cell

    def run_load(load: LoadOptions) -> LoadResult:
        result = real_run_load(load)
        loads.append(result)
        return result

    def measure_cell(
        server: ServerProcess | None,
        url: str,
        size: int,
        connections: int,
        options: BenchOptions,
        placement: Placement,
        strategy: str,
    ) -> BenchRow:
        assert server is not None
        before = counted(server.metrics_url)
        loads.clear()
        row = real_measure_cell(server, url, size, connections, options, placement, strategy)
        after = counted(server.metrics_url)
        sent = {k: int(v - before.get(k, 0)) for k, v in after.items() if v != before.get(k, 0)}
        (load,) = loads
        cells.append(Cell(row, load, sent))
        return row

    console = Console(record=True, width=200)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "run_load", run_load)
        patch.setattr(sweep, "measure_cell", measure_cell)
        assert sweep.run_bench(options, console) == 0
    rows, meta = load_results(os.path.join(out, "results.json"))
    return Bench(cells, rows, meta, out, console.export_text())


def test_bench_end_to_end(bench: Bench) -> None:
    assert "zcserve bench" in bench.text and "vs readwrite" in bench.text
    assert "server pinned to CPU" in bench.text or "could not be separated" in bench.text
    rows = bench.rows
    assert len(rows) == len(STRATEGY_NAMES) * len(SIZES) * len(CONCURRENCY)
    assert {(r.strategy, r.size, r.connections) for r in rows} == {
        (s, z, c) for s in STRATEGY_NAMES for z in SIZES for c in CONCURRENCY
    }
    assert rows == [cell.row for cell in bench.cells]  # results.json holds what was measured
    for row in rows:
        assert row.errors == 0 and row.requests > 0 and row.requests_per_second > 0
        assert row.megabytes_per_second > 0 and row.p99_ms >= row.p50_ms > 0
        assert row.server_peak_rss_mb > 0 and row.server_cpu_seconds > 0
    assert bench.meta["placement"]
    with open(os.path.join(bench.out, "results.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["megabytes_per_second"]) for r in table] == [
        r.megabytes_per_second for r in rows
    ]
    for name in ("throughput.png", "p99.png"):
        with open(os.path.join(bench.out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC


def _key(row: BenchRow) -> tuple[str, str, str]:
    return row.strategy, format_size(row.size), str(row.connections)


def test_tables_show_the_measured_figures(bench: Bench) -> None:
    """The printed table and table.md show each row's own MB/s and req/s."""
    with open(os.path.join(bench.out, "table.md")) as f:
        markdown = [line.split("|")[1:-1] for line in f if line.startswith("| ")]
    printed = [line.split("│")[1:-1] for line in bench.text.splitlines() if "│" in line]
    for lines in (markdown, printed):
        cells = {tuple(c.strip() for c in line[:3]): [c.strip() for c in line] for line in lines}
        for row in bench.rows:
            shown = cells[_key(row)]
            assert shown[3] == f"{row.requests_per_second:,.0f}", shown
            assert shown[4] == f"{row.megabytes_per_second:,.1f}", shown


def test_each_row_names_the_strategy_that_ran(bench: Bench) -> None:
    """The server's counter grew under the row's strategy (auto: sendfile, on plain
    TCP) by exactly the bytes the row reports, and under no other name."""
    assert {cell.row.strategy for cell in bench.cells} == set(STRATEGY_NAMES)
    for cell in bench.cells:
        row = cell.row
        assert row.server_bytes > 0, row
        assert cell.sent == {moved_by(row.strategy): row.server_bytes}, _key(row)


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategies", "teleport"], "unknown strategy 'teleport'"),
        (["--concurrency", "0"], "concurrency levels must be 1 or more"),
        (["--sizes", "huge"], "'huge' is not a size"),
        (["--duration", "soon"], "'soon' is not a duration"),
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


def test_seed_experiment_with_every_strategy() -> None:
    strategies = list(STRATEGY_NAMES)
    console = Console(record=True, width=200)
    figures = run_seed_experiment(strategies, 8 * 1024 * 1024, 3, "uvloop", console)
    assert [f.strategy for f in figures] == strategies
    for figure in figures:
        assert figure.total_seconds > 0 and figure.megabytes_per_second > 0
    assert "x readwrite" in console.export_text()


def test_ceiling_measures_every_path(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "c.bin")
    write_file(path, 8 * 1024 * 1024)
    rows = run_ceiling([path], CEILING_STRATEGIES, 1, "uvloop")
    assert [r.strategy for r in rows] == list(CEILING_STRATEGIES)
    for row in rows:
        assert row.size == 8 * 1024 * 1024
        assert row.ceiling_gbps > 0 and row.server_gbps > 0 and row.ratio > 0
        json.dumps(row.to_dict())
