"""`zcserve report`: saved load results of several clients merge exactly, their rates
add up; clients with different URLs or windows are refused unless --force; a saved
bench results.json renders as the table again and redraws its plots; bad input is one
line."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from tests.support.results import load_result
from tests.support.scripted import ScriptedServer
from zcserve import cli
from zcserve.bench.report import MARKDOWN_BEGIN, MARKDOWN_END
from zcserve.bench.results import (
    CLIENT_BOUND_NOTE,
    PLOTS,
    BenchRow,
    load_results,
    markdown_table,
    write_results,
)
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

    # -n 300, 400 and 500 over two or three connections: runs of different lengths,
    # which only --force merges (how far apart depends on the machine's pace).
    code = run_report(*map(str, paths), "--json", str(out), "--force")
    printed = capsys.readouterr()
    assert code == 0, printed
    assert f"merged 3 clients: {', '.join(map(str, paths))}" in printed.out
    assert "requests    1,200 in" in printed.out and "errors      none" in printed.out
    data = json.loads(out.read_text())
    merged = LoadResult.from_json(data)
    assert merged.requests == server.counts.requests == 300 + 400 + 500
    assert merged.body_bytes == server.counts.body_bytes
    assert merged.connections == 2 + 3 + 2 and merged.processes == 3
    assert_same_histogram(merged.decode_histogram(), every_value(results))
    # Side by side, the rates add up: each client's rate over its own run.
    assert merged.duration == max(result.duration for result in results)
    assert data["requests_per_second"] == pytest.approx(
        sum(result.requests / result.duration for result in results)
    )
    assert data["megabytes_per_second"] == pytest.approx(
        sum(result.requests * len(BODY) / 1e6 / result.duration for result in results)
    )
    # Rendered again, the merged file keeps its summed rates.
    assert run_report(str(out)) == 0
    rate = f"{data['requests_per_second']:,.1f} req/s"
    assert rate in capsys.readouterr().out


def _saved(latencies: list[int], **fields: Any) -> LoadResult:
    """A saved result of two processes with four connections, 1,000-byte bodies."""
    return load_result(latencies, connections=4, processes=2, body_size=1000, **fields)


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
        result = _saved(part, duration=2.0, errors={"reset": index}, failed=index)
        paths.append(tmp_path / f"{index}.json")
        paths[-1].write_text(result.dumps())
    out = tmp_path / "merged.json"
    assert run_report(*map(str, paths), "--json", str(out)) == 0
    data = json.loads(out.read_text())
    assert data["requests"] == 15_000 and data["duration"] == 2.0
    assert data["requests_per_second"] == 7500.0 and data["megabytes_per_second"] == 7.5
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
    assert run_report(*map(str, paths), "--json", str(out), "--force") == 0
    merged = LoadResult.from_json(json.loads(out.read_text()))
    assert merged.target_rate == 150.0 and merged.urls == ("http://a:1/x", "http://b:1/y")
    printed = capsys.readouterr()
    assert "open model, 150/s" in printed.out
    (warning,) = printed.err.splitlines()  # different URLs, merged because forced
    assert "WARNING" in warning and "http://a:1/x" in warning and "http://b:1/y" in warning


def test_one_load_result_renders_as_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.json"
    path.write_text(_saved([1500] * 8, errors={"status_500": 2}).dumps())
    assert run_report(str(path)) == 0
    printed = capsys.readouterr().out
    assert "merged" not in printed
    assert "requests    8 in 2.00 s: 4.0 req/s" in printed
    assert (
        " p50 1.50 " in printed
        and "latency ms  min " in printed
        and "ERRORS: 2 (status 500: 2)" in printed
    )


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
    assert "readwrite" in printed.out and "2.00x" in printed.out
    assert printed.out.count("sendfile") >= 4 and "1MiB" in printed.out
    for plot in PLOTS:  # throughput, p99 and CPU per GiB
        assert (plots / plot.filename).read_bytes()[:8] == PNG_MAGIC


def test_markdown_writes_one_cell_between_the_markers_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cell 1MiB,8: each strategy's MB/s and CPU-s per GiB at that cell, in the fixed
    strategy order, the client-bound one marked with its footnote; the text around the
    markers is kept byte for byte, and a second run changes nothing."""
    rows = [
        _bench_row("sendfile", 1 << 20, 8, 5000.0),
        _bench_row("readwrite", 1 << 20, 8, 1000.0),
        _bench_row("fallback", 1 << 20, 8, 2000.0),
        _bench_row("sendfile", 1 << 20, 1, 900.0),
    ]
    rows[0] = replace(rows[0], client_bound=True, server_bytes=5 * 1024**3)
    rows[1] = replace(rows[1], server_bytes=1024**3)
    saved = write_results(str(tmp_path / "bench"), rows, {}, plots=False)[0]
    before = "# Title\n\nprose above\n\n"
    after = "\nprose below\n"
    doc = tmp_path / "doc.md"
    doc.write_text(f"{before}{MARKDOWN_BEGIN}\n| stale |\n{MARKDOWN_END}\n{after}")
    assert run_report(saved, "--cell", "1MiB,8", "--markdown", str(doc)) == 0
    assert f"markdown written: {doc}" in capsys.readouterr().out
    written = doc.read_text()
    assert written == (
        f"{before}{MARKDOWN_BEGIN}\n"
        "| 1 MiB file, 8 connections | MB/s | server CPU-s per GiB |\n"
        "|---|---|---|\n"
        "| readwrite | 1,049 | 1.50 |\n"
        "| fallback | 2,097 | n/a |\n"
        "| sendfile † | 5,243 | 0.30 |\n"
        f"\n{CLIENT_BOUND_NOTE}\n"
        f"{MARKDOWN_END}\n{after}"
    )
    assert run_report(saved, "--cell", "1MiB,8", "--markdown", str(doc)) == 0
    assert doc.read_text() == written


