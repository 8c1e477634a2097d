"""Start `zcserve` as a child process and read the URL it announces; stop it by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from zcserve.bench.child import ServeChild, start_serve


def zcserve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "zcserve", *args]


@contextmanager
def serving(*args: str, stop_signal: int = signal.SIGTERM) -> Iterator[ServeChild]:
    """Run `zcserve serve ARGS --port 0` until the block ends, then signal it and wait.

    Its stderr is a pipe, read when it stops (`child.stderr`)."""
    child = start_serve([*args, "--port", "0"], stderr=subprocess.PIPE)
    try:
        yield child
    finally:
        child.stop(stop_signal, timeout=20.0)
