"""Start `zcserve serve` as a child process, learn where it listens, and stop it.

Bench, ceiling, compare and the tests all go through this one helper, so the way
a child is started (`--ready-json`, read with a deadline) and stopped (by its own
PID, SIGKILL only if it lingers) is written once. `ServerProcess` adds what the
bench reads of the child: its CPU, its peak RSS and its --metrics counters.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import psutil

from zcserve.errors import RunError

READY_TIMEOUT = 30.0
"""Seconds a child may take to print its ready line (a loaded CI machine is slow)."""
STOP_TIMEOUT = 30.0
"""Seconds a signalled child may take to drain and exit before it is killed."""

Stderr = int | IO[Any] | None
"""Where the child's stderr goes: inherited (None), subprocess.PIPE/DEVNULL, or a file."""


class ServeChild:
    """A running `zcserve serve` child and what its ready line said.

    A context manager: leaving the block stops the child (see `stop`)."""

    def __init__(
        self, proc: subprocess.Popen[str], ready: dict[str, Any], lines: list[str]
    ) -> None:
        self.proc = proc
        self.ready = ready
        """The parsed `--ready-json` line."""
        self.lines = lines
        """The human lines printed before the ready line, without their newlines."""
        self.stdout = ""
        """What the child printed after its ready line; filled in by `stop`."""
        self.stderr = ""
        """Its stderr when that is a pipe; filled in by `stop`."""
        self._stopped = False

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    @property
    def metrics_url(self) -> str | None:
        value = self.ready.get("metrics_url")
        return None if value is None else str(value)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None, self.url
        return port

    @property
    def announce(self) -> str:
        """The first human line ("zcserve: serving ROOT on URL (...)"), for wording tests."""
        return self.lines[0] if self.lines else ""

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the child unless it has exited, wait for it, keep what it still printed,
        and return its exit code. Later calls only return the code."""
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        out, err = stop_child(self.proc, timeout, signum)
        self.stdout += out
        self.stderr += err
        return self.proc.returncode

    def __enter__(self) -> ServeChild:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()  # also when the caller waited for it: its pipes still need closing


def serve_command(args: Sequence[str]) -> list[str]:
    """`python -m zcserve serve ARGS --ready-json` with this interpreter."""
    return [sys.executable, "-m", "zcserve", "serve", *args, "--ready-json"]


def start_serve(
    args: Sequence[str],
    *,
    cpus: Collection[int] | None = None,
    env: Mapping[str, str] | None = None,
    stderr: Stderr = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = READY_TIMEOUT,
) -> ServeChild:
    """Start `zcserve serve ARGS --ready-json` and return once it is listening.

    `cpus` pins the child (and the workers it forks) to those CPUs. If it exits or
    is not ready within `timeout` seconds, it is stopped and `RunError` says, on one
    line, what it printed (its stderr too when that is a pipe)."""
    proc = subprocess.Popen(
        serve_command(args),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=None if env is None else dict(env),
        preexec_fn=preexec_fn,
    )
    if cpus is not None:
        try:
            os.sched_setaffinity(proc.pid, cpus)
        except ProcessLookupError:
            pass  # it died already; reading its output says why
    lines: list[str] = []
    try:
        ready = _read_until_ready(proc, lines, timeout)
    except (TimeoutError, EOFError) as exc:
        if isinstance(exc, EOFError):
            try:  # it closed its stdout: let it finish exiting to get its code
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        out, err = stop_child(proc, timeout=5.0)
        printed = [*lines, *out.splitlines(), *err.splitlines()]
        silent = "no output" if stderr == subprocess.PIPE else "no output on stdout"
        said = " | ".join(line.strip() for line in printed if line.strip()) or silent
        if isinstance(exc, EOFError):
            why = f"exited with code {proc.returncode} before it was ready"
        else:
            why = f"was not ready within {timeout:g} s"
        raise RunError(f"zcserve serve {why}: {said}") from None
    except BaseException:
        stop_child(proc, timeout=5.0)
        raise
    return ServeChild(proc, ready, lines)


def _read_until_ready(
    proc: subprocess.Popen[str], lines: list[str], timeout: float
) -> dict[str, Any]:
    """Read stdout lines into `lines` until the JSON ready line, which is returned.

    Bytes are read one at a time from the descriptor, so nothing printed after the
    ready line is taken away from whoever reads `proc.stdout` next; raises
    TimeoutError or EOFError."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError
            byte = os.read(fd, 1)
            if not byte:
                if line:
                    lines.append(line.decode(errors="replace"))
                raise EOFError
            if byte != b"\n":
                line += byte
                continue
            text = line.decode(errors="replace")
            line.clear()
            ready = _ready(text)
            if ready is not None:
                return ready
            lines.append(text)


def _ready(line: str) -> dict[str, Any] | None:
    """The ready line's fields, or None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("event") == "ready" and "url" in data:
        return data
    return None


def stop_child(
    proc: subprocess.Popen[str], timeout: float = STOP_TIMEOUT, signum: int = signal.SIGTERM
) -> tuple[str, str]:
    """Signal a child we started (by its PID), SIGKILL it if it lingers, close its pipes.

    Its pipes are drained while it exits, so a child blocked on a full pipe cannot
    look hung. Returns what was left on its stdout and stderr ("" if not piped)."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        try:  # a grandchild may still hold the pipes open; do not wait on it for long
            out, err = proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            out, err = "", ""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return out or "", err or ""


class ServerProcess:
    """`zcserve serve` in a child process, pinned to `cpus`, watched for CPU and peak
    RSS, its --metrics listener scraped for what it sent and how many connections
    are open."""

    def __init__(self, args: Sequence[str], cpus: Collection[int] | None) -> None:
        # The server's own counters say exactly how many file bytes it sent.
        self.child = start_serve([*args, "--port", "0", "--metrics", "127.0.0.1:0"], cpus=cpus)
        self.proc = self.child.proc
        self.ps = psutil.Process(self.child.pid)
        self.url = self.child.url
        metrics_url = self.child.metrics_url
        if metrics_url is None:
            self.stop()
            raise RunError("zcserve serve started without its --metrics listener")
        self.metrics_url = metrics_url

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def _scrape(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=30) as response:
                text = response.read().decode()
        except OSError as exc:
            code = self.proc.poll()
            state = "running" if code is None else f"exited with code {code}"
            message = f"cannot read {self.metrics_url} (zcserve serve {state}): {exc}"
            raise RunError(message) from None
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                family = name.split("{", 1)[0]
                samples[family] = samples.get(family, 0.0) + float(value)
        return samples

    def bytes_written(self) -> int:
        """File bytes the server has sent, by every strategy (its metrics counter)."""
        return int(self._scrape().get("zcserve_sent_bytes_total", 0))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the connections the load generator dropped are closed and counted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._scrape().get("zcserve_active_connections", 0) == 0:
                return
            time.sleep(0.05)

    @contextmanager
    def watch_rss(self) -> Iterator[list[float]]:
        """Sample RSS every 50 ms while the block runs; yields [peak MB] filled at exit."""
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], self.ps.memory_info().rss / 1e6)
                except psutil.Error:
                    return
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield peak
        finally:
            stop.set()
            sampler.join()

    def stop(self) -> None:
        self.child.stop()


@contextmanager
def serving(args: Sequence[str], cpus: Collection[int] | None) -> Iterator[ServerProcess]:
    """A `ServerProcess` for the block, stopped at its end."""
    server = ServerProcess(args, cpus)
    try:
        yield server
    finally:
        server.stop()
