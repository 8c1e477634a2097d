"""Several worker processes on one address: a supervisor, SO_REUSEPORT, restarts.

The supervisor binds first (so `--port 0` resolves to one real port) but never
listens: a bound, non-listening socket is not in the kernel's SO_REUSEPORT
selection, so every connection lands on a worker. Each worker binds the same
address with SO_REUSEPORT and runs an ordinary single-process server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from zcserve.errors import ConfigError
from zcserve.server.config import ServerConfig
from zcserve.server.metrics import Metrics, MetricsEndpoint, parse_address, read_snapshots

if TYPE_CHECKING:
    from zcserve.server.server import Announce

log = logging.getLogger("zcserve.workers")

READY_TIMEOUT = 15.0
"""Seconds a new worker has to start listening."""
RESTART_BACKOFF_MAX = 10.0
"""Longest wait before restarting a worker that keeps dying."""
STABLE_AFTER = 5.0
"""A worker that lived this long resets the back-off."""


def worker_count(text: str) -> int:
    """`auto` is the number of CPUs this process may run on; otherwise a positive int."""
    if text == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    try:
        count = int(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a worker count; expected a positive number or auto"
        ) from None
    if count < 1:
        raise ValueError(f"{text!r} is not a worker count; expected a positive number or auto")
    return count


def _worker_main(
    config: ServerConfig, ready: multiprocessing.synchronize.Event, snapshot_dir: str | None
) -> None:
    from zcserve.server import server  # imported in the child: its loop is created there

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server.run(
        config,
        announce=lambda url, metrics: ready.set(),
        reuse_port=True,
        snapshot_dir=snapshot_dir,
    )


@dataclasses.dataclass
class _Slot:
    """One worker position: its current process and its restart history."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0


class Supervisor:
    """Starts `workers` servers, restarts the ones that die, drains them all on SIGTERM."""

    def __init__(self, config: ServerConfig, workers: int) -> None:
        self.config = config
        self.workers = workers
        self._context = multiprocessing.get_context("fork")
        self._stopping = False
        self._slots = [_Slot(i) for i in range(workers)]
        self._metrics_dir: str | None = None

    def _start(self, slot: _Slot, config: ServerConfig) -> multiprocessing.synchronize.Event:
        ready = self._context.Event()
        process = self._context.Process(
            target=_worker_main,
            args=(config, ready, self._metrics_dir),
            name=f"zcserve-worker-{slot.index}",
        )
        process.start()
        slot.process, slot.started = process, time.monotonic()
        return ready

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self, announce: Announce) -> int:
        """Bind, start every worker, tell `announce` the real URLs, supervise."""
        from zcserve.server.server import bind, url_of

        # Bound but never listening: it holds the port (port 0 picks one for all the
        # workers) while the workers listen on it with SO_REUSEPORT.
        placeholder = bind(self.config.host, self.config.port, 1, reuse_port=True, listen=False)
        config = dataclasses.replace(self.config, port=placeholder.getsockname()[1])
        endpoint = None
        if self.config.metrics is not None:
            # Workers write snapshots; this process serves their sum.
            folder = self._metrics_dir = tempfile.mkdtemp(prefix="zcserve-metrics-")
            config = dataclasses.replace(config, metrics=None)
            endpoint = MetricsEndpoint(
                parse_address(self.config.metrics),
                lambda: Metrics.merged(read_snapshots(folder)).exposition(self.workers),
            )
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            events = [self._start(slot, config) for slot in self._slots]
            deadline = time.monotonic() + READY_TIMEOUT
            for event in events:
                if not event.wait(max(0.0, deadline - time.monotonic())):
                    raise ConfigError("a worker did not start listening in time")
            scheme = "https" if self.config.tls else "http"
            if endpoint is not None:
                endpoint.start()
            announce(url_of(placeholder, scheme), endpoint.url if endpoint is not None else None)
            self._supervise(config)
        finally:
            self._stop_all()
            placeholder.close()
            if endpoint is not None:
                endpoint.stop()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _supervise(self, config: ServerConfig) -> None:
        while not self._stopping:
            sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
            wait(sentinels, timeout=0.2)
            now = time.monotonic()
            for slot in self._slots:
                process = slot.process
                if process is not None and not process.is_alive():
                    process.join()
                    self._forget_connections(process.pid)
                    lived = now - slot.started
                    slot.backoff = (
                        0.0
                        if lived > STABLE_AFTER
                        else min(RESTART_BACKOFF_MAX, max(0.1, slot.backoff * 2))
                    )
                    log.warning(
                        "worker %d (pid %s) exited with %s; restarting in %.1fs",
                        slot.index,
                        process.pid,
                        process.exitcode,
                        slot.backoff,
                    )
                    slot.process, slot.restart_at = None, now + slot.backoff
                if slot.process is None and now >= slot.restart_at and not self._stopping:
                    self._start(slot, config)

    def _forget_connections(self, pid: int | None) -> None:
        """A dead worker's counters still count; its open connections do not."""
        if self._metrics_dir is None:
            return
        path = os.path.join(self._metrics_dir, f"worker-{pid}.json")
        try:
            with open(path) as f:
                data = json.load(f)
            data["active_connections"] = 0
            with open(path, "w") as f:
                json.dump(data, f)
        except (OSError, ValueError):
            pass

    def _stop_all(self) -> None:
        running = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        for process in running:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace + 5.0
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
