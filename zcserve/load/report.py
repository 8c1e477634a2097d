"""What `zcserve load` prints: a live progress line on a terminal, one summary at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from zcserve.errors import ConfigError
from zcserve.load.stats import LoadResult

RATE_WINDOW = 0.5
"""Seconds over which the live request rate is averaged."""


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


def summary_lines(result: LoadResult) -> list[str]:
    """The summary as plain lines (rich markup only on the error line)."""
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
    if result.reconnects:
        lines.append(
            f"  reconnects  {result.reconnects:,} (a reused connection closed before the "
            "response; sent again)"
        )
    lines.append(
        f"  body        {result.body_bytes / 1e6:,.2f} MB: {result.megabytes_per_second:,.2f} MB/s"
    )
    latency = result.latency_ms()
    lines.append(
        "  latency ms  "
        + "  ".join(f"{name} {format_ms(latency[name])}" for name in ("p50", "p90", "p99", "p99.9"))
        + f"  max {format_ms(latency['max'])}"
    )
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


def write_json(path: str, data: Mapping[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path!r}: {exc.strerror}") from None


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
        self.last = (self.started, 0)
        self.rate = 0.0

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
        if self.progress is None or self.task is None:
            return
        now = time.monotonic()
        elapsed = now - self.started
        done = requests if self.total_requests is not None else elapsed
        then, before = self.last
        if now - then >= RATE_WINDOW:
            # Counts restart after the warm-up: a drop is a new phase, not a negative rate.
            self.rate = max(requests - before, 0) / (now - then)
            self.last = (now, requests)
        figures = f"{requests:,} requests, {self.rate:,.0f} req/s, {errors:,} errors"
        self.progress.update(self.task, completed=done, figures=figures)
