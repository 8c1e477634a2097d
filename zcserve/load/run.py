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

https:// URLs speak TLS (ALPN http/1.1, SNI from the URL's host), verified
against the system's CAs, or only `cacert`'s, or not at all with `insecure`. An
untrusted certificate on that first connect fails fast too. Handshakes are
counted and timed apart (`tls_handshakes`, `handshake_ms()`), never in latency.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console

from zcserve.errors import ConfigError, ZcserveError
from zcserve.load import raw as loadraw
from zcserve.load.client import LocalLink, run_worker
from zcserve.load.options import DEFAULT_CONNECTIONS, DEFAULT_DURATION, LoadOptions
from zcserve.load.plan import plan_workers
from zcserve.load.probe import prepare_routes
from zcserve.load.procs import ProgressCallback, WorkerPool
from zcserve.load.report import LiveProgress, print_summary, write_json
from zcserve.load.stats import LoadResult
from zcserve.runtime import LOOP_NAMES, loop_factory, raise_nofile_limit
from zcserve.units import parse_duration

__all__ = ["LoadOptions", "LoadResult", "add_command", "run_command", "run_load", "run_load_async"]

# the run ------------------------------------------------------------------------


def run_load(options: LoadOptions, *, on_progress: ProgressCallback | None = None) -> LoadResult:
    """Run the load and return the merged result; blocks. Call from no running loop."""
    with asyncio.Runner(loop_factory=loop_factory(options.loop)) as runner:
        return runner.run(run_load_async(options, on_progress=on_progress))


async def run_load_async(
    options: LoadOptions, *, on_progress: ProgressCallback | None = None
) -> LoadResult:
    """Run the load from a running loop. With one process the connections share this
    loop; with more, this loop only waits for the workers. Ctrl-C ends the run early
    (in the main thread) and still returns what was measured."""
    raise_nofile_limit()
    routes = await prepare_routes(options)
    plans = plan_workers(options, routes)
    if len(plans) == 1:
        link = LocalLink(on_progress)
        with _interrupt_calls(link.request_stop):
            return await run_worker(plans[0], link)
    pool = WorkerPool(plans)
    with _interrupt_calls(pool.stop):
        results = await pool.run(on_progress)
    return LoadResult.merge(results)


@contextmanager
def _interrupt_calls(stop: Callable[[], None]) -> Iterator[None]:
    """While the run lasts, Ctrl-C calls `stop` (which still reports) instead of raising.
    Only the main thread can take signals; elsewhere Ctrl-C keeps its default."""
    loop = asyncio.get_running_loop()
    installed = False
    if threading.current_thread() is threading.main_thread():
        try:
            loop.add_signal_handler(signal.SIGINT, stop)
            installed = True
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            pass
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones ("default: None" says nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_command(sub: argparse._SubParsersAction[P]) -> None:
    """Add `zcserve load` to the `zcserve` command's subparsers."""
    p = sub.add_parser(
        "load",
        help="load an HTTP server and measure latency and throughput",
        description=(
            "Load http:// or https:// URLs over keep-alive HTTP/1.1 connections and report "
            "requests/s, MB/s, latency percentiles (HDR histogram), TLS handshakes (timed "
            "apart, never in the latency) and errors. Give -d or -n; with neither, the run "
            f"lasts {DEFAULT_DURATION:g}s. Exit code 1 when any request failed, 2 on bad "
            "input or when the first connect (or TLS handshake) fails."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("urls", nargs="*", metavar="URL", help="http[s]://host[:port]/path, round-robin")
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
        "each request's intended send time (default: closed model)",
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
        help="per request, connect included; the connection is then reopened",
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
    p.add_argument("--json", metavar="FILE", default=None, help="write every figure as JSON")
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
    console = Console(highlight=False)
    if args.raw is not None:
        return loadraw.run_command(args, console)
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
    )
    seconds = options.warmup + (options.duration or 0.0)
    try:
        with LiveProgress(console, total_requests=options.requests, seconds=seconds) as live:
            result = run_load(options, on_progress=live.update)
    except ConfigError:
        raise
    except ZcserveError as exc:
        print(f"zcserve load: error: {exc}", file=sys.stderr)
        return 1
    print_summary(console, result)
    if args.json is not None:
        write_json(args.json, result.to_json())
    return 1 if result.error_total else 0
