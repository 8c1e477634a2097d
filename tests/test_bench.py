"""`zcserve bench` end to end at a tiny scale, the seed experiment with every
strategy, and the ceiling measurement."""

from __future__ import annotations

import csv
import json
import os

from rich.console import Console

from zcserve.bench.ceiling import CEILING_STRATEGIES, run_ceiling
from zcserve.bench.results import load_results
from zcserve.bench.sweep import BenchOptions, run_bench, run_seed_experiment
from zcserve.cli import main
from zcserve.demo import write_file
from zcserve.server.strategies import STRATEGY_NAMES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_end_to_end(tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(tmp_path, "results")
    options = BenchOptions(
        strategies=("readwrite", "sendfile"),
        sizes=(4096, 65536),
        concurrency=(1, 3),
        duration=0.4,
        warmup=0.1,
        out=out,
    )
    console = Console(record=True, width=200)
    assert run_bench(options, console) == 0
    text = console.export_text()
    assert "zcserve bench" in text and "vs readwrite" in text
    assert "server pinned to CPU" in text or "could not be separated" in text
    rows, meta = load_results(os.path.join(out, "results.json"))
    assert len(rows) == 2 * 2 * 2
    assert {(r.strategy, r.size, r.connections) for r in rows} == {
        (s, z, c) for s in ("readwrite", "sendfile") for z in (4096, 65536) for c in (1, 3)
    }
    for row in rows:
        assert row.errors == 0 and row.requests > 0 and row.requests_per_second > 0
        assert row.megabytes_per_second > 0 and row.p99_ms >= row.p50_ms > 0
        assert row.server_peak_rss_mb > 0 and row.server_cpu_seconds > 0
    assert meta["placement"]
    with open(os.path.join(out, "results.csv"), newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    for name in ("throughput.png", "p99.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC
    with open(os.path.join(out, "table.md")) as f:
        assert "| readwrite |" in f.read()


def test_bench_bad_flags_exit_2() -> None:
    for argv in (
        ["bench", "--strategies", "teleport"],
        ["bench", "--concurrency", "0"],
        ["bench", "--sizes", "huge"],
        ["bench", "--duration", "soon"],
    ):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        assert code == 2, argv


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