def test_markdown_into_a_new_file_is_the_whole_table_within_the_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [_bench_row(s, 4096, c, 100.0 * c) for s in ("readwrite", "sendfile") for c in (1, 8)]
    meta = {"placement": "server pinned to CPU [0]"}
    saved = write_results(str(tmp_path / "bench"), rows, meta, plots=False)[0]
    out = tmp_path / "table.md"
    assert run_report(saved, "--markdown", str(out)) == 0
    capsys.readouterr()
    loaded, _ = load_results(saved)
    table = markdown_table(loaded, pinning="server pinned to CPU [0]")
    assert out.read_text() == f"{MARKDOWN_BEGIN}\n{table}{MARKDOWN_END}\n"


def test_markdown_never_overwrites_a_file_without_its_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = write_results(str(tmp_path / "bench"), [_bench_row("sendfile", 4096, 1, 9.0)], {})[0]
    doc = tmp_path / "notes.md"
    for text in ("# notes\n", f"{MARKDOWN_END}\n{MARKDOWN_BEGIN}\n"):
        doc.write_text(text)
        assert run_report(saved, "--markdown", str(doc)) == 2
        printed = capsys.readouterr()
        assert f"{str(doc)!r} exists without one {MARKDOWN_BEGIN!r} line" in printed.err
        assert printed.out == "" and doc.read_text() == text


# bad input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One file of each kind, good and bad, by name; made once (two of them are bench
    results with their plots), read by every test, written by none."""
    tmp_path = tmp_path_factory.mktemp("report-inputs")
    files: dict[str, Any] = {
        "load": _saved([100, 200]).to_json(),
        "load2": _saved([300]).to_json(),
        "other_url": _saved([300], urls=("http://127.0.0.1:1/other",)).to_json(),
        "longer": _saved([300], duration=3.0).to_json(),
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
        (["list"], [], "not a file zcserve writes; expected a bench results.json, a seed.json"),
        (["raw"], [], "`zcserve load --raw` result"),
        (["no_histogram"], [], "bad histogram"),
        (["no_requests_field"], [], "missing field 'urls'"),  # most fields are missing
        (["bad_value"], [], "bad field value (invalid literal for int()"),
        (["bad_row"], [], "requests_per_second is 'fast', expected a number"),
        (["bench", "load"], [], "cannot mix bench and load results"),
        (["load", "bench"], [], "cannot mix bench and load results"),
        (["load", "open"], [], "closed-model and open-model"),
        (["load", "load"], [], "given twice"),
        (["load", "other_url"], [], "loaded http://127.0.0.1:1/ but"),  # another file
        (["load", "longer"], [], "measured 2.00 s but"),  # a longer run
        (["load", "other_url"], [], "(--force merges them anyway)"),
        (["load"], ["--plots", "PLOTS"], "--plots draws bench results"),
        (["bench"], ["--json", "OUT"], "--json writes merged load results"),
        (["bench", "bench2"], ["--plots", "PLOTS"], "--plots draws one bench result"),
        (["load"], ["--markdown", "OUT"], "--markdown writes bench tables"),
        (["bench", "bench2"], ["--markdown", "OUT"], "--markdown writes one bench result's"),
        (["bench"], ["--cell", "4KiB,1"], "--cell picks the cell of the --markdown table"),
        (["bench"], ["--markdown", "OUT", "--cell", "1MiB"], "bad cell '1MiB'"),
        (
            ["bench"],
            ["--markdown", "OUT", "--cell", "1MiB,8"],
            "no row for 1MiB at 8 connections; the rows have 4KiB,1",
        ),
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


# clients that do not look like one run ----------------------------------------------------


def test_windows_a_little_apart_merge_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-n runs side by side end a little apart: within 5 % they are one window."""
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(_saved([100] * 2000, duration=2.0).dumps())
    paths[1].write_text(_saved([100] * 2050, duration=2.05).dumps())
    assert run_report(*map(str, paths)) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and "merged 2 clients" in printed.out


