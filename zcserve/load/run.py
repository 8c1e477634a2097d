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

import asyncio
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from zcserve.errors import ZcserveError
from zcserve.load.client import LocalLink, run_worker
from zcserve.load.options import LoadOptions
from zcserve.load.plan import plan_workers
from zcserve.load.probe import prepare_routes
from zcserve.load.procs import ProgressCallback, WorkerPool
from zcserve.load.stats import LoadResult
from zcserve.runtime import loop_factory, raise_nofile_limit

__all__ = ["LoadOptions", "LoadResult", "run_load", "run_load_async"]

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
