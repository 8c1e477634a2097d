"""Several worker processes on one address: a supervisor, SO_REUSEPORT, restarts.

The supervisor binds first (so `--port 0` resolves to one real port) but never
listens: a bound, non-listening socket is not in the kernel's SO_REUSEPORT
selection, so every connection lands on a worker. Each worker binds the same
address with SO_REUSEPORT and runs an ordinary single-process server.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from zcserve.errors import ConfigError
from zcserve.server.config import ServerConfig
from zcserve.server.metrics import Metrics, MetricsEndpoint, parse_address, read_snapshots
from zcserve.server.sockio import bind, url_of

if TYPE_CHECKING:
    from zcserve.server.server import Announce

log = logging.getLogger("zcserve.workers")

READY_TIMEOUT = 15.0
"""Seconds a new worker has to start listening."""
RESTART_BACKOFF_MAX = 10.0
"""Longest wait before restarting a worker that keeps dying."""
STABLE_AFTER = 5.0
"""A worker that lived this long resets the back-off."""
EXIT_START_FAILED = 2
"""A worker's exit code when it could not start (and said why on its pipe)."""
PR_SET_PDEATHSIG = 1
"""prctl(2): the signal to receive when the parent dies (linux/prctl.h)."""


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def max_workers() -> int:
    """More workers than this only fight over the CPUs; a typo (`--workers 100000`)
    would otherwise fork until the machine stalls."""
    return max(MAX_WORKERS_FLOOR, MAX_WORKERS_PER_CPU * _usable_cpus())


MAX_WORKERS_PER_CPU = 4
MAX_WORKERS_FLOOR = 64


def worker_count(text: str) -> int:
    """`auto` is the number of CPUs this process may run on; otherwise a positive
    int up to `max_workers()`."""
    if text == "auto":
        return _usable_cpus()
    try:
        count = int(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a worker count; expected a positive number or auto"
        ) from None
    if count < 1:
        raise ValueError(f"{text!r} is not a worker count; expected a positive number or auto")
    if count > max_workers():
        raise ValueError(
            f"{count} workers is more than {max_workers()} "
            f"({MAX_WORKERS_PER_CPU} per CPU, at least {MAX_WORKERS_FLOOR})"
        )
    return count


@dataclasses.dataclass(frozen=True, slots=True)
class StartReport:
    """What a worker tells the supervisor once: listening, or why it could not."""

    error: str | None = None


def _worker_main(
    config: ServerConfig,
    report: Connection,
    supervisor_pid: int,
    supervisor_pipe: int,
    inherited: tuple[int, ...],
    snapshot_dir: str | None,
) -> None:
    from zcserve.server import server  # imported in the child: its loop is created there

    for fd in inherited:  # the supervisor's: held here they would outlive it
        os.close(fd)
    stop = server.stop_signals()
    for signum in stop:  # the supervisor's handlers; an ignored SIGHUP stays
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)  # blocked by `Supervisor._start`
    _exit_with_parent()
    if os.getppid() != supervisor_pid:  # it died before the request above took effect
        return
    try:
        server.run(
            config,
            announce=lambda url, metrics: report.send(StartReport()),
            reuse_port=True,
            snapshot_dir=snapshot_dir,
            supervisor_pipe=supervisor_pipe,
        )
    except ConfigError as exc:
        # The supervisor prints it, once: a worker prints nothing, not even a traceback.
        with contextlib.suppress(OSError):
            report.send(StartReport(str(exc)))
        sys.exit(EXIT_START_FAILED)


def _exit_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM (a graceful drain) when its parent dies,
    even by SIGKILL; elsewhere the supervisor pipe's end of file does the same."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(
            ctypes.c_int(PR_SET_PDEATHSIG),
            ctypes.c_ulong(signal.SIGTERM),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
    except (OSError, AttributeError):  # no libc, no prctl: the pipe still works
        pass


@dataclasses.dataclass
class _Slot:
    """One worker position: its current process and its restart history."""

    index: int
    process: BaseProcess | None = None
    report: Connection | None = None
    """The read end of the pipe the worker sends its `StartReport` on."""
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0

    def read_report(self) -> StartReport | None:
        """The worker's report if one has arrived; None if not (yet, or ever)."""
        try:
            if self.report is not None and self.report.poll():
                sent = self.report.recv()
                return sent if isinstance(sent, StartReport) else None
        except (EOFError, OSError):  # it exited without a word
            pass
        return None

    def close_report(self) -> None:
        if self.report is not None:
            self.report.close()
            self.report = None


