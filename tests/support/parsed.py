"""What the request parser made, in a form two parses can be compared by."""

from __future__ import annotations

from zcserve.errors import HttpError
from zcserve.server.http import Request


def summary(item: Request | HttpError) -> tuple[object, ...]:
    """A request's fields, or an error's status."""
    if isinstance(item, HttpError):
        return ("error", item.status)
    return (item.method, item.target, item.version, dict(item.headers), item.keep_alive)
