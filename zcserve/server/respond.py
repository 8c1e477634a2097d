"""Decide the response to one request: status, head bytes, and what body follows.

This is where HTTP semantics meet the file system; it opens files (through
`Root`) but never touches a socket. The server sends `Reply.head`, then either
`Reply.body` or `Reply.count` bytes of `Reply.file` through the copy strategy.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from urllib.parse import quote

from zcserve.errors import HttpError
from zcserve.server.files import (
    MAX_RANGES,
    WHOLES_HELD,
    ByteRange,
    Kind,
    OpenedFile,
    Precondition,
    RangeKind,
    Resolved,
    Resolver,
    if_range_matches,
    parse_range,
    parse_ranges,
    preconditions,
)
from zcserve.server.http import (
    ALLOWED_METHODS,
    Request,
    current_http_date,
    error_body,
    error_response,
    http_date,
    render_head,
)
from zcserve.server.listing import ListingQuery, RenderedPage, parse_query

LISTING_TRIES = 3
"""Renderings of one listing request before it gets 503: a folder that changes
between its rendering and the next plan is rendered again."""
_RANGE_OR_CONDITIONAL = frozenset(
    ("range", "if-match", "if-unmodified-since", "if-none-match", "if-modified-since")
)
"""Request headers that can change a whole-file 200 (If-Range matters only with Range)."""

_QUERY_SAFE = "/?:@!$&'()*+,;=-._~%"
"""Kept as sent in a redirect's query (RFC 3986 query characters, escapes included);
anything else, a space or a byte past ASCII, is percent-encoded, never echoed raw."""


@dataclass(slots=True)
class Reply:
    """A planned response. When `file` is set, the caller must close it."""

    status: int
    head: bytes
    keep_alive: bool
    body: bytes = b""
    file: OpenedFile | None = None
    offset: int = 0
    count: int = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass(slots=True)
class WholeReply(Reply):
    """A whole cached file's 200, its head the one the cache entry keeps for this
    Date second: a byte-identical request gets the same answer while the entry is
    current (`HttpConnection._answer_repeat`)."""


@dataclass(slots=True)
class MemoryReply(Reply):
    """A whole answer from the memory cache: `head` holds the head and the body,
    made once per Date second, so no request copies the body; `count` is the
    body's length. Like a `WholeReply`, it holds for a byte-identical request."""


@dataclass(slots=True)
class MultipartReply(Reply):
    """A 206 multipart/byteranges reply: each part's head (`parts[i][0]`), then
    `parts[i][2]` bytes of `file` from `parts[i][1]`, then `tail`. `count` is the
    whole body's length."""

    parts: tuple[tuple[bytes, int, int], ...] = ()
    tail: bytes = b""


class _Owned:
    """The planned file, closed when planning ends unless a reply took it: every
    way out of `plan_reply` but one (a 304, a 416, HEAD, an error) closes it."""

    __slots__ = ("file",)

    def __init__(self, file: OpenedFile) -> None:
        self.file: OpenedFile | None = file

    def __enter__(self) -> _Owned:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.file is not None:
            self.file.close()

    def hand_over(self, reply: Reply) -> Reply:
        """`reply` now owns the file, if it carries it."""
        if reply.file is not None:
            self.file = None
        return reply


@dataclass(frozen=True, slots=True)
class AddedHeaders:
    """Header lines start-up flags add (--header, --cors, --precompressed's Vary),
    rendered once, and rendered into each head before it is cached."""

    success: bytes = b""
    """On answers below 400: --header's, as nginx's add_header, and CORS."""
    error: bytes = b""
    """On errors: CORS, so a script can read why a fetch failed."""

    def lines(self, status: int) -> bytes:
        return self.success if status < 400 else self.error


NO_HEADERS = AddedHeaders()


def error_reply(
    error: HttpError, request: Request | None = None, added: AddedHeaders = NO_HEADERS
) -> Reply:
    """A short plain-text error. The connection stays open only for a 403, 404, 405
    or 412, where the request itself was well-formed."""
    keep = request is not None and request.keep_alive and error.status in (403, 404, 405, 412)
    version = request.version if request is not None else "1.1"
    head = error_response(
        error.status, keep_alive=keep, head_only=True, version=version, extra=added.error
    )
    body = b"" if request is not None and request.method == "HEAD" else error_body(error.status)
    return Reply(error.status, head, keep, body)


