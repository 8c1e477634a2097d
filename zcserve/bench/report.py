"""`zcserve report`: render saved results again, merging the load results of several clients.

A bench results.json (`{"meta": ..., "rows": [...]}`, written by `zcserve bench`)
is shown as the bench table again and, with `--plots DIR`, its plots are drawn
again; `--markdown FILE` writes its table (with `--cell`, one cell's: the README's)
into FILE between two marker lines, leaving the rest of FILE as it was. Results of
`zcserve load --json` are merged when several are given, as the results of clients
that ran side by side against one server: histograms add bucket by bucket (exact:
the merged percentiles are those of one histogram of every value), counts add, and
the rates are the sum of each client's rate over its own window (`MergedClients`).

Clients that loaded different URLs, or for windows of different lengths, are
refused (one line, exit 2) unless `--force` is given, which merges them with a
warning on stderr. Refused rather than warned about: a merged figure is only the
rate of "the server under N clients" when the N clients did the same thing at the
same time, and a warning scrolls away in a CI log while the wrong figure is kept;
the other inputs that cannot be merged (mixed kinds, a file given twice) are
refused the same way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from zcserve.bench.results import (
    BenchRow,
    PlotsUnavailable,
    check_plotting,
    headline_table,
    load_results,
    markdown_table,
    render_tables,
    write_plots,
)
from zcserve.bench.syscalls import SyscallRow, syscalls_table
from zcserve.errors import ConfigError
from zcserve.load.report import format_ms, print_summary, write_json
from zcserve.load.stats import LoadResult
from zcserve.units import format_size

SYSCALL_FIELDS = frozenset(field.name for field in fields(SyscallRow))

Kind = Literal["bench", "load", "seed", "syscalls"]
KNOWN_KINDS = (
    "a bench results.json, a seed.json (--seed-experiment), a syscalls.json (--syscalls) "
    "or a `zcserve load --json` result"
)


@dataclass(frozen=True)
class Saved:
    """One results file, read and told apart."""

    path: str
    kind: Kind
    data: dict[str, Any]


def read_saved(path: str) -> Saved:
    """Read `path` and tell a bench results.json from a `zcserve load --json` result."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path!r}: not JSON ({exc})") from None
    if isinstance(data, dict):
        if isinstance(data.get("rows"), list) and "lab_ratio" in data:
            return Saved(path, "seed", data)
        if isinstance(data.get("strategies"), dict):
            return Saved(path, "syscalls", data)
        if isinstance(data.get("rows"), list):
            return Saved(path, "bench", data)
        if "histogram" in data and "requests" in data:
            return Saved(path, "load", data)
        if data.get("mode") == "raw":
            raise ConfigError(
                f"{path!r} is a `zcserve load --raw` result, which has nothing to render again; "
                f"expected {KNOWN_KINDS}"
            )
    raise ConfigError(f"{path!r} is not a file zcserve writes; expected {KNOWN_KINDS}")


