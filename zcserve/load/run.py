"""`zcserve load`: an HTTP/1.1 load generator with an exact, mergeable latency histogram.

Python API (what `zcserve bench` uses)::

    from zcserve.load import LoadOptions, LoadResult, run_load, run_load_async

    options = LoadOptions(urls=("http://127.0.0.1:8000/4k.bin",), connections=64,
                          duration=10.0, processes=2)
    result: LoadResult = run_load(options)            # blocking; spawns the workers
    result = await run_load_async(options)            # the same from a running loop
    result.requests_per_second, result.latency_ms()["p99"], result.errors
    LoadResult.from_json(result.to_json()) == result  # JSON round trip
    LoadResult.merge([a, b])                          # exact histogram merge

`LoadOptions` is frozen and validated once (`ConfigError` on bad input). Exactly
one of `duration` and `requests` bounds the run (neither: `duration` of 10 s).
`rate=None` is the closed model (each connection sends its next request when
the previous response is complete); a `rate` in requests/s is the open model
(requests on a fixed schedule, latency from the intended send time, as wrk2).
`processes` (default: the CPU count, never more than the connections) spreads
the connections over worker processes; with 1 the run stays in-process.

Before any load, each host is resolved and connected to once, so a refused port
or unknown host fails fast with one line; with `verify` each URL is fetched once
for the reference SHA-256 (or `expect` names a local file holding the body).

The first Ctrl-C (SIGINT; for `zcserve load`, SIGTERM too) ends the run at once:
connects and timers are cancelled, requests in flight get half a second, and what
was measured is returned (and printed, and saved), errors included. A second one
exits immediately (code 130 or 143), ending the worker processes first.

https:// URLs speak TLS (ALPN http/1.1, SNI from the URL's host), verified
against the system's CAs, or only `cacert`'s, or not at all with `insecure`. An
untrusted certificate on that first connect fails fast too. Handshakes are
counted and timed apart (`tls_handshakes`, `handshake_ms()`), never in latency.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console

from zcserve.errors import ConfigError, ZcserveError
from zcserve.helptext import DefaultsFormatter
from zcserve.load import raw as loadraw
from zcserve.load.client import LATE_GRACE, LocalLink, run_worker
from zcserve.load.http import METHODS, parse_statuses
from zcserve.load.options import DEFAULT_CONNECTIONS, DEFAULT_DURATION, LoadOptions
from zcserve.load.plan import plan_workers
from zcserve.load.probe import prepare_routes
from zcserve.load.procs import ProgressCallback, WorkerPool
from zcserve.load.report import STDOUT, LiveProgress, check_output, print_summary, write_json
from zcserve.load.stats import LoadResult
from zcserve.runtime import LOOP_NAMES, loop_factory, raise_nofile_limit
from zcserve.units import parse_duration

__all__ = ["LoadOptions", "LoadResult", "add_command", "run_command", "run_load", "run_load_async"]

# the run ------------------------------------------------------------------------

API_STOP_SIGNALS = (signal.SIGINT,)
"""Signals that stop a run made through the Python API: Ctrl-C only, so a program
that runs several (the bench) still ends on SIGTERM."""
CLI_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""`zcserve load` stops on SIGTERM as on Ctrl-C, and still prints and saves the run."""


def run_load(
    options: LoadOptions,
    *,
    on_progress: ProgressCallback | None = None,
    stop_signals: Collection[int] = API_STOP_SIGNALS,
) -> LoadResult:
    """Run the load and return the merged result; blocks. Call from no running loop."""
    with asyncio.Runner(loop_factory=loop_factory(options.loop)) as runner:
        return runner.run(
            run_load_async(options, on_progress=on_progress, stop_signals=stop_signals)
        )


async def run_load_async(
    options: LoadOptions,
    *,
    on_progress: ProgressCallback | None = None,
    stop_signals: Collection[int] = API_STOP_SIGNALS,
) -> LoadResult:
    """Run the load from a running loop. With one process the connections share this
    loop; with more, this loop only waits for the workers. Ctrl-C (and the other
    `stop_signals`) ends the run early (in the main thread) and still returns what was
    measured; a second one exits the process."""
    raise_nofile_limit()
    with _interrupts(stop_signals) as interrupts:
        routes = await interrupts.before_the_run(prepare_routes(options))
        plans = plan_workers(options, routes)
        if len(plans) == 1:
            link = LocalLink(on_progress)
            interrupts.on_stop(link.request_stop)
            return await run_worker(plans[0], link)
        pool = WorkerPool(plans)
        interrupts.on_stop(pool.stop, kill=pool.kill)
        results = await pool.run(on_progress)
    return LoadResult.merge(results)


