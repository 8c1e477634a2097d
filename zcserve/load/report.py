"""What `zcserve load` prints: a live progress line on a terminal, one summary at the end."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from zcserve.errors import ConfigError
from zcserve.load.stats import LoadResult, UrlResult

RATE_WINDOW = 0.5
"""Seconds over which the live request rate is averaged."""
FIRST_RATE_SPAN = 0.05
"""Seconds the first rate is measured over at least, so two workers' reports a
millisecond apart do not make a spike."""
STDOUT = "-"
"""`--json -`: the JSON goes to stdout (and the human report to stderr)."""


def format_ms(value: float) -> str:
    """Three significant figures or so: 0.312, 4.05, 20.1, 153."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def describe_errors(errors: Mapping[str, int]) -> str:
    """`ERRORS: 12 (reset: 10, status 500: 2)`, or an empty string when there are none."""
    total = sum(errors.values())
    if not total:
        return ""
    kinds = ", ".join(
        f"{kind.replace('_', ' ') if kind.startswith('status_') else kind}: {count}"
        for kind, count in sorted(errors.items())
        if count
    )
    return f"ERRORS: {total} ({kinds})"


def format_bytes(count: int) -> str:
    """Whole bytes below a megabyte, MB (10^6 bytes) from there: 11,120 bytes, 75.06 MB."""
    return f"{count:,} bytes" if count < 1_000_000 else f"{count / 1e6:,.2f} MB"


def describe_statuses(status: Mapping[int, int]) -> str:
    """`200: 1,000  206: 40`."""
    return "  ".join(f"{code}: {count:,}" for code, count in sorted(status.items()))


def url_lines(rows: tuple[UrlResult, ...], duration: float) -> list[str]:
    """One line per URL, the URLs aligned: requests, rate, body, latency, statuses."""
    width = max(len(row.url) for row in rows)
    lines = []
    for row in rows:
        latency = row.latency_ms()
        rate = row.requests / duration if duration > 0 else 0.0
        failed = f", {row.failed:,} failed" if row.failed else ""
        status = f", status {describe_statuses(row.status)}" if row.status else ""
        lines.append(
            f"    {escape(row.url.ljust(width))}  {row.requests:,} requests{failed}, "
            f"{rate:,.1f} req/s, {format_bytes(row.body_bytes)}, "
            f"p50 {format_ms(latency['p50'])} ms, p99 {format_ms(latency['p99'])} ms{status}"
        )
    return lines


LATENCY_SHOWN = ("p50", "p75", "p90", "p95", "p99", "p99.9")
HISTOGRAM_ROWS = 8
HISTOGRAM_WIDTH = 30


def histogram_lines(histogram: HdrHistogram) -> list[str]:
    """A compact latency histogram, as hey and oha print: HISTOGRAM_ROWS rows spaced
    evenly on a log scale from the fastest response to the slowest, each with its
    count and a bar. Nothing for fewer than two distinct latencies."""
    total = histogram.get_total_count()
    low, high = histogram.get_min_value(), histogram.get_max_value()
    if total == 0 or high <= low:
        return []
    ratio = (high / max(low, 1)) ** (1 / HISTOGRAM_ROWS)
    edges = [max(low, 1) * ratio**row for row in range(1, HISTOGRAM_ROWS + 1)]
    edges[-1] = high
    counts = [0] * HISTOGRAM_ROWS
    for item in histogram.get_recorded_iterator():
        row = next(
            i
            for i, edge in enumerate(edges)
            if item.value_iterated_to <= edge or i == len(edges) - 1
        )
        counts[row] += item.count_at_value_iterated_to
    widest = max(counts)
    lines = ["  histogram   up to (ms)  responses"]
    for edge, count in zip(edges, counts, strict=True):
        bar = "■" * round(HISTOGRAM_WIDTH * count / widest) if count else ""
        lines.append(f"  {format_ms(edge / 1000):>20}  {count:>9,} {bar}")
    return lines


