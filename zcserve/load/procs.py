"""Worker processes for a load run: spawn them, start them together, collect results.

Each worker is a fresh interpreter ('spawn': no inherited event loop, threads or
locks, the same on every platform) running its own event loop. Parent and worker
talk over one pipe each: the worker says "ready" once its connections are open,
the parent answers "go" with a common start time so every process starts (and
warms up, and stops) on the same clock, and the worker sends progress and finally
its `LoadResult` (histogram encoded) for the parent to merge. The parent's "stop"
reaches a worker at any time, while its connections are still opening too.

A worker that dies (or fails) costs only its own share: the others' results are
kept, and the death is counted as an error (`worker_died`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from typing import Any

from zcserve.errors import ZcserveError
from zcserve.load.client import run_worker
from zcserve.load.plan import WorkerPlan
from zcserve.load.stats import LiveStats, LoadResult
from zcserve.runtime import loop_factory, raise_nofile_limit

START_MARGIN = 0.05
"""Seconds between the "go" message and the common start, so every worker gets it."""
JOIN_TIMEOUT = 5.0
"""Seconds to wait for a worker to exit after it sent its result."""

Message = tuple[Any, ...]
ProgressCallback = Callable[[int, int], None]


class PipeLink:
    """A worker's end of its pipe to the parent (see `client.WorkerLink`)."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.stop: Callable[[], None] | None = None
        self.go: asyncio.Future[float] | None = None
        self.reading = False

    def attach(self, stop: Callable[[], None]) -> None:
        """Listen to the parent from now on: a "stop" may come while connections open."""
        self.stop = stop
        loop = asyncio.get_running_loop()
        self.go = loop.create_future()
        loop.add_reader(self.pipe.fileno(), self._readable)
        self.reading = True
        try:
            loop.add_signal_handler(signal.SIGTERM, stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            pass

    def ready(self) -> None:
        self.pipe.send(("ready",))

    async def wait_go(self) -> float:
        assert self.go is not None, "attach first"
        return await self.go

    def progress(self, requests: int, errors: int) -> None:
        try:
            self.pipe.send(("progress", requests, errors))
        except OSError:
            pass  # the parent is gone; _readable stops the worker

    def close(self) -> None:
        if self.reading:
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            self.reading = False

    def _readable(self) -> None:
        try:
            while self.pipe.poll():
                message = self.pipe.recv()
                if message[0] == "go" and self.go is not None and not self.go.done():
                    self.go.set_result(float(message[1]))
                elif message[0] == "stop" and self.stop is not None:
                    self.stop()
        except (EOFError, OSError):  # the parent is gone: stop as if asked to
            self.close()
            if self.go is not None and not self.go.done():
                self.go.set_exception(ZcserveError("parent process went away"))
            elif self.stop is not None:
                self.stop()


async def _work(plan: WorkerPlan, link: PipeLink) -> LoadResult:
    try:
        return await run_worker(plan, link)
    finally:
        link.close()


def worker_main(plan: WorkerPlan, pipe: Pipe) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group; the parent asks workers to stop instead.
    # SIGTERM (to the worker itself) stops it as the parent's "stop" does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    link = PipeLink(pipe)
    try:
        with asyncio.Runner(loop_factory=loop_factory(plan.loop)) as runner:
            result = runner.run(_work(plan, link))
        pipe.send(("result", result))
    except Exception as exc:
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        pipe.close()


def dead_worker_result(plan: WorkerPlan) -> LoadResult:
    """What a worker that died without a result adds: its connections, one error (and
    no per-URL rows: it has no counts for them)."""
    stats = LiveStats()
    stats.error("worker_died")
    return LoadResult.of_worker(plan, stats)


class WorkerPool:
    """The parent's side: one spawned process and one pipe per plan."""

    def __init__(self, plans: Sequence[WorkerPlan]) -> None:
        self.plans = list(plans)
        self.processes: list[BaseProcess] = []
        self.pipes: list[Pipe] = []
        self.inbox: asyncio.Queue[tuple[int, Message]] = asyncio.Queue()
        self.stopping = False
        self.failures: dict[int, str] = {}
        """Workers that ended without a result, and why."""

    def stop(self) -> None:
        """Ask every worker to end early (Ctrl-C); a worker started later is asked too."""
        self.stopping = True
        self._send_all(("stop",))

    def kill(self) -> None:
        """End every worker now (a second Ctrl-C): only our own children, by PID."""
        for process in self.processes:
            try:
                if process.is_alive():
                    process.kill()
            except ValueError:  # already closed
                pass

    async def run(self, on_progress: ProgressCallback | None) -> list[LoadResult]:
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        finished = False
        try:
            for index, plan in enumerate(self.plans):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=worker_main,
                    args=(plan, child_end),
                    name=f"zcserve-load-{index}",
                    daemon=True,
                )
                process.start()
                child_end.close()
                self.processes.append(process)
                self.pipes.append(parent_end)
                loop.add_reader(parent_end.fileno(), self._drain, index)
                if self.stopping:
                    self._send(index, ("stop",))
            results = await self._collect(on_progress)
            finished = True
            return results
        finally:
            await self._close(loop, finished=finished)

    def _drain(self, index: int) -> None:
        pipe = self.pipes[index]
        try:
            while pipe.poll():
                self.inbox.put_nowait((index, pipe.recv()))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(pipe.fileno())
            self.inbox.put_nowait((index, ("eof",)))

    async def _collect(self, on_progress: ProgressCallback | None) -> list[LoadResult]:
        """Every worker's result, in order; a worker that ended without one counts as
        `dead_worker_result`. Raises only when none of them returned a result."""
        count = len(self.plans)
        ready: set[int] = set()
        results: dict[int, LoadResult] = {}
        progress = [(0, 0)] * count
        went = False
        while len(results) + len(self.failures) < count:
            index, message = await self.inbox.get()
            kind = message[0]
            if index in results or index in self.failures:
                continue
            if kind == "ready":
                ready.add(index)
            elif kind == "progress":
                progress[index] = (int(message[1]), int(message[2]))
                if on_progress is not None:
                    on_progress(sum(p[0] for p in progress), sum(p[1] for p in progress))
            elif kind == "result":
                results[index] = message[1]
            elif kind == "error":
                self.failures[index] = f"load worker {index} failed: {message[1]}"
            elif kind == "eof":
                code = await asyncio.to_thread(self._exit_code, index)
                self.failures[index] = f"load worker {index} exited (code {code}) without a result"
            # The living start together once each is ready (a dead one waits for nobody).
            if not went and len(ready) + len(self.failures) == count and ready:
                went = True
                self._send_all(("go", time.monotonic() + START_MARGIN))
        if not results:
            raise ZcserveError(next(iter(self.failures.values())))
        return [
            results[index] if index in results else dead_worker_result(self.plans[index])
            for index in range(count)
        ]

    def _exit_code(self, index: int) -> int | None:
        process = self.processes[index]
        process.join(JOIN_TIMEOUT)
        return process.exitcode

    def _send_all(self, message: Message) -> None:
        for index in range(len(self.pipes)):
            self._send(index, message)

    def _send(self, index: int, message: Message) -> None:
        pipe = self.pipes[index]
        if pipe.closed or index in self.failures:
            return
        try:
            pipe.send(message)
        except OSError:
            pass  # that worker is gone; its EOF is reported by _drain

    async def _close(self, loop: asyncio.AbstractEventLoop, *, finished: bool) -> None:
        for pipe in self.pipes:
            if not pipe.closed:
                loop.remove_reader(pipe.fileno())
                pipe.close()
        await asyncio.to_thread(self._reap, JOIN_TIMEOUT if finished else 0.0)

    def _reap(self, patience: float) -> None:
        """Wait for workers that are done; end the others (only our own children)."""
        for process in self.processes:
            process.join(patience)
            if process.is_alive():
                process.terminate()
                process.join(JOIN_TIMEOUT)
            process.close()