R = TypeVar("R")


class _Interrupts:
    """What SIGINT and SIGTERM do while a run lasts: the first stops it (the run still
    reports), a second exits at once."""

    def __init__(self) -> None:
        self.stop: Callable[[], None] | None = None
        self.kill: Callable[[], None] | None = None
        self.signalled = False
        self.waiting: asyncio.Future[Any] | None = None

    def on_stop(self, stop: Callable[[], None], kill: Callable[[], None] | None = None) -> None:
        """From now on the first signal calls `stop`; `kill` ends any children first
        when a second one exits."""
        self.stop = stop
        self.kill = kill
        if self.signalled:
            stop()

    async def before_the_run(self, work: Awaitable[R]) -> R:
        """Await `work` (resolving, probing); a signal meanwhile ends it with an error."""
        waiting: asyncio.Future[R] = asyncio.ensure_future(work)
        self.waiting = waiting
        try:
            return await waiting
        except asyncio.CancelledError:
            if self.signalled:
                raise ZcserveError("interrupted before the load started") from None
            raise
        finally:
            self.waiting = None

    def signal(self, signum: int) -> None:
        if self.signalled:
            self.exit_now(signum)
        self.signalled = True
        name = signal.Signals(signum).name
        os.write(2, f"zcserve load: {name}: stopping; once more exits at once\n".encode())
        if self.waiting is not None:
            self.waiting.cancel()
        if self.stop is not None:
            self.stop()

    def exit_now(self, signum: int) -> None:
        """The second signal: no summary, no waiting; our worker processes end first."""
        if self.kill is not None:
            self.kill()
        name = signal.Signals(signum).name
        os.write(2, f"zcserve load: {name} again; exiting without a summary\n".encode())
        os._exit(128 + signum)


@contextmanager
def _interrupts(stop_signals: Collection[int]) -> Iterator[_Interrupts]:
    """While the run lasts, SIGINT and SIGTERM stop it (it still reports) instead of
    killing the process. Only the main thread can take signals; elsewhere they keep
    their defaults."""
    loop = asyncio.get_running_loop()
    interrupts = _Interrupts()
    installed = []
    if threading.current_thread() is threading.main_thread():
        for signum in stop_signals:
            previous = signal.getsignal(signum)
            try:
                loop.add_signal_handler(signum, interrupts.signal, signum)
                installed.append((signum, previous))
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
                pass
    try:
        yield interrupts
    finally:
        for signum, previous in installed:
            loop.remove_signal_handler(signum)
            if previous is not None:  # the caller's own handler, as it was
                signal.signal(signum, previous)


# the command ----------------------------------------------------------------------

P = TypeVar("P", bound=argparse.ArgumentParser)


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _warmup(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests/s") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 requests/s")
    return value


