"""The planner chosen by start-up flags: `--header`, `--cors`, `--max-ranges` and
`--precompressed`.

Chosen once, at start-up: with none of them set the planner is `plan_reply` itself,
so a plain GET does no extra work. With one, the header lines they add are
rendered once (`AddedHeaders`) and go into every head as it is rendered.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from zcserve.errors import ConfigError
from zcserve.server.files import MAX_RANGES, Resolver
from zcserve.server.http import Request, render_head
from zcserve.server.precompressed import VARY, plan_with_sidecars
from zcserve.server.respond import AddedHeaders, Reply, plan_reply

Planner = Callable[[Request, Resolver], Reply]
"""Turns a request into a reply: `plan_reply`, or it with headers added."""

_token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
"""A header name (RFC 9110 5.6.2 token)."""
_field_value = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?").fullmatch
"""A header value: visible ASCII, inner spaces and tabs; no CR, LF or NUL."""

SET_BY_THE_SERVER = frozenset(
    ("content-length", "content-range", "content-type", "transfer-encoding", "connection",
     "keep-alive", "upgrade", "trailer", "te", "date", "server")
)  # fmt: skip
"""Headers zcserve writes itself or that frame the message: a second copy from
--header would make the response ambiguous (RFC 9112 6.3), so they are refused."""

CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "Content-Range, Content-Length, ETag, Accept-Ranges"),
)
"""On every answer when --cors is on: any page may read the files, and a script
may read the headers it needs to resume or seek (Range) and to cache (ETag)."""
PREFLIGHT_MAX_AGE = 7200
"""Seconds a browser may cache a preflight answer; Chromium's own cap."""


def parse_header(text: str) -> tuple[str, str]:
    """`"Name: value"` from --header as (name, value), or ConfigError saying why."""
    name, colon, value = text.partition(":")
    value = value.strip(" \t")
    if not colon:
        raise ConfigError(f"--header {text!r}: expected 'Name: value'")
    if not _token(name):
        raise ConfigError(f"--header {text!r}: {name!r} is not a header name")
    if not _field_value(value):
        raise ConfigError(f"--header {text!r}: the value must be printable ASCII, without CR or LF")
    if name.lower() in SET_BY_THE_SERVER:
        raise ConfigError(f"--header {text!r}: zcserve sets {name} itself")
    return name, value


def _render(headers: Sequence[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


def make_planner(
    headers: Sequence[str] = (),
    *,
    cors: bool = False,
    max_ranges: int = MAX_RANGES,
    precompressed: tuple[str, ...] = (),
) -> Planner:
    """The planner for these flags; `plan_reply` itself when none is on. Added
    headers are rendered here once, and `plan_reply` puts them into each head
    before it is cached: no head is reopened per request."""
    if not headers and not cors and not precompressed:
        if max_ranges == MAX_RANGES:
            return plan_reply
        return functools.partial(plan_reply, max_ranges=max_ranges)
    every = _render([VARY]) if precompressed else b""
    cors_lines = _render(CORS_HEADERS) if cors else b""
    # --header goes on success and redirects (304 included), as nginx's add_header
    # does; CORS goes on errors too, so a script can read why a fetch failed.
    added = AddedHeaders(
        success=every + _render([parse_header(text) for text in headers]) + cors_lines,
        error=every + cors_lines,
    )
    base: Planner = functools.partial(plan_reply, max_ranges=max_ranges, added=added)
    if precompressed:
        base = functools.partial(plan_with_sidecars, encodings=precompressed, plan=base)
    if not cors:
        return base

    def plan_with_preflight(request: Request, root: Resolver) -> Reply:
        if request.method == "OPTIONS":
            preflight = preflight_reply(request)
            if preflight is not None:
                return preflight
        return base(request, root)

    return plan_with_preflight


def preflight_reply(request: Request) -> Reply | None:
    """204 to a CORS preflight (an OPTIONS with Origin and Access-Control-Request-Method),
    allowing GET and HEAD and echoing the requested headers when each is a valid
    name; None for any other OPTIONS, which then gets today's 405."""
    asked = request.headers
    if "origin" not in asked or "access-control-request-method" not in asked:
        return None
    headers = [
        *CORS_HEADERS,
        ("Access-Control-Allow-Methods", "GET, HEAD"),
        ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE)),
    ]
    requested = [
        name.strip().lower() for name in asked.get("access-control-request-headers", "").split(",")
    ]
    requested = [name for name in requested if name]
    if requested and all(_token(name) for name in requested):
        headers.append(("Access-Control-Allow-Headers", ", ".join(requested)))
    # No Content-Length: a 204 must not carry one (RFC 9110 8.6).
    head = render_head(204, headers, keep_alive=request.keep_alive, version=request.version)
    return Reply(204, head, request.keep_alive)
