"""`zcserve report`: saved load results of several clients merge exactly; a saved bench
results.json renders as the table again and redraws its plots; bad input is one line."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from tests.loadhelpers import ScriptedServer
from zcserve import cli
from zcserve.bench.results import BenchRow, write_results
from zcserve.load.report import write_json
from zcserve.load.run import LoadOptions, run_load
from zcserve.load.stats import LoadResult, merge_histograms, new_histogram

BODY = bytes(range(256)) * 16  # 4 KiB
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PERCENTILES = (0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 100)


def run_report(*argv: str) -> int:
    """`zcserve report ARGV`, exit code whether returned or raised by argparse."""
    try:
        return cli.main(["report", *argv])
    except SystemExit as exited:
        assert isinstance(exited.code, int)
        return exited.code


def every_value(results: list[LoadResult]) -> HdrHistogram:
    """One histogram recording each value of each result again, one by one."""
    whole = new_histogram()
    for result in results:
        for step in result.decode_histogram().get_recorded_iterator():
            whole.record_value(step.value_iterated_to, step.count_added_in_this_iter_step)
    return whole


def assert_same_histogram(merged: HdrHistogram, whole: HdrHistogram) -> None:
    assert merged.get_total_count() == whole.get_total_count()
    assert merged.get_min_value() == whole.get_min_value()
    assert merged.get_max_value() == whole.get_max_value()
    for percentile in PERCENTILES:
        assert merged.get_value_at_percentile(percentile) == whole.get_value_at_percentile(
            percentile
        ), percentile


# load results ---------------------------------------------------------------------------


def test_three_clients_that_ran_together_merge_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def client(index: int, url: str) -> LoadResult:
        # Two and three connections, so the clients differ in connections and pace.
        options = LoadOptions(
            urls=(url,), connections=2 + index % 2, requests=300 + 100 * index, processes=1
        )
        return run_load(options)

    with ScriptedServer(body=BODY, delay=0.001) as server:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(client, range(3), [server.url] * 3))
    paths = [tmp_path / f"client{index}.json" for index in range(3)]
    for path, result in zip(paths, results, strict=True):
        write_json(str(path), result.to_json())
    out = tmp_path / "merged.json"

    code = run_report(*map(str, paths), "--json", str(out))
    printed = capsys.readouterr()
    assert code == 0, printed
    assert f"merged 3 clients: {', '.join(map(str, paths))}" in printed.out
    assert "requests    1,200 in" in printed.out and "errors      none" in printed.out
    merged = LoadResult.from_json(json.loads(out.read_text()))
    assert merged.requests == server.counts.requests == 300 + 400 + 500
    assert merged.body_bytes == server.counts.body_bytes
    assert merged.connections == 2 + 3 + 2 and merged.processes == 3
    assert_same_histogram(merged.decode_histogram(), every_value(results))
    # Side by side, the rates add up: every request over the longest of the three runs.
    longest = max(result.duration for result in results)
    assert merged.duration == longest
    assert merged.requests_per_second == pytest.approx(1200 / longest)
    assert merged.megabytes_per_second == pytest.approx(1200 * len(BODY) / 1e6 / longest)


def _saved(values: list[int], **fields: Any) -> LoadResult:
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    base: dict[str, Any] = dict(
        urls=("http://127.0.0.1:1/",),
        model="closed",
        connections=4,
        processes=2,
        duration=2.0,
        requests=len(values),
        failed=0,
        body_bytes=1000 * len(values),
        errors={},
        histogram=histogram.encode().decode("ascii"),
        cpu_seconds=0.5,
    )
    base.update(fields)
    return LoadResult(**base)


def test_merged_percentiles_are_those_of_every_value(tmp_path: Path) -> None:
    rng = random.Random(11)
    values = [
        [int(rng.lognormvariate(6 + part, 1.2)) + 1 for _ in range(5000)] for part in range(3)
    ]
    whole = new_histogram()
    for value in (value for part in values for value in part):
        whole.record_value(value)
    paths = []
    for index, part in enumerate(values):
        result = _saved(part, duration=1.0 + index, errors={"reset": index}, failed=index)
        paths.append(tmp_path / f"{index}.json")
        paths[-1].write_text(result.dumps())
    out = tmp_path / "merged.json"
    assert run_report(*map(str, paths), "--json", str(out)) == 0
    data = json.loads(out.read_text())
    assert data["requests"] == 15_000 and data["duration"] == 3.0
    assert data["requests_per_second"] == 5000.0 and data["megabytes_per_second"] == 5.0
    assert data["errors"] == {"reset": 3} and data["failed"] == 3
    assert_same_histogram(merge_histograms([data["histogram"]]), whole)
    assert data["latency_ms"]["p99"] == whole.get_value_at_percentile(99) / 1000


def test_open_model_clients_add_their_rates_and_keep_every_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = _saved([100] * 10, model="open", target_rate=100.0, urls=("http://a:1/x",))
    two = _saved([200] * 10, model="open", target_rate=50.0, urls=("http://b:1/y",))
    paths = [tmp_path / "one.json", tmp_path / "two.json"]
    for path, result in zip(paths, (one, two), strict=True):
        path.write_text(result.dumps())
    out = tmp_path / "merged.json"
    assert run_report(*map(str, paths), "--json", str(out)) == 0
    merged = LoadResult.from_json(json.loads(out.read_text()))
    assert merged.target_rate == 150.0 and merged.urls == ("http://a:1/x", "http://b:1/y")
    assert "open model, 150/s" in capsys.readouterr().out


def test_one_load_result_renders_as_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.json"
    path.write_text(_saved([1500] * 8, errors={"status_500": 2}).dumps())
    assert run_report(str(path)) == 0
    printed = capsys.readouterr().out
    assert "merged" not in printed
    assert "requests    8 in 2.00 s: 4.0 req/s" in printed
    assert "latency ms  p50 1.50" in printed and "ERRORS: 2 (status 500: 2)" in printed


# bench results -----------------------------------------------------------------------------


def _bench_row(strategy: str, size: int, connections: int, rate: float) -> BenchRow:
    return BenchRow(
        strategy=strategy,
        size=size,
        connections=connections,
        requests_per_second=rate,
        megabytes_per_second=rate * size / 1e6,
        p50_ms=0.5,
        p99_ms=1.25,
        errors=0,
        server_cpu_seconds=1.5,
        server_peak_rss_mb=40.0,
        duration=2.0,
        requests=int(rate * 2),
    )


def test_a_bench_result_renders_its_table_and_plots_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        _bench_row(strategy, size, connections, rate * connections)
        for strategy, rate in (("readwrite", 1000.0), ("sendfile", 2000.0))
        for size in (4096, 1 << 20)
        for connections in (1, 8)
    ]
    meta = {"command": "zcserve bench", "date": "2024-05-01", "placement": "server on CPU 0"}
    saved = write_results(str(tmp_path / "bench"), rows, meta)[0]
    plots = tmp_path / "plots"
    code = run_report(saved, "--plots", str(plots))
    printed = capsys.readouterr()
    assert code == 0, printed
    assert "zcserve bench" in printed.out and "server on CPU 0" in printed.out
    assert "vs readwrite" in printed.out and "2.00x" in printed.out
    assert printed.out.count("sendfile") >= 4 and "1MiB" in printed.out
    for name in ("throughput.png", "p99.png"):
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC


# bad input ----------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """One file of each kind, good and bad, by name."""
    files: dict[str, Any] = {
        "load": _saved([100, 200]).to_json(),
        "load2": _saved([300]).to_json(),
        "open": _saved([300], model="open", target_rate=10.0).to_json(),
        "raw": {"mode": "raw", "address": "127.0.0.1:1", "sizes": []},
        "list": [1, 2, 3],
        "no_histogram": {**_saved([1]).to_json(), "histogram": "not base64!"},
        "no_requests_field": {"histogram": "", "requests": 1},
        "bad_value": {**_saved([1]).to_json(), "requests": "many"},
        "bad_row": {"meta": {}, "rows": [asdict(_bench_row("readwrite", 1, 1, 1.0))]},
    }
    files["bad_row"]["rows"][0]["requests_per_second"] = "fast"
    paths = {name: str(tmp_path / f"{name}.json") for name in files}
    for name, data in files.items():
        Path(paths[name]).write_text(json.dumps(data))
    paths["bench"] = write_results(
        str(tmp_path / "bench"), [_bench_row("readwrite", 4096, 1, 10.0)], {}
    )[0]
    paths["bench2"] = write_results(
        str(tmp_path / "bench2"), [_bench_row("sendfile", 4096, 1, 10.0)], {}
    )[0]
    paths["not_json"] = str(tmp_path / "not.json")
    Path(paths["not_json"]).write_text("{ nope")
    paths["missing"] = str(tmp_path / "missing.json")
    return paths


@pytest.mark.parametrize(
    ("names", "flags", "message"),
    [
        (["missing"], [], "cannot read"),  # no such file
        (["not_json"], [], "not JSON"),
        (["list"], [], "neither a bench results.json nor"),  # JSON, but not an object
        (["raw"], [], "`zcserve load --raw` result"),
        (["no_histogram"], [], "bad histogram"),
        (["no_requests_field"], [], "missing field 'urls'"),  # most fields are missing
        (["bad_value"], [], "bad field value (invalid literal for int()"),
        (["bad_row"], [], "requests_per_second is 'fast', expected a number"),
        (["bench", "load"], [], "cannot mix bench and load results"),
        (["load", "bench"], [], "cannot mix bench and load results"),
        (["load", "open"], [], "closed-model and open-model"),
        (["load", "load"], [], "given twice"),
        (["load"], ["--plots", "PLOTS"], "--plots draws bench results"),
        (["bench"], ["--json", "OUT"], "--json writes merged load results"),
        (["bench", "bench2"], ["--plots", "PLOTS"], "--plots draws one bench result"),
        ([], [], "the following arguments are required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    inputs: dict[str, str],
    names: list[str],
    flags: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = [str(tmp_path / flag.lower()) if flag.isupper() else flag for flag in flags]
    code = run_report(*(inputs[name] for name in names), *flags)
    printed = capsys.readouterr()
    assert code == 2, printed
    assert message in printed.err and printed.err.count("\n") == 1, printed.err
    assert printed.err.startswith("zcserve report: error: ") and printed.out == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "plots").exists()


def test_two_bench_results_render_one_table_each(
    inputs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_report(inputs["bench"], inputs["bench2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("zcserve bench") == 2
    assert "readwrite" in printed and "sendfile" in printed
