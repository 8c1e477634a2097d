"""The access log, in Common Log Format. Off by default so benchmarks time the
copy path, not the logging.

A log that cannot be written (a full disk, a closed pipe) costs log lines, never
responses: the first failure is warned about once, each lost line is counted by
the caller, and serving goes on."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from zcserve.errors import ConfigError
from zcserve.server.http import Request

log = logging.getLogger("zcserve")


class AccessLog:
    """Writes one CLF line per response to a file or stdout; a no-op when disabled."""

    def __init__(self, out: TextIO | None, *, owned: bool) -> None:
        self._out = out
        self._owned = owned
        self.on = out is not None
        """Callers skip building a line's arguments when the log is off."""
        self.failed = False
        """True once a line could not be written (and the warning was logged)."""

    @classmethod
    def open(cls, target: str | None) -> AccessLog:
        """`None`: disabled; "-": standard output; anything else: a file appended to."""
        if target is None:
            return cls(None, owned=False)
        if target == "-":
            return cls(sys.stdout, owned=False)
        try:
            out = open(target, "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise ConfigError(f"cannot open the access log {target!r}: {exc.strerror}") from None
        return cls(out, owned=True)

    def write(self, peer: str, request: Request | None, status: int, size: int) -> bool:
        """Write one line; False when it could not be written (it is then lost)."""
        if self._out is None:
            return True
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        if request is None:
            line = "-"
        else:
            target = request.target.decode("latin-1").replace('"', "%22")
            line = f"{request.method} {target} HTTP/{request.version}"
        try:
            self._out.write(f'{peer} - - [{stamp}] "{line}" {status} {size or "-"}\n')
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: Exception) -> None:
        if not self.failed:
            self.failed = True
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("access log: cannot write (%s); lines are lost, serving goes on", reason)

    def close(self) -> None:
        """Close the file; lines still buffered and unwritable are lost, quietly."""
        out, self._out = self._out, None
        self.on = False
        if out is None or not self._owned:
            return
        try:
            out.close()
        except (OSError, ValueError) as exc:
            self._failed(exc)
