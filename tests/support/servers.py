"""The two ways a test starts zcserve: `start_server`, in this process on a thread of
its own, and `start_child`, as a `zcserve serve` child process.

In-process, so tests can wrap os.sendfile and friends and count this process's
descriptors; in a thread, so the test itself can use plain blocking sockets; on
either loop, so every test runs under uvloop and asyncio alike. A child when the
test needs the real command: its flags and variables, signals, workers, its own
descriptor limit, its stderr. Both bind 127.0.0.1 port 0 and return once the server
listens (the child's `--ready-json` line read by zcserve.bench.child, the one
helper the bench uses too); both are context managers that stop the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from tests.support.timing import PROCESS_DEADLINE, READY_TIMEOUT, wait_for
from zcserve.bench.child import ServeChild, start_serve
from zcserve.errors import RunError
from zcserve.runtime import loop_factory
from zcserve.server.config import ServerConfig
from zcserve.server.server import Server
from zcserve.server.sockio import bind

# In this process ------------------------------------------------------------------------


class ServerThread:
    """An in-process zcserve on its own loop in a thread: `start()`, `stop()`, or use it
    as a context manager; `port` is the real bound port."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.listener = bind(config.host, config.port, config.backlog)
        self.port: int = self.listener.getsockname()[1]
        self.server = Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"zcserve-{self.port}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory(self.config.loop)) as runner:
                runner.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._ready.set)
        await self.server.serve(self.listener)

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT):
            raise RuntimeError("server thread did not start")
        if self.error is not None:
            raise self.error
        return self

    def begin_shutdown(self) -> None:
        """Start the server's graceful shutdown without waiting for it."""
        if self._loop is not None and self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self.server.shutdown)
            except RuntimeError:  # the loop has closed: the shutdown is over
                pass

    def stop(self) -> None:
        self.begin_shutdown()
        self._thread.join(READY_TIMEOUT + self.config.grace)
        if self._thread.is_alive():
            raise RuntimeError("server thread did not stop")
        if self.error is not None:
            raise self.error

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(**overrides: Any) -> ServerThread:
    """A started in-process server: `ServerConfig` on port 0 with `overrides`.
    `with start_server(...) as server:` stops it after the block."""
    config = dataclasses.replace(ServerConfig(port=0, grace=2.0), **overrides)
    return ServerThread(config).start()


# In a child process ---------------------------------------------------------------------


def zcserve_command(*args: str) -> list[str]:
    """`python -m zcserve ARGS` with this interpreter, for a command run to its end."""
    return [sys.executable, "-m", "zcserve", *args]


class Child:
    """A `zcserve serve` child from `start_child`: what its ready line said, its log
    (its stderr, in a file that can be read while it runs), and its descriptors,
    connections and memory. A context manager: leaving the block stops it by its PID
    unless the test stopped it already."""

    def __init__(self, serve: ServeChild, log_path: Path, *, owns_log: bool, stop_signal: int):
        self.serve = serve
        self.log_path = log_path
        self.process = psutil.Process(serve.pid)
        self._owns_log = owns_log
        self._stop_signal = stop_signal
        self._final_log: str | None = None

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.serve.proc

    @property
    def pid(self) -> int:
        return self.serve.pid

    @property
    def url(self) -> str:
        return self.serve.url

    @property
    def port(self) -> int:
        return self.serve.port

    @property
    def metrics_url(self) -> str | None:
        return self.serve.metrics_url

    @property
    def lines(self) -> list[str]:
        """The human lines it printed before its ready line."""
        return self.serve.lines

    @property
    def announce(self) -> str:
        """Its first human line ("zcserve: serving ROOT on URL (...)")."""
        return self.serve.announce

    @property
    def stdout(self) -> str:
        """What it printed after its ready line; filled in when it stops."""
        return self.serve.stdout

    def log(self) -> str:
        """Its stderr so far; all of it once stopped."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def fds(self) -> int:
        return self.process.num_fds()

    def connections(self) -> int:
        """TCP connections the server holds, its listening socket aside."""
        held = self.process.net_connections(kind="tcp")
        return sum(1 for conn in held if conn.status != psutil.CONN_LISTEN)

    def idle_fds(self, timeout: float = 5.0) -> int:
        """The descriptor count once the server holds no connection."""
        wait_for(lambda: self.connections() == 0, timeout, "server connections all closed")
        return self.fds()

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def stop(self, signum: int | None = None, timeout: float = PROCESS_DEADLINE) -> int:
        """Signal the child (SIGTERM, or the `stop_signal` it was started with) unless it
        has exited, wait for it (SIGKILL after `timeout`), and return its exit code."""
        code = self.serve.stop(self._stop_signal if signum is None else signum, timeout)
        if self._final_log is None:
            self._final_log = self.log_path.read_text(errors="replace")
            if self._owns_log:
                self.log_path.unlink(missing_ok=True)
        return code

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_child(
    *args: str,
    port: str | None = "0",
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    nofile: int | None = None,
    preexec_fn: Callable[[], None] | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Child:
    """Start `zcserve serve ARGS --port PORT` (no --port with `port=None`, for tests of
    the flag's other spellings) and return once its ready line says where it listens.

    Its stderr goes to a file under `log_dir` (a temporary one without), `env` is
    added to this process's environment, `nofile` caps its descriptors (soft and
    hard), `preexec_fn` runs in the child before it starts, and `stop_signal` is
    what stops it at the end of a `with` block. A child that exits or is not ready
    in time fails the test with what it printed."""
    if log_dir is None:
        fd, name = tempfile.mkstemp(prefix="zcserve-child-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    else:
        log_path = log_dir / f"zcserve-{time.monotonic_ns()}.log"
    limit = _limit_nofile(nofile, preexec_fn)
    with open(log_path, "w") as log_file:
        try:
            started = start_serve(
                [*args, *(() if port is None else ("--port", port))],
                env=None if env is None else {**os.environ, **env},
                stderr=log_file,
                preexec_fn=limit,
            )
        except RunError as exc:
            printed = log_path.read_text(errors="replace")
            if log_dir is None:
                log_path.unlink(missing_ok=True)
            raise AssertionError(f"{exc}\n{printed}") from None
    return Child(started, log_path, owns_log=log_dir is None, stop_signal=stop_signal)


def _limit_nofile(limit: int | None, then: Callable[[], None] | None) -> Callable[[], None] | None:
    """The child's preexec_fn: cap RLIMIT_NOFILE at `limit`, then run `then`."""
    if limit is None:
        return then

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        if then is not None:
            then()

    return apply
