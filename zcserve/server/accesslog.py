"""The access log, in Common Log Format. Off by default so benchmarks time the
copy path, not the logging."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from zcserve.errors import ConfigError
from zcserve.server.http import Request


class AccessLog:
    """Writes one CLF line per response to a file or stdout; a no-op when disabled."""

    def __init__(self, out: TextIO | None, *, owned: bool) -> None:
        self._out = out
        self._owned = owned
        self.on = out is not None
        """Callers skip building a line's arguments when the log is off."""

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

    def write(self, peer: str, request: Request | None, status: int, size: int) -> None:
        if self._out is None:
            return
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        if request is None:
            line = "-"
        else:
            target = request.target.decode("latin-1").replace('"', "%22")
            line = f"{request.method} {target} HTTP/{request.version}"
        self._out.write(f'{peer} - - [{stamp}] "{line}" {status} {size or "-"}\n')

    def close(self) -> None:
        if self._out is not None and self._owned:
            self._out.close()
        self._out = None
        self.on = False