class Supervisor:
    """Starts `workers` servers, restarts the ones that die, drains them all on
    SIGTERM, SIGINT or SIGHUP. A worker that cannot start fails the whole start-up."""

    def __init__(self, config: ServerConfig, workers: int) -> None:
        self.config = config
        self.workers = workers
        self._context = multiprocessing.get_context("fork")
        self._stopping = False
        self._slots = [_Slot(i) for i in range(workers)]
        self._metrics_dir: str | None = None
        self._inherited: tuple[int, ...] = ()
        self._signals: tuple[int, ...] = ()
        """The stop signals this process handles (`run`)."""
        """Descriptors of this process that a worker closes first thing."""
        self._pipe_read = -1
        """The read end of a pipe only this process writes to: workers see its end of
        file when this process is gone, however it died."""

    def _start(self, slot: _Slot, config: ServerConfig) -> None:
        slot.close_report()
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(
                config,
                writer,
                os.getpid(),
                self._pipe_read,
                self._inherited,
                self._metrics_dir,
            ),
            name=f"zcserve-worker-{slot.index}",
        )
        # The stop signals wait, blocked, until the new worker has its own handlers:
        # one arriving between the fork and then would reach this process's handler,
        # copied into the worker, and be lost there.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self._signals)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        writer.close()  # the worker's copy is the only one: later workers must not hold it
        slot.process, slot.report, slot.started = process, reader, time.monotonic()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self, announce: Announce) -> int:
        """Bind, start every worker, tell `announce` the real URLs, supervise."""
        from zcserve.server.server import stop_signals

        self._signals = stop_signals()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in self._signals}
        self._pipe_read, pipe_write = os.pipe()
        placeholder = endpoint = None
        try:
            # Bound but never listening: it holds the port (port 0 picks one for all
            # the workers) while the workers listen on it with SO_REUSEPORT.
            placeholder = bind(self.config.host, self.config.port, 1, reuse_port=True, listen=False)
            config = dataclasses.replace(self.config, port=placeholder.getsockname()[1])
            if self.config.metrics is not None:
                # Workers write snapshots; this process serves their sum.
                folder = self._metrics_dir = tempfile.mkdtemp(prefix="zcserve-metrics-")
                config = dataclasses.replace(config, metrics=None)
                endpoint = MetricsEndpoint(
                    parse_address(self.config.metrics),
                    lambda: Metrics.merged(read_snapshots(folder)).exposition(self.workers),
                )
                _refuse_serving_address(endpoint, placeholder)
            # A worker closes these first: the pipe's write end above all, or the
            # supervisor's death would never reach the workers as end of file.
            self._inherited = (pipe_write, placeholder.fileno()) + (
                (endpoint.fileno(),) if endpoint is not None else ()
            )
            for slot in self._slots:
                if self._stopping:  # a stop signal while starting: stop, announce nothing
                    return 0
                self._start(slot, config)
            if not self._wait_until_listening():
                return 0  # told to stop while starting: nothing was announced
            if endpoint is not None:
                endpoint.start()
            scheme = "https" if self.config.tls else "http"
            announce(url_of(placeholder, scheme), endpoint.url if endpoint is not None else None)
            self._supervise(config)
        finally:
            self._stop_all()
            if placeholder is not None:
                placeholder.close()
            if endpoint is not None:
                endpoint.stop()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
            for slot in self._slots:
                slot.close_report()
            os.close(pipe_write)
            os.close(self._pipe_read)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _wait_until_listening(self) -> bool:
        """Wait for every worker's report; False if told to stop meanwhile. A worker
        that reports an error, or dies first, is a `ConfigError` with its reason."""
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(self._slots)
        while waiting:
            if self._stopping:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConfigError(f"a worker did not start listening within {READY_TIMEOUT:g} s")
            handles: list[Connection | int] = []
            for slot in waiting:
                assert slot.report is not None and slot.process is not None
                handles += [slot.report, slot.process.sentinel]
            wait(handles, timeout=min(left, 0.2))
            for slot in list(waiting):
                assert slot.report is not None and slot.process is not None
                report = slot.read_report()
                if report is not None:
                    if report.error is not None:
                        raise ConfigError(report.error)
                    waiting.remove(slot)
                elif not slot.process.is_alive():
                    raise ConfigError(
                        f"worker {slot.index} exited with code {slot.process.exitcode}"
                        " before it was listening"
                    )
        return True

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
                    report = slot.read_report()  # a restarted worker's, if it failed
                    error = report.error if report is not None else None
                    log.warning(
                        "worker %d (pid %s) exited with %s%s; restarting in %.1fs",
                        slot.index,
                        process.pid,
                        process.exitcode,
                        f" ({error})" if error else "",
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


def _refuse_serving_address(endpoint: MetricsEndpoint, placeholder: socket.socket) -> None:
    """Metrics on the serving address would take the workers' port (the placeholder
    does not listen, so binding there succeeds): refuse it as a single process does."""
    host, port = endpoint.address
    serving_host, serving_port = placeholder.getsockname()[:2]
    wildcard = ("0.0.0.0", "::")
    if port == serving_port and (
        host == serving_host or host in wildcard or serving_host in wildcard
    ):
        raise ConfigError(f"cannot listen for metrics on {host}:{port}: that is the serving port")