def plan_reply(
    request: Request,
    root: Resolver,
    max_ranges: int = MAX_RANGES,
    added: AddedHeaders = NO_HEADERS,
) -> Reply:
    """The reply to `request` for files under `root`; errors become error replies.
    A Range of more than `max_ranges` ranges gets the whole file; `added` header
    lines go into every head."""
    try:
        # Each field read once (a NamedTuple read goes through a descriptor): the reads
        # saved pay for the header check below.
        method = request.method
        path = request.path
        if method not in ALLOWED_METHODS:
            raise HttpError(405, f"method {method} not allowed")
        if not path.startswith(b"/"):
            raise HttpError(400, "request target must be a path")
        file = root.cached(path)
        if file is None:
            resolved = root.resolve(path)
            file = resolved.file
            if file is None:
                return _not_a_file(resolved, request, root, added)
        keep = request.keep_alive
        head_only = method == "HEAD"
        asked = request.headers
        version = request.version
        if file.heads is not None and _RANGE_OR_CONDITIONAL.isdisjoint(asked):
            # The common case, a whole cached file: its head is rendered once per second.
            # isdisjoint walks the request's (few) header names, not the five it holds.
            cached = file.heads.get((keep, version))
            date = current_http_date()
            if cached is not None and cached[0] is date:
                head = cached[1]
            else:
                head = _whole_file_head(file, file.heads, keep, version, date, added.success)
            if head_only or file.size == 0:
                file.close()
                return Reply(200, head, keep)
            body = file.body
            if body is not None and (wholes := file.wholes) is not None:
                # Held by the memory cache: one send of one object, made once a second.
                whole = wholes.get((keep, version))
                if whole is None or whole[0] is not date:
                    if len(wholes) >= WHOLES_HELD:
                        wholes.clear()
                    whole = wholes[(keep, version)] = (date, head + body)
                file.close()
                return MemoryReply(200, whole[1], keep, b"", None, 0, len(body))
            return WholeReply(200, head, keep, b"", file, 0, file.size)  # positional: faster
        with _Owned(file) as owned:
            validators = [("Last-Modified", http_date(file.mtime)), ("ETag", file.etag)]
            if file.encoding:  # a sidecar: its answers carry (or, for 304, stand for) it
                validators.append(("Content-Encoding", file.encoding))
            precondition = preconditions(asked, file)
            if precondition is Precondition.FAILED:
                raise HttpError(412, "precondition failed")
            if precondition is Precondition.NOT_MODIFIED:
                head = render_head(
                    304, validators, keep_alive=keep, version=version, extra=added.success
                )
                return Reply(304, head, keep)
            range_header = asked.get("range")
            byte_range = parse_range(range_header, file.size)
            if byte_range.kind is RangeKind.FULL and range_header and "," in range_header:
                ranges = parse_ranges(range_header, file.size, max_ranges)
                if len(ranges) > 1 and if_range_matches(asked.get("if-range"), file):
                    return owned.hand_over(
                        _multipart(request, file, ranges, validators, head_only, added)
                    )
                byte_range = ranges[0]  # whole, unsatisfiable, or merged into one
            if byte_range.kind is not RangeKind.FULL and not if_range_matches(
                asked.get("if-range"), file
            ):
                byte_range = parse_range(None, file.size)
            if byte_range.kind is RangeKind.UNSATISFIABLE:
                # Plain text: no validators or Content-Encoding of a body it lacks.
                body = b"416 Range Not Satisfiable\n"
                headers_416 = [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Content-Range", f"bytes */{file.size}"),
                ]
                return _simple(416, headers_416, body, request, added)
            common = [("Content-Type", file.content_type), ("Accept-Ranges", "bytes"), *validators]
            if byte_range.kind is RangeKind.PARTIAL:
                status, offset, count = 206, byte_range.start, byte_range.length
                common.append(
                    ("Content-Range", f"bytes {byte_range.start}-{byte_range.end}/{file.size}")
                )
            else:
                status, offset, count = 200, 0, file.size
            common.append(("Content-Length", str(count)))
            head = render_head(
                status, common, keep_alive=keep, version=version, extra=added.success
            )
            if head_only or count == 0:
                return Reply(status, head, keep)
            return owned.hand_over(Reply(status, head, keep, file=file, offset=offset, count=count))
    except HttpError as error:
        return error_reply(error, request, added)