def bench_rows(saved: Saved) -> tuple[list[BenchRow], dict[str, Any]]:
    """The rows and metadata of a bench results.json, checked field by field."""
    try:
        rows, meta = load_results(saved.path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the bench rows of {saved.path!r}: {exc}") from None
    for index, row in enumerate(rows):
        for field in fields(BenchRow):
            value = getattr(row, field.name)
            if not _fits(value, str(field.type)):
                raise ConfigError(
                    f"bad bench row {index} in {saved.path!r}: {field.name} is {value!r}, "
                    f"expected {_EXPECTED.get(str(field.type), 'a number')}"
                )
    return rows, meta


_EXPECTED = {"str": "text", "bool": "true or false", "float | None": "a number or null"}


def _fits(value: object, type_name: str) -> bool:
    """Whether a JSON value fits a `BenchRow` field annotated `type_name`."""
    if type_name.endswith(" | None"):
        return value is None or _fits(value, type_name.removesuffix(" | None"))
    if type_name == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if type_name == "float":
        return isinstance(value, int | float)
    if type_name == "int":
        return isinstance(value, int)
    return isinstance(value, str)


def load_result(saved: Saved) -> LoadResult:
    """The `LoadResult` of a `zcserve load --json` file, its histograms decoded once."""
    try:
        result = LoadResult.from_json(saved.data)
        if "summed_requests_per_second" in saved.data:  # merged before: keep its rates
            summed = {
                field.name: float(saved.data[field.name])
                for field in fields(MergedClients)
                if field.name.startswith("summed_")
            }
            result = MergedClients(**{**_values(result), **summed})
    except KeyError as exc:
        raise ConfigError(f"bad load result {saved.path!r}: missing field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"bad load result {saved.path!r}: bad field value ({exc})") from None
    try:
        result.decode_histogram()
        result.decode_handshake_histogram()
    except Exception as exc:  # hdrh raises its own exception types on a bad encoding
        raise ConfigError(f"bad load result {saved.path!r}: bad histogram ({exc})") from None
    return result


DURATION_TOLERANCE = 0.05
"""Windows whose lengths differ by at most this share of the longer (or by at most
`DURATION_SLACK`) are the same window: a `-d` run's window is the duration asked
for, exactly; a `-n` run's is the whole run, which varies a little between clients
that ran the same -n side by side."""
DURATION_SLACK = 0.1
"""Seconds two windows may differ by whatever their length: short `-n` runs of a few
milliseconds differ by more than 5 % through connection set-up alone."""


@dataclass(frozen=True)
class MergedClients(LoadResult):
    """Several clients' results as one. Each client's rate is over its own window;
    side by side, the rate in the window they share is the sum of those rates. The
    union of the requests over the longest window (`LoadResult.merge`, right for the
    processes of one run, which share one window) would understate it whenever a
    client ran for less than the longest: its requests would be spread over time in
    which it did not run. Counts, histograms and `duration` (the longest) are
    `LoadResult.merge`'s."""

    summed_requests_per_second: float = 0.0
    summed_megabytes_per_second: float = 0.0
    summed_window_megabytes_per_second: float = 0.0
    summed_achieved_rate: float = 0.0

    @property
    def requests_per_second(self) -> float:
        return self.summed_requests_per_second

    @property
    def megabytes_per_second(self) -> float:
        return self.summed_megabytes_per_second

    @property
    def window_megabytes_per_second(self) -> float:
        return self.summed_window_megabytes_per_second

    @property
    def achieved_rate(self) -> float:
        return self.summed_achieved_rate


def _values(result: LoadResult) -> dict[str, Any]:
    return {field.name: getattr(result, field.name) for field in fields(LoadResult)}


def window(result: LoadResult) -> float:
    """The seconds a client measured: its window, or for older results its duration."""
    return result.window_seconds or result.duration


def mismatches(saved: Sequence[Saved], results: Sequence[LoadResult]) -> list[str]:
    """Why these clients do not look like one run: different URLs, or windows of
    different lengths (beyond `DURATION_TOLERANCE`); [] when they do."""
    problems = []
    first, base = saved[0], results[0]
    for one, result in zip(saved[1:], results[1:], strict=True):
        if set(result.urls) != set(base.urls):
            problems.append(
                f"{first.path!r} loaded {', '.join(base.urls)} but {one.path!r} "
                f"loaded {', '.join(result.urls)}"
            )
    windows = [window(result) for result in results]
    if max(windows) - min(windows) > max(DURATION_TOLERANCE * max(windows), DURATION_SLACK):
        shortest, longest = windows.index(min(windows)), windows.index(max(windows))
        problems.append(
            f"{saved[shortest].path!r} measured {windows[shortest]:.2f} s but "
            f"{saved[longest].path!r} {windows[longest]:.2f} s"
        )
    return problems


def merge_clients(results: Sequence[LoadResult]) -> MergedClients:
    """One result for clients that ran side by side: `LoadResult.merge`, the rates
    summed (`MergedClients`), and the fields that differ between clients (each has
    its own URLs, rate, loop)."""
    models = {result.model for result in results}
    if len(models) > 1:
        raise ConfigError("cannot merge closed-model and open-model load results")
    merged = LoadResult.merge(results)
    urls = tuple(dict.fromkeys(url for result in results for url in result.urls))
    loops = "+".join(dict.fromkeys(result.loop for result in results))
    target_rate = None
    if merged.model == "open":
        # Each client's target is its own total: side by side they add up.
        target_rate = sum(result.target_rate or 0.0 for result in results)
    values = _values(merged)
    values.update(
        urls=urls,
        loop=loops,
        target_rate=target_rate,
        warmup=max(result.warmup for result in results),
        verified=all(result.verified for result in results),
    )
    return MergedClients(
        **values,
        summed_requests_per_second=sum(result.requests_per_second for result in results),
        summed_megabytes_per_second=sum(result.megabytes_per_second for result in results),
        summed_window_megabytes_per_second=sum(
            result.window_megabytes_per_second for result in results
        ),
        summed_achieved_rate=sum(result.achieved_rate for result in results),
    )


def _client_line(path: str, result: LoadResult) -> str:
    latency = result.latency_ms()
    return (
        f"  {escape(path)}: {result.requests:,} requests in {result.duration:.2f} s, "
        f"{result.requests_per_second:,.1f} req/s, p99 {format_ms(latency['p99'])} ms, "
        f"{result.error_total:,} errors"
    )


def report_load(
    saved: Sequence[Saved], console: Console, *, json_out: str | None, force: bool = False
) -> LoadResult:
    results = [load_result(one) for one in saved]
    problems = mismatches(saved, results) if len(results) > 1 else []
    if problems and not force:
        raise ConfigError(
            f"not merged: {'; '.join(problems)}; clients merged as one run must load the "
            "same URLs for windows of the same length (--force merges them anyway)"
        )
    merged = merge_clients(results) if len(results) > 1 else results[0]
    for problem in problems:
        print(f"zcserve report: WARNING: merged anyway (--force): {problem}", file=sys.stderr)
    if len(results) > 1:
        names = ", ".join(one.path for one in saved)
        console.print(f"merged {len(results)} clients: {escape(names)}", soft_wrap=True)
        console.print("  rates: the sum of each client's rate over its own window", highlight=False)
        for one, result in zip(saved, results, strict=True):
            console.print(_client_line(one.path, result), highlight=False, soft_wrap=True)
    print_summary(console, merged)
    if json_out is not None:
        write_json(json_out, merged.to_json())
    return merged


def report_bench(saved: Sequence[Saved], console: Console, *, plots: str | None) -> None:
    for one in saved:
        rows, meta = bench_rows(one)
        described = ", ".join(
            str(meta[key]) for key in ("command", "date", "machine") if meta.get(key)
        )
        console.print(f"{escape(one.path)}: {escape(described)}", highlight=False, soft_wrap=True)
        for table in render_tables(
            rows, pinning=str(meta.get("placement", "")), width=console.width
        ):
            console.print(table)
        if plots is not None:
            try:
                os.makedirs(plots, exist_ok=True)
                written = write_plots(plots, rows, meta)
            except OSError as exc:
                raise ConfigError(f"cannot write plots to {plots!r}: {exc.strerror}") from None
            console.print(f"plots written: {escape(', '.join(written))}", soft_wrap=True)


def report_seed(saved: Saved, console: Console) -> None:
    """The lab's experiment again: each strategy's downloads, and readall / sendfile
    as the rows have it (time over time)."""
    data = saved.data
    try:
        rows = [
            (str(r["strategy"]), float(r["seconds"]), float(r["megabytes_per_second"]),
             float(r["server_cpu_seconds"]), int(r["peak_rss_bytes"]))
            for r in data["rows"]
        ]  # fmt: skip
        size, downloads = int(data["size"]), int(data["downloads"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad seed result {saved.path!r}: {exc}") from None
    console.print(
        f"{escape(saved.path)}: the seed experiment, {downloads} x {format_size(size)} "
        f"per strategy, {escape(str(data.get('loop', '?')))}",
        soft_wrap=True,
    )
    for strategy, seconds, rate, cpu, peak in rows:
        console.print(
            f"  {strategy:9} {seconds:8.2f} s  {rate:8,.0f} MB/s  server CPU {cpu:6.2f} s  "
            f"peak RSS {peak / 2**20:,.0f} MiB"
        )
    times = {strategy: seconds for strategy, seconds, *_ in rows}
    if times.get("readall") and times.get("sendfile"):
        console.print(
            f"readall / sendfile: {times['readall'] / times['sendfile']:.2f}x the time "
            f"(the lab measured {data.get('lab_ratio', '?')}x)"
        )


def report_syscalls(saved: Saved, console: Console) -> None:
    """The syscall table again, from its rows."""
    try:
        rows = [
            SyscallRow(**{k: v for k, v in row.items() if k in SYSCALL_FIELDS})
            for sizes in saved.data["strategies"].values()
            for row in sizes.values()
        ]
    except (AttributeError, TypeError) as exc:
        raise ConfigError(f"bad syscalls result {saved.path!r}: {exc}") from None
    console.print(f"{escape(saved.path)}: syscalls per request", soft_wrap=True)
    console.print(syscalls_table(rows), highlight=False, soft_wrap=True)


def check_inputs(
    saved: Sequence[Saved],
    *,
    plots: str | None,
    json_out: str | None,
    markdown: str | None = None,
    cell: tuple[int, int] | None = None,
) -> Kind:
    """The one kind all inputs share, or `ConfigError` saying what does not fit."""
    first = saved[0]
    for other in saved[1:]:
        if other.kind != first.kind:
            raise ConfigError(
                f"cannot mix bench and load results: {first.path!r} is a {first.kind} result, "
                f"{other.path!r} a {other.kind} result"
            )
    seen: dict[str, str] = {}
    for one in saved:
        real = os.path.realpath(one.path)
        if real in seen:
            raise ConfigError(f"{one.path!r} is given twice; each client's result counts once")
        seen[real] = one.path
    if first.kind in ("seed", "syscalls") and (plots is not None or json_out is not None):
        raise ConfigError(f"--plots and --json are for bench and load results, not {first.kind}")
    if first.kind == "load" and plots is not None:
        raise ConfigError(f"--plots draws bench results; {first.path!r} is a load result")
    if markdown is not None and first.kind != "bench":
        raise ConfigError(
            f"--markdown writes bench tables; {first.path!r} is a {first.kind} result"
        )
    if markdown is not None and len(saved) > 1:
        raise ConfigError(
            f"--markdown writes one bench result's table; give one file, not {len(saved)}"
        )
    if cell is not None and markdown is None:
        raise ConfigError("--cell picks the cell of the --markdown table; give --markdown FILE too")
    if first.kind == "bench":
        if json_out is not None:
            raise ConfigError(
                f"--json writes merged load results; {first.path!r} is a bench result"
            )
        if plots is not None and len(saved) > 1:
            raise ConfigError(f"--plots draws one bench result; give one file, not {len(saved)}")
    return first.kind


# the Markdown table --------------------------------------------------------------------

MARKDOWN_BEGIN = "<!-- generated by zcserve report: begin -->"
MARKDOWN_END = "<!-- generated by zcserve report: end -->"


def markdown_for(saved: Saved, cell: tuple[int, int] | None) -> str:
    """The bench table as Markdown: every column (as table.md), or with `cell`
    (size, connections) that cell's `headline_table`."""
    rows, meta = bench_rows(saved)
    if cell is None:
        return markdown_table(rows, pinning=str(meta.get("placement", "")))
    return headline_table(rows, *cell)


def spliced(path: str, table: str) -> str:
    """`path`'s text with `table` between its MARKDOWN_BEGIN and MARKDOWN_END lines, or
    the two markers around `table` when `path` does not exist yet. A file without one
    of each, in order, is `ConfigError`: the rest of a file is never overwritten."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{MARKDOWN_BEGIN}\n{table}{MARKDOWN_END}\n"
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path!r}: {exc}") from None
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == MARKDOWN_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == MARKDOWN_END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise ConfigError(
            f"{path!r} exists without one {MARKDOWN_BEGIN!r} line and one {MARKDOWN_END!r} "
            "line after it; the table goes between them (a new file gets both)"
        )
    return "".join(lines[: begins[0] + 1]) + table + "".join(lines[ends[0] :])


# the report -------------------------------------------------------------------------


def run_report(
    paths: Sequence[str],
    *,
    plots: str | None = None,
    json_out: str | None = None,
    markdown: str | None = None,
    cell: tuple[int, int] | None = None,
    force: bool = False,
) -> int:
    """`zcserve report`: 0 once rendered; bad input raises `ConfigError` (exit 2)."""
    saved = [read_saved(path) for path in paths]
    kind = check_inputs(saved, plots=plots, json_out=json_out, markdown=markdown, cell=cell)
    markdown_text = None
    if markdown is not None:  # every refusal before any output
        markdown_text = spliced(markdown, markdown_for(saved[0], cell))
    if plots is not None:
        try:
            check_plotting()
        except PlotsUnavailable as exc:  # before any output or folder
            raise ConfigError(f"cannot draw the plots: {exc}") from None
    # A pipe or a CI log gets the whole table rather than 80 squeezed columns (as bench).
    console = Console(width=None if sys.stdout.isatty() else 180, highlight=False)
    if kind == "bench":
        report_bench(saved, console, plots=plots)
        if markdown is not None and markdown_text is not None:
            try:
                Path(markdown).write_text(markdown_text, encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot write {markdown!r}: {exc.strerror}") from None
            console.print(f"markdown written: {escape(markdown)}", soft_wrap=True)
    elif kind == "seed":
        for one in saved:
            report_seed(one, console)
    elif kind == "syscalls":
        for one in saved:
            report_syscalls(one, console)
    else:
        report_load(saved, console, json_out=json_out, force=force)
    return 0
