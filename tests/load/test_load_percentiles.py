"""`zcserve load` percentiles against a latency distribution known by construction.

The server answers the i-th request after a delay of its own, drawn from four
widely separated values, so each reported percentile lies in a known band. A
delay can only make a latency longer: lower bounds are the delays themselves,
upper bounds the next delay up, far above any scheduling noise that could move a
percentile (it would take dozens of requests each delayed by tens of ms)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.support.scripted import ScriptedServer
from zcserve import cli
from zcserve.load.report import format_ms, histogram_lines, summary_lines
from zcserve.load.stats import LoadResult, figures_ms, new_histogram

pytestmark = pytest.mark.serial  # latencies in known bands

LABELS = ("p50", "p90", "p99", "p99.9")
"""The figures the bands below tell apart (p75 and p95 share bands with p50 and p90)."""
SHOWN = ("min", "p50", "p75", "p90", "p95", "p99", "p99.9", "max")
"""What the summary's latency line prints, in its order."""

# Of 1000 requests (count, delay in ms), ranked by latency:
#   ranks    1..880  immediate   p50 is rank 500
#   ranks  881..980  15 ms       p90 is rank 900
#   ranks  981..997  60 ms       p99 is rank 990
#   ranks  998..1000 250 ms      p99.9 is rank 999
# About 3.3 s of delays in all, on one connection.
BANDS = ((880, 0.0), (100, 15.0), (17, 60.0), (3, 250.0))
TOTAL = sum(count for count, _ in BANDS)
EARLY_MS = 1.0
"""A timer may fire up to a millisecond early (uvloop rounds to milliseconds)."""


def expected_band(name: str) -> tuple[float, float]:
    """[low, high) in ms for the figure `name`: from its rank's delay to the next."""
    percentile = float(name[1:])
    rank = int(percentile / 100 * TOTAL + 0.5)  # as HdrHistogram counts it
    seen = 0
    delays = [delay for _, delay in BANDS]
    for index, (count, delay) in enumerate(BANDS):
        seen += count
        if rank <= seen:
            high = delays[index + 1] if index + 1 < len(delays) else float("inf")
            return max(delay - EARLY_MS, 0.0), high
    raise AssertionError(name)


def delays_in_seconds() -> list[float]:
    delays = [delay / 1000 for count, delay in BANDS for _ in range(count)]
    random.Random(11).shuffle(delays)
    return delays


def check_bands(latency: dict[str, float]) -> None:
    for name in LABELS:
        low, high = expected_band(name)
        assert low <= latency[name] < high, (name, latency)
    assert latency["p99.9"] <= latency["max"]


def printed_latency(out: str) -> dict[str, str]:
    """`latency ms  min 0.01  p50 0.312 ...` from the summary, as label -> text."""
    line = next(line for line in out.splitlines() if line.strip().startswith("latency ms"))
    pairs = re.findall(r"(min|p[0-9.]+|max) ([0-9.]+)", line)
    assert [name for name, _ in pairs] == list(SHOWN), line
    return dict(pairs)


def test_figures_name_the_percentile_they_were_computed_at() -> None:
    # No sockets: a histogram of 1..1000 ms, one value each, so pN is N% of 1000 ms.
    histogram = new_histogram()
    for millis in range(1, 1001):
        histogram.record_value(millis * 1000)
    figures = figures_ms(histogram)
    for name in LABELS:
        assert figures[name] == pytest.approx(float(name[1:]) * 10, rel=0.002), (name, figures)
    assert figures["max"] == pytest.approx(1000, rel=0.002)


def test_percentiles_of_a_known_distribution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bands = [expected_band(name) for name in LABELS]
    assert len(set(bands)) == len(LABELS), "the construction tells every label apart"
    out = tmp_path / "result.json"
    with ScriptedServer(body=b"ok", delays=delays_in_seconds()) as server:
        argv = ["load", server.url, "-c", "1", "-n", str(TOTAL), "--processes", "1"]
        code = cli.main([*argv, "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed
    assert server.counts.received == TOTAL, "the load sent exactly the requests numbered"
    data = json.loads(out.read_text())
    result = LoadResult.from_json(data)
    assert result.requests == TOTAL and result.error_total == 0

    # the JSON's figures are in their bands ...
    latency = data["latency_ms"]
    check_bands(latency)
    # ... and are the histogram's own percentiles under the right labels
    histogram = result.decode_histogram()
    assert histogram.get_total_count() == TOTAL
    for name in LABELS:
        at = histogram.get_value_at_percentile(float(name[1:])) / 1000
        assert latency[name] == at, (name, latency)
    # the printed summary carries the same figures under the same labels
    shown = printed_latency(printed.out)
    assert shown == {name: format_ms(latency[name]) for name in SHOWN}, shown
    assert printed_latency("\n".join(summary_lines(result))) == shown


def test_the_histogram_rows_hold_every_response_once() -> None:
    histogram = new_histogram()
    for micros, count in ((100, 500), (1_000, 300), (10_000, 150), (100_000, 50)):
        histogram.record_value(micros, count)
    lines = histogram_lines(histogram)
    rows = [line.split() for line in lines[1:]]
    edges = [float(row[0]) for row in rows]
    counts = [int(row[1].replace(",", "")) for row in rows]
    assert sum(counts) == 1000 and len(rows) == 8, lines
    assert edges == sorted(edges) and edges[-1] == pytest.approx(100, rel=0.002), edges
    assert counts[0] == 500 and counts[-1] == 50, counts  # fastest first, slowest last
    longest = max(lines[1:], key=lambda line: line.count("■"))
    assert "500" in longest, "the longest bar is the largest count"
    assert histogram_lines(new_histogram()) == []  # nothing recorded, no histogram