def _multipart(
    request: Request,
    file: OpenedFile,
    ranges: list[ByteRange],
    validators: list[tuple[str, str]],
    head_only: bool,
    added: AddedHeaders,
) -> Reply:
    """206 multipart/byteranges (RFC 9110 14.6): the parts' heads are rendered here,
    their bytes are moved by the copy strategy, part after part."""
    boundary = "zcserve-" + secrets.token_hex(8)  # random: no file can hold it by design
    media, size = file.content_type, file.size
    parts = []
    length = 0
    for index, part in enumerate(ranges):
        after_previous = "\r\n" if index else ""  # the CRLF that ends the part before
        part_head = (
            f"{after_previous}--{boundary}\r\nContent-Type: {media}\r\n"
            f"Content-Range: bytes {part.start}-{part.end}/{size}\r\n\r\n"
        ).encode("latin-1")
        parts.append((part_head, part.start, part.length))
        length += len(part_head) + part.length
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    length += len(tail)
    headers = [
        ("Content-Type", f"multipart/byteranges; boundary={boundary}"),
        ("Accept-Ranges", "bytes"),
        *validators,
        ("Content-Length", str(length)),
    ]
    keep = request.keep_alive
    head = render_head(206, headers, keep_alive=keep, version=request.version, extra=added.success)
    if head_only:
        return Reply(206, head, keep)
    return MultipartReply(206, head, keep, file=file, count=length, parts=tuple(parts), tail=tail)


def _not_a_file(resolved: Resolved, request: Request, root: Resolver, added: AddedHeaders) -> Reply:
    """A slash redirect, keeping the query, or a directory listing."""
    if resolved.kind is Kind.REDIRECT:
        location = resolved.location
        if request.query:
            location += "?" + quote(request.query, safe=_QUERY_SAFE)
        body = f"Moved to {location}\n".encode("utf-8", "replace")
        headers = [
            ("Location", location),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        return _simple(301, headers, body, request, added)
    return _listing(resolved, request, root, added)


class ListingPending(Exception):
    """Raised by `plan_reply` for a listing page not rendered yet: reading a large
    folder must not stall the loop. Run `build` in a thread, `keep` its result
    (on the loop), then plan the request again."""

    def __init__(
        self,
        folder: tuple[Hashable, Hashable],
        query: ListingQuery,
        build: Callable[[], RenderedPage],
        root: Resolver,
    ):
        self.key = (*folder, query)
        super().__init__(self.key)
        self.folder = folder
        self.query = query
        self.build = build
        self._listings = root.listings

    def keep(self, page: RenderedPage) -> None:
        """Keep `page` under the page it is: a page asked past the last is the last."""
        query = self.query
        if query.page > page.pages:
            query = query._replace(page=page.pages)
        self._listings.put((*self.folder, query), self.folder, page, time.monotonic())


def _listing(resolved: Resolved, request: Request, root: Resolver, added: AddedHeaders) -> Reply:
    """The folder as HTML, or JSON for a client that asks for it, sorted and paged
    as the query says (`?sort=size&order=desc&page=2`), from the listing cache. A
    page past the last, once the last is known, is the last."""
    query = parse_query(request.query, request.headers.get("accept"))
    folder = (resolved.folder, resolved.version)
    last = root.listings.last_page(folder)
    if last is not None and query.page > last:
        query = query._replace(page=last)
    key = (*folder, query)
    page = root.listings.get(key, time.monotonic())
    if page is None:
        build = functools.partial(root.render_listing, resolved, query)
        raise ListingPending(folder, query, build, root)
    body, media = page.body, page.media
    headers = [
        ("Content-Type", f"{media}; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Vary", "Accept"),
    ]
    return _simple(200, headers, body, request, added)


def _whole_file_head(
    file: OpenedFile,
    heads: dict[tuple[bool, str], tuple[str, bytes]],
    keep: bool,
    version: str,
    date: str,
    extra: bytes,
) -> bytes:
    """Render a whole-file 200 head, the added header lines `extra` in it, and keep it
    for the rest of this Date second."""
    headers = [
        ("Content-Type", file.content_type),
        ("Accept-Ranges", "bytes"),
        ("Last-Modified", http_date(file.mtime)),
        ("ETag", file.etag),
        ("Content-Length", str(file.size)),
    ]
    head = render_head(200, headers, keep_alive=keep, version=version, extra=extra)
    heads[(keep, version)] = (date, head)
    return head


def _simple(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    request: Request,
    added: AddedHeaders,
) -> Reply:
    head = render_head(
        status,
        headers,
        keep_alive=request.keep_alive,
        version=request.version,
        extra=added.lines(status),
    )
    return Reply(status, head, request.keep_alive, b"" if request.method == "HEAD" else body)
