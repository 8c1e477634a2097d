"""Start `zcserve` as a child process and read the URL it announces; stop it by PID."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ANNOUNCE = re.compile(r"on (http://\S+) \(")


@dataclass
class Child:
    proc: subprocess.Popen[str]
    url: str
    announce: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def zcserve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "zcserve", *args]


@contextmanager
def serving(*args: str, stop_signal: int = signal.SIGTERM) -> Iterator[Child]:
    """Run `zcserve serve ARGS --port 0` until the block ends, then signal it and wait."""
    proc = subprocess.Popen(
        zcserve_command("serve", *args, "--port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = ANNOUNCE.search(line)
        if match is None:
            raise AssertionError(f"no announce line: {line!r} {proc.communicate(timeout=10)}")
        yield Child(proc, match.group(1), line)
    finally:
        if proc.poll() is None:
            proc.send_signal(stop_signal)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
