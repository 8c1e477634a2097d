"""The access log: Common Log Format, Combined (with referer and user agent) or
JSON lines (with the time taken and the copy strategy). Off by default so
benchmarks time the copy path, not the logging.

A log that cannot be written (a full disk, a closed pipe) costs log lines, never
responses: the first failure is warned about once, each lost line is counted by
the caller, and serving goes on."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal, TextIO, get_args

from zcserve.errors import ConfigError
from zcserve.server.http import Request

log = logging.getLogger("zcserve")

AccessLogFormat = Literal["common", "combined", "json"]
ACCESS_LOG_FORMATS: tuple[str, ...] = get_args(AccessLogFormat)

_QUOTED_ESCAPES = {
    c: f"\\x{c:02X}" for c in (*range(0x20), *range(0x7F, 0x100), ord('"'), ord("\\"))
}
"""As nginx escapes a logged field: every byte outside printable ASCII, and a quote
or a backslash, as `\\xHH`. A control byte could forge a line, a C1 byte (0x9B is
CSI) acts on a terminal that tails the log, and bytes past 0x7F are not text we can
vouch for. Fields are decoded as latin-1, so each character is one byte sent."""


def _quoted(value: str | None) -> str:
    return "-" if value is None else value.translate(_QUOTED_ESCAPES)


class AccessLog:
    """Writes one CLF line per response to a file or stdout; a no-op when disabled."""

    def __init__(
        self, out: TextIO | None, *, owned: bool, line_format: AccessLogFormat = "common"
    ) -> None:
        self._out = out
        self._owned = owned
        self.format = line_format
        self.timed = out is not None and line_format == "json"
        """Callers measure each request's time only for a log that writes it."""
        self.on = out is not None
        """Callers skip building a line's arguments when the log is off."""
        self.failed = False
        """True once a line could not be written (and the warning was logged)."""

    @classmethod
    def open(cls, target: str | None, line_format: AccessLogFormat = "common") -> AccessLog:
        """`None`: disabled; "-": standard output; anything else: a file appended to."""
        if target is None:
            return cls(None, owned=False, line_format=line_format)
        if target == "-":
            return cls(sys.stdout, owned=False, line_format=line_format)
        try:
            out = open(target, "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise ConfigError(f"cannot open the access log {target!r}: {exc.strerror}") from None
        return cls(out, owned=True, line_format=line_format)

    def write(
        self,
        peer: str,
        request: Request | None,
        status: int,
        size: int,
        seconds: float | None = None,
        strategy: str | None = None,
    ) -> bool:
        """Write one line; False when it could not be written (it is then lost).

        `size` is the body bytes actually sent, fewer than planned when the client
        left mid-download; `seconds` and `strategy` are written by the JSON format."""
        if self._out is None:
            return True
        if self.format == "json":
            text = _json_line(peer, request, status, size, seconds, strategy)
        else:
            text = self._clf_line(peer, request, status, size)
        try:
            self._out.write(text)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._failed(exc)
            return False
        return True

    def _clf_line(self, peer: str, request: Request | None, status: int, size: int) -> str:
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        if request is None:
            line = "-"
        else:
            target = request.target.decode("latin-1").translate(_QUOTED_ESCAPES)
            line = f"{request.method} {target} HTTP/{request.version}"
        common = f'{peer} - - [{stamp}] "{line}" {status} {size or "-"}'
        if self.format == "common":
            return common + "\n"
        headers = request.headers if request is not None else {}
        referer = _quoted(headers.get("referer"))
        agent = _quoted(headers.get("user-agent"))
        return f'{common} "{referer}" "{agent}"\n'

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


def _json_line(
    peer: str,
    request: Request | None,
    status: int,
    size: int,
    seconds: float | None,
    strategy: str | None,
) -> str:
    """One JSON object per line; strings are JSON-escaped, so no header can forge one."""
    headers = request.headers if request is not None else {}
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "remote": peer,
        "method": request.method if request is not None else None,
        "target": request.target.decode("latin-1") if request is not None else None,
        "protocol": f"HTTP/{request.version}" if request is not None else None,
        "status": status,
        "bytes": size,
        "referer": headers.get("referer"),
        "user_agent": headers.get("user-agent"),
        "duration_us": None if seconds is None else round(seconds * 1e6),
        "strategy": strategy,
    }
    return json.dumps(record, separators=(",", ":")) + "\n"