def add_command(sub: argparse._SubParsersAction[P]) -> None:
    """Add `zcserve load` to the `zcserve` command's subparsers."""
    p = sub.add_parser(
        "load",
        help="load an HTTP server and measure latency and throughput",
        description=(
            "Load http:// or https:// URLs over keep-alive HTTP/1.1 connections and report "
            "requests/s, MB/s (10^6 bytes of body; response heads counted apart), latency "
            "percentiles, mean and stdev (HDR histogram), statuses, TLS handshakes (timed "
            "apart, never in the latency) and errors, per URL too when several are given. "
            f"Give -d or -n; with neither, the run lasts {DEFAULT_DURATION:g}s. Exit code 1 "
            "when any request failed or got an unexpected status, 2 on bad input or when the "
            "first connect (or TLS handshake) fails."
        ),
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="http[s]://host[:port]/path; several are taken in turn on each connection (one "
        "host's URLs share its connections) and reported one row each",
    )
    p.add_argument(
        "-H",
        "--header",
        metavar="'NAME: VALUE'",
        action="append",
        dest="headers",
        default=None,
        help="add a request header, e.g. 'Range: bytes=0-99', 'If-None-Match: \"abc\"' or "
        "'Accept-Encoding: gzip'; repeatable; replaces the default Host, User-Agent or Accept",
    )
    p.add_argument(
        "-m",
        "--method",
        choices=METHODS,
        default="GET",
        help="request method; HEAD responses have no body, whatever their Content-Length",
    )
    p.add_argument(
        "--expect-status",
        metavar="LIST",
        default=None,
        help="statuses that count as success, e.g. 200,206 or 2xx; any other is an error "
        "(default: 2xx and 3xx, 304 and redirects included, as wrk counts)",
    )
    p.add_argument(
        "-c",
        "--connections",
        metavar="C",
        type=_count,
        default=DEFAULT_CONNECTIONS,
        help="keep-alive connections, spread over the processes (https: one TLS handshake "
        "each, plus one per reconnect)",
    )
    bound = p.add_mutually_exclusive_group()
    bound.add_argument(
        "-d",
        "-z",
        "--duration",
        metavar="DURATION",
        type=_duration,
        default=None,
        help=f"how long to measure: 10s, 500ms, 2m (default without -n: {DEFAULT_DURATION:g}s)",
    )
    bound.add_argument(
        "-n",
        "--requests",
        metavar="N",
        type=_count,
        default=None,
        help="total requests, split exactly between the processes",
    )
    p.add_argument(
        "--rate",
        metavar="R",
        type=_rate,
        default=None,
        help="open model: R requests/s in all, on a fixed schedule; latency counts from "
        "each request's intended send time; slots not sent by the end of -d (plus "
        f"{LATE_GRACE:g}s) are counted as unsent, and a run that falls short of R says so "
        "(default: closed model)",
    )
    p.add_argument(
        "--warmup",
        metavar="SECONDS",
        type=_warmup,
        default=0.0,
        help="run this long first, then reset every counter",
    )
    p.add_argument(
        "--processes",
        metavar="P",
        type=_count,
        default=None,
        help="worker processes, each with its own event loop (default: one per CPU, "
        "at most one per connection)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_duration,
        default=10.0,
        help="per request, connect included (the connection is then reopened); also "
        "bounds the opening of the connections, and how long a run may go on past -d; "
        "with --raw, per whole download",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare each body's SHA-256 with the first response for its URL",
    )
    p.add_argument(
        "--expect",
        metavar="FILE",
        default=None,
        help="compare each body's SHA-256 with FILE's (one URL; implies --verify)",
    )
    trust = p.add_mutually_exclusive_group()
    trust.add_argument(
        "--insecure",
        action="store_true",
        help="https: do not verify the certificate or host name (self-signed certificates)",
    )
    trust.add_argument(
        "--cacert",
        metavar="FILE",
        default=None,
        help="https: trust the CA certificates in FILE (PEM) instead of the system's",
    )
    p.add_argument("--loop", choices=LOOP_NAMES, default="uvloop", help="event loop")
    p.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="write every figure as JSON to FILE (checked before the run), or to stdout "
        "with - (the report then goes to stderr)",
    )
    p.add_argument(
        "--raw",
        metavar="HOST:PORT",
        default=None,
        help="no HTTP: connect, read until EOF, close; -n times (default 10) in sequence; "
        "the client of `zcserve serve --raw FILE`",
    )
    p.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    """`zcserve load`: 0 when every request succeeded, 1 when any failed."""
    if args.json is not None:
        check_output(args.json)
    # With --json -, stdout carries the JSON alone; the report and the progress go to stderr.
    console = Console(highlight=False, stderr=args.json == STDOUT)
    if args.raw is not None:
        return loadraw.run_command(args, console)
    expect_status = None if args.expect_status is None else parse_statuses(args.expect_status)
    options = LoadOptions(
        urls=tuple(args.urls),
        connections=args.connections,
        duration=args.duration,
        requests=args.requests,
        rate=args.rate,
        warmup=args.warmup,
        processes=args.processes,
        timeout=args.timeout,
        verify=args.verify,
        expect=args.expect,
        loop=args.loop,
        insecure=args.insecure,
        cacert=args.cacert,
        method=args.method,
        headers=tuple(args.headers or ()),
        expect_status=expect_status,
    )
    seconds = options.warmup + (options.duration or 0.0)
    try:
        with LiveProgress(console, total_requests=options.requests, seconds=seconds) as live:
            result = run_load(options, on_progress=live.update, stop_signals=CLI_STOP_SIGNALS)
    except ConfigError:
        raise
    except ZcserveError as exc:
        print(f"zcserve load: error: {exc}", file=sys.stderr)
        return 1
    print_summary(console, result)
    if args.json is not None:
        write_json(args.json, result.to_json())
    return 1 if result.error_total else 0
