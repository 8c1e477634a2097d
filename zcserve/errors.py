"""One root for every error zcserve raises on purpose.

Protocol errors carry the HTTP status they map to (as h11's
``error_status_hint``), so the server never matches message strings.
"""

from __future__ import annotations


class ZcserveError(Exception):
    """Root of zcserve's own errors."""


class ConfigError(ZcserveError):
    """A flag or setting is invalid; the CLI prints it on one line and exits 2."""


class HttpError(ZcserveError):
    """A request that must be answered with ``status`` and then, usually, closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class TransferError(ZcserveError):
    """A body could not be sent in full; the connection must be closed."""


class FileShrankError(TransferError):
    """The file ran out of bytes before the announced Content-Length was sent."""


class SendStalledError(TransferError):
    """The peer stopped reading for longer than the send timeout."""


class RunError(ZcserveError):
    """A valid command failed while running (a child server died, a body came up
    short); the CLI prints it on one line and exits 1, not 2 as for bad usage."""