def test_partly_overlapping_clients_add_their_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two clients whose windows overlap only partly (0.2-0.8 s and 0.5-0.8 s of the
    test, roughly): refused without --force; with it, a warning on stderr and the
    merged rate is the sum of each client's rate over its own window, not all the
    requests over the longer window (which would count the first client's 0.3 s alone
    as if both had run)."""

    def client(start: float, duration: float) -> LoadResult:
        time.sleep(start)
        options = LoadOptions(urls=(url,), connections=1, duration=duration, processes=1)
        return run_load(options)

    with ScriptedServer(body=BODY, delay=0.002) as server:
        url = server.url
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client, 0.0, 0.6)
            second = pool.submit(client, 0.3, 0.3)
            results = [first.result(timeout=30), second.result(timeout=30)]
    assert [result.window_seconds for result in results] == pytest.approx([0.6, 0.3])
    assert all(result.requests > 10 and result.failed == 0 for result in results)
    paths = [tmp_path / "first.json", tmp_path / "second.json"]
    for path, result in zip(paths, results, strict=True):
        write_json(str(path), result.to_json())
    out = tmp_path / "merged.json"

    assert run_report(*map(str, paths), "--json", str(out)) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and not out.exists()
    (error,) = printed.err.splitlines()
    assert "measured 0.30 s but" in error and "--force" in error

    assert run_report(*map(str, paths), "--json", str(out), "--force") == 0
    printed = capsys.readouterr()
    (warning,) = printed.err.splitlines()
    assert warning.startswith("zcserve report: WARNING: merged anyway (--force): ")
    data = json.loads(out.read_text())
    rates = [result.requests / result.duration for result in results]
    assert data["requests_per_second"] == pytest.approx(sum(rates))
    union = sum(result.requests for result in results) / max(r.duration for r in results)
    assert data["requests_per_second"] > 1.2 * union  # the second client's share counted
    megabytes = [result.window_bytes / 1e6 / result.window_seconds for result in results]
    assert data["window_megabytes_per_second"] == pytest.approx(sum(megabytes))
    assert data["megabytes_per_second"] == pytest.approx(
        sum(result.body_bytes / 1e6 / result.duration for result in results)
    )
    assert data["requests"] == sum(result.requests for result in results)
    assert "rates: the sum of each client's rate over its own window" in printed.out


def test_the_seed_and_syscalls_files_render_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zcserve report` reads every JSON file the bench writes, the lab's included."""
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "size": 1024**3, "downloads": 10, "loop": "uvloop", "lab_ratio": 1.93,
                "rows": [
                    {"strategy": "readall", "seconds": 20.0, "megabytes_per_second": 530.0,
                     "server_cpu_seconds": 16.6, "peak_rss_bytes": 1111261184},
                    {"strategy": "sendfile", "seconds": 8.0, "megabytes_per_second": 1311.0,
                     "server_cpu_seconds": 2.3, "peak_rss_bytes": 38129664},
                ],
            }
        )
    )  # fmt: skip
    assert run_report(str(seed)) == 0
    out = capsys.readouterr().out
    assert "10 x 1GiB" in out and "readall" in out and "1,060 MiB" in out
    assert "readall / sendfile: 2.50x the time (the lab measured 1.93x)" in out
    syscalls = tmp_path / "syscalls.json"
    row = {
        "strategy": "sendfile", "size": 4096, "requests": 200,
        "per_request": {"recvfrom": 1.0, "sendfile": 1.0}, "file_bytes_read": 0.0,
        "bytes_received": 4300.0, "voluntary_switches": 1.0, "involuntary_switches": 0.0,
    }  # fmt: skip
    syscalls.write_text(json.dumps({"strategies": {"sendfile": {"4KiB": row}}}))
    assert run_report(str(syscalls)) == 0
    out = capsys.readouterr().out
    assert "| sendfile | 4KiB | 2.0 | recvfrom 1.0, sendfile 1.0 | 0 |" in out, out