def summary_lines(result: LoadResult) -> list[str]:
    """The summary as plain lines (rich markup only on the warning and error lines)."""
    urls = (
        result.urls[0]
        if len(result.urls) == 1
        else f"{result.urls[0]} (+{len(result.urls) - 1} more)"
    )
    model = "closed model" if result.model == "closed" else f"open model, {result.target_rate:g}/s"
    processes = f"{result.processes} process{'es' if result.processes != 1 else ''}"
    lines = [
        f"zcserve load: {urls}, {result.connections} connections, "
        f"{processes}, {model}, {result.loop}",
    ]
    rate = f"{result.requests_per_second:,.1f} req/s"
    if result.target_rate is not None:
        rate += f" (target {result.target_rate:,.1f}/s, sent {result.achieved_rate:,.1f}/s)"
    lines.append(f"  requests    {result.requests:,} in {result.duration:.2f} s: {rate}")
    if result.model == "open" or result.unsent:
        lines.append(
            f"  unsent      {result.unsent:,} (due in the window, never sent; "
            "in the latency from their due time to the end)"
        )
    if result.rate_saturated:
        assert result.target_rate is not None
        lines.append(
            f"[bold red]  WARNING     target {result.target_rate:,.0f}/s, sent "
            f"{result.achieved_rate:,.0f}/s: the client or the server is saturated[/]"
        )
    if result.reconnects:
        lines.append(
            f"  reconnects  {result.reconnects:,} (connections the server closed, opened "
            "again; a request that met one closing was sent again)"
        )
    if result.status:
        lines.append(f"  status      {describe_statuses(result.status)}")
    lines.append(
        f"  body        {format_bytes(result.body_bytes)}: "
        f"{result.megabytes_per_second:,.2f} MB/s (MB = 10^6 bytes of body)"
    )
    if result.header_bytes:
        per_second = result.header_bytes / 1e6 / result.duration if result.duration > 0 else 0.0
        lines.append(
            f"  headers     {format_bytes(result.header_bytes)}: {per_second:,.2f} MB/s "
            "(response heads: status lines and headers, not in the body figures)"
        )
    latency = result.latency_ms()
    lines.append(
        f"  latency ms  min {format_ms(latency['min'])}  "
        + "  ".join(f"{name} {format_ms(latency[name])}" for name in LATENCY_SHOWN)
        + f"  max {format_ms(latency['max'])}"
        + f"  mean {format_ms(latency['mean'])}  stdev {format_ms(latency['stdev'])}"
    )
    lines.extend(histogram_lines(result.decode_histogram()))
    if result.per_url:
        lines.append("  per URL")
        lines.extend(url_lines(result.per_url, result.duration))
    if result.tls or result.tls_handshakes:
        handshake = result.handshake_ms()
        count = result.tls_handshakes
        lines.append(
            f"  TLS         {count:,} handshake{'s' if count != 1 else ''}, ms "
            + "  ".join(f"{name} {format_ms(handshake[name])}" for name in ("p50", "p99", "max"))
        )
    lines.append(f"  client CPU  {result.cpu_seconds:.2f} s")
    if result.client_saturated:
        processes = f"{result.processes} process{'es' if result.processes != 1 else ''}"
        lines.append(
            f"[bold yellow]  WARNING     client saturated: CPU busy {result.client_cpu_share:.0%} "
            f"of the time on {processes}; these figures may measure zcserve load, not the "
            "server (add --processes)[/]"
        )
    if result.verified:
        lines.append("  verified    SHA-256 of every body")
    errors = describe_errors(result.errors)
    lines.append(f"[bold red]  {escape(errors)}[/]" if errors else "  errors      none")
    return lines


def print_summary(console: Console, result: LoadResult) -> None:
    for line in summary_lines(result):
        console.print(line, highlight=False, soft_wrap=True)


def check_output(path: str) -> None:
    """Refuse, before any request is sent, a JSON path that cannot be written: a
    folder, or a file in a folder that does not exist (or is not writable)."""
    if path == STDOUT:
        return
    if os.path.isdir(path):
        raise ConfigError(f"cannot write {path!r}: it is a folder; expected a file path or -")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ConfigError(f"cannot write {path!r}: no folder {folder!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path!r}: folder {folder!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"cannot write {path!r}: the file is not writable")


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Write `data` to `path`, or to stdout when `path` is `-`."""
    text = json.dumps(data, indent=2) + "\n"
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path!r}: {exc.strerror}") from None


class RateMeter:
    """The live request rate: over the last `RATE_WINDOW` once the load has run that
    long, and before that since the last report of no request, so the rate is not 0
    in the first second (workers take a while to start and connect)."""

    def __init__(self, now: float) -> None:
        self.mark = (now, 0)
        """When the window began, and the count then."""
        self.rate = 0.0

    def sample(self, now: float, requests: int) -> float:
        then, before = self.mark
        if requests == 0 or requests < before:
            # Nothing yet, or a new phase (counts restart after the warm-up): the
            # window starts here; the rate shown stays until the next one is known.
            self.mark = (now, requests)
            return self.rate
        elapsed = now - then
        if elapsed >= RATE_WINDOW:
            self.rate = (requests - before) / elapsed
            self.mark = (now, requests)
        elif before == 0 and elapsed >= FIRST_RATE_SPAN:
            self.rate = requests / elapsed
        return self.rate


def progress_figures(requests: int, errors: int, rate: float, total: int | None) -> str:
    """The progress line's figures; with -n, the requests done out of those asked."""
    done = f"{requests:,}/{total:,}" if total is not None else f"{requests:,}"
    return f"{done} requests, {rate:,.0f} req/s, {errors:,} errors"


class LiveProgress:
    """A one-line progress bar while the run lasts; nothing unless stdout is a terminal.

    `update` is called from the event loop; rich redraws from its own thread.
    """

    def __init__(self, console: Console, *, total_requests: int | None, seconds: float) -> None:
        self.console = console
        self.total_requests = total_requests
        self.seconds = seconds
        self.started = time.monotonic()
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.meter = RateMeter(self.started)
        self.figures = "connecting"

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]load[/]"),
                BarColumn(),
                TextColumn("{task.fields[figures]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            total = self.total_requests if self.total_requests is not None else self.seconds
            self.task = self.progress.add_task("load", total=total, figures="connecting")
            self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, requests: int, errors: int) -> None:
        now = time.monotonic()
        rate = self.meter.sample(now, requests)
        self.figures = progress_figures(requests, errors, rate, self.total_requests)
        if self.progress is None or self.task is None:
            return
        done = requests if self.total_requests is not None else now - self.started
        self.progress.update(self.task, completed=done, figures=self.figures)
