"""HTTP/1.1 without I/O: request bytes in, `Request` events out, response heads back as bytes.

Nothing here touches a socket or an event loop, so the protocol logic is tested
with plain byte strings. (The load generator parses responses with its own
module, `zcserve.load.http`: it must not import the server.)
Parsing is done by httptools (llhttp, the parser uvicorn uses); this module adds
the limits a public server needs and the mapping of every failure to a status.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from types import MappingProxyType
from typing import NamedTuple

import httptools

from zcserve.errors import HttpError

# Limits. nginx's large_client_header_buffers is 4 x 8k; h11 caps an incomplete
# head at 16 KiB; Apache's LimitRequestFields is 100.
MAX_REQUEST_LINE = 8 * 1024
"""Longest request target accepted before answering 414."""
MAX_HEADER_BYTES = 16 * 1024
"""Total size of header names and values accepted before answering 431."""
MAX_HEADER_COUNT = 100
"""Most header fields accepted before answering 431."""
MAX_BODY = 64 * 1024
"""Largest request body read (and discarded): zcserve answers GET and HEAD only."""
RETRY_AFTER_SECONDS = 1
"""What a 503 tells the client to wait: the shortages behind it (descriptors, the
readall budget) last as long as the responses in flight."""
MAX_PIPELINED = 128
"""Most requests parsed ahead of their answers per connection (wrk pipelines 16); the
connection feeds the parser at most this many shortest requests' bytes at a time."""
REPEAT_MAX = 2048
"""Longest request head remembered for a repeat (see `RequestParser.feed`): the one
kept per connection costs at most this, and browsers' heads fit in it."""
_HEAD_END = b"\r\n\r\n"

_host_match = re.compile(
    r"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?"
).fullmatch
"""A Host value (RFC 9112 3.2, RFC 3986 3.2.2): uri-host [":" port]. Spaces, "@",
"/", "?", "#" and "\\" have no place in it (nginx answers 400 to them too)."""

_COMMON_NAMES = (
    "Host", "User-Agent", "Accept", "Accept-Encoding", "Accept-Language", "Connection",
    "Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
    "If-Unmodified-Since", "Cache-Control", "Pragma", "Referer", "Cookie", "Origin",
    "Content-Length", "Transfer-Encoding", "Expect", "Upgrade", "Priority", "DNT",
    "Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Upgrade-Insecure-Requests",
)  # fmt: skip
_HEADER_KEYS = {
    spelled.encode(): name.lower() for name in _COMMON_NAMES for spelled in (name, name.lower())
}
"""Header names as clients send them, to their key: one fixed lookup instead of a
decode and a lower() per header. Other names are decoded."""

_QUESTION_MARK, _HASH = ord("?"), ord("#")
"""As ints: `63 in target` costs a seventh of `b"?" in target`, once per request."""

SERVER_NAME = "zcserve"

REASONS: dict[int, str] = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    412: "Precondition Failed",
    414: "URI Too Long",
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

ALLOWED_METHODS = ("GET", "HEAD")


class Request(NamedTuple):
    """One parsed request head. Header names are lower-case; repeats are joined by ", ".

    Immutable like the frozen dataclasses here, but a NamedTuple: one is built per
    request, and it builds in half the time of a frozen dataclass."""

    method: str
    target: bytes
    path: bytes
    query: bytes
    version: str
    headers: Mapping[str, str] = MappingProxyType({})
    keep_alive: bool = True


_new_request = tuple.__new__


@dataclass(frozen=True, slots=True)
class Limits:
    """Size caps applied while parsing; the defaults are the module constants."""

    max_request_line: int = MAX_REQUEST_LINE
    max_header_bytes: int = MAX_HEADER_BYTES
    max_header_count: int = MAX_HEADER_COUNT
    max_pipelined: int = MAX_PIPELINED


class _Reject(Exception):
    """Raised inside an httptools callback to stop parsing: with a status, or with
    a request to answer as it is (its body unread) before the connection closes."""

    def __init__(self, error: HttpError | Request) -> None:
        self.error = error


class RequestParser:
    """Incremental request parser: `feed` bytes, get back complete requests in order.

    After the first `HttpError` the parser is finished: the connection should answer
    the requests before it, then the error, then close. So it is after a request
    answered before its body (`Expect: 100-continue`), which is not keep-alive.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._parser = httptools.HttpRequestParser(self)
        self._ready: list[Request | HttpError] = []
        self._failed = False
        self._in_head = False
        self.in_head = False
        """True while a request has started but not finished arriving, its body
        included: the header deadline covers both, so a trickled body cannot hold
        a connection forever. An attribute, not a property: read once per request."""
        self._in_trailer = False
        self._body_bytes = 0
        self._head_tail = 0
        self._valid_host = ""
        """The last Host value found valid: a keep-alive client repeats it, and one
        string comparison is cheaper than the pattern."""
        self._max_head = self._limits.max_request_line + self._limits.max_header_bytes + 1024
        self._max_header_bytes = self._limits.max_header_bytes
        self._max_header_count = self._limits.max_header_count
        self._max_request_line = self._limits.max_request_line
        self._max_pipelined = self._limits.max_pipelined
        self._at_rest = False
        """The last feed was known to end exactly at the end of a keep-alive message:
        llhttp holds nothing, so bytes parse now as they would on a fresh parser. Only
        worked out for a feed equal to the one before it (`_check_repeat`): it is
        False after any other, which costs a repeat one more parse, not a mistake."""
        self._last_feed = b""
        """The last feed, when it was short enough to be a repeat (`REPEAT_MAX`)."""
        self.repeat_bytes = b""
        self.repeat: Request | None = None
        """A request that came three times in a row, byte for byte, its last two at
        rest, and its bytes (`repeat_bytes`): while they come again at rest, they are
        this request, unparsed. Only a repeat is kept: a client whose requests all
        differ keeps no `Request` alive between them (the cyclic GC would meet one per
        request in its older generations) and pays one comparison per request."""
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._header_count = 0
        self._head: Request | None = None

    @property
    def failed(self) -> bool:
        return self._failed

    def feed(self, data: bytes | bytearray | memoryview) -> list[Request | HttpError]:
        """Parse `data`; return every request (or the terminal error) it completes."""
        if self._failed:
            return []
        if self._at_rest and data == self.repeat_bytes:
            # A keep-alive client repeating its request byte for byte (wrk, a poll, a
            # reload): llhttp is at rest, so parsing it again would make the same
            # request; skip its five callbacks.
            assert self.repeat is not None
            return [self.repeat]
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade we do not speak: answer the head we have, then close.
            # llhttp may have completed the message already (a GET with Upgrade), so
            # the head to close on is then the last one ready.
            if self._head is not None:
                self._ready.append(self._head)
                self._head = None
            last = self._ready[-1] if self._ready else None
            if isinstance(last, Request):
                self._ready[-1] = without_keep_alive(last)
            else:
                self._ready.append(HttpError(400, "upgrade without a request"))
            self._failed = True
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            self._fail(reject.error if isinstance(reject, _Reject) else _bad_request(exc))
        except httptools.HttpParserInvalidMethodError:
            self._fail(HttpError(400, "method not recognised"))  # also TLS or garbage
        except httptools.HttpParserError as exc:
            self._fail(_bad_request(exc))
        else:
            if self._in_head or self._in_trailer:
                self._at_rest = False
                self._guard_incomplete_head(data)
            else:
                self._head_tail = 0
                if data == self._last_feed:
                    self._check_repeat(data)
                else:
                    self._at_rest = False
                    self._last_feed = bytes(data) if len(data) <= REPEAT_MAX else b""
        ready, self._ready = self._ready, []
        return ready

    def _check_repeat(self, data: bytes | bytearray | memoryview) -> None:
        """`data` came twice in a row: note whether llhttp is at rest after it, and
        if it was at rest before it too, keep its request as the repeat. llhttp skips
        CRLFs between messages, and a method or target holds none: a feed that made
        one keep-alive request, with no body still owed (`in_head` covers the body),
        and ends in CRLFCRLF left nothing half-read."""
        ready = self._ready
        request = ready[0] if len(ready) == 1 else None
        if (
            isinstance(request, Request)
            and request.keep_alive
            and not self.in_head
            and data[-4:] == _HEAD_END
        ):
            if self._at_rest:
                self.repeat_bytes, self.repeat = self._last_feed, request
            self._at_rest = True
        else:
            self._at_rest = False

    def _guard_incomplete_head(self, data: bytes | bytearray | memoryview) -> None:
        # httptools buffers a header's name and value until both are complete, so a
        # head that never ends would grow without bound inside it, copied whole at
        # every feed. Everything after the last CRLFCRLF is an upper bound on the
        # unfinished head. Trailer fields after a chunked body are buffered the same
        # way and get the same limit: complete ones count in `on_header`, and since
        # llhttp refuses folded lines, everything after the last LF bounds the one
        # unfinished trailer line.
        if self._in_head:
            end, mark = bytes(data).rfind(b"\r\n\r\n"), 4
        else:
            end, mark = bytes(data).rfind(b"\n"), 1
        self._head_tail = len(data) - end - mark if end >= 0 else self._head_tail + len(data)
        if self._head_tail > self._max_head:
            if self._in_trailer:
                self._fail(HttpError(431, "request trailer too large"))
                return
            status = 414 if self._header_count == 0 and not self._headers else 431
            self._fail(HttpError(status, "request head too large"))

    def _fail(self, error: HttpError | Request) -> None:
        self._failed = True
        self._ready.append(error)

    # httptools callbacks -------------------------------------------------------

    # No on_message_begin: httptools calls only the callbacks that exist, and each
    # call from C costs. A message starts with its target (`on_url`); the state it
    # needs was reset when the previous message completed.

    def on_url(self, url: bytes) -> None:
        self._in_head = self.in_head = True
        self._url = self._url + url if self._url else url  # llhttp may split a long one
        if len(self._url) > self._max_request_line:
            raise _Reject(HttpError(414, "request target too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp may deliver a long name or value in pieces; only a complete
        # (name, value) pair counts toward the header count.
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_bytes > self._max_header_bytes:
            raise _Reject(HttpError(431, "request headers too large"))
        if self._header_count > self._max_header_count:
            raise _Reject(HttpError(431, "too many request headers"))
        key = _HEADER_KEYS.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        if previous is None:
            self._headers[key] = text
        elif key == "host":  # RFC 9112 3.2: exactly one Host
            raise _Reject(HttpError(400, "more than one Host header"))
        else:
            self._headers[key] = f"{previous}, {text}"

    def on_body(self, body: bytes) -> None:
        self._in_trailer = False
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY:
            raise _Reject(HttpError(413, "request body too large"))

    def on_chunk_header(self) -> None:
        # Either a chunk whose data follows (on_body clears this) or the last, empty
        # chunk, after which come the trailer fields.
        self._in_trailer = True

    def on_chunk_complete(self) -> None:
        self._in_trailer = False

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _Reject(HttpError(505, f"HTTP/{version} is not supported"))
        target = self._url
        if target.startswith(b"/") and _QUESTION_MARK not in target and _HASH not in target:
            path, query = target, b""  # the common case: nothing for parse_url to split
        elif target.startswith(b"/"):
            try:
                parsed = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError as exc:
                raise _Reject(HttpError(400, "malformed request target")) from exc
            path, query = parsed.path or b"/", parsed.query or b""
        elif target == b"*":
            path, query = target, b""
        else:
            # absolute-form (RFC 9112 3.2.2) is accepted; its path is what we serve.
            path, query = _absolute_form_path(target)
        headers = self._headers
        host = headers.get("host")
        if host is None:
            if version == "1.1":
                raise _Reject(HttpError(400, "HTTP/1.1 request without Host"))
        elif host != self._valid_host:
            if _host_match(host) is None:
                raise _Reject(HttpError(400, f"invalid Host {host!r}"))
            self._valid_host = host
        # tuple.__new__, as the NamedTuple's own `_make` does: no Python frame for its
        # generated __new__, once per request.
        self._head = _new_request(
            Request,
            (
                parser.get_method().decode("ascii", "replace"),
                target,
                path,
                query,
                version,
                headers,
                parser.should_keep_alive(),
            ),
        )
        if "transfer-encoding" in headers or "content-length" in headers:
            self._check_body(self._head)

    def _check_body(self, head: Request) -> None:
        """The framing of a request that announces a body (RFC 9112 6).

        Only plain `chunked` is understood (501 otherwise, 6.1); HTTP/1.0 has no
        Transfer-Encoding (400, 6.1); a Content-Length past `MAX_BODY` is 413 at
        once, not after 64 KiB were read.

        `Expect: 100-continue` (RFC 9110 10.1.1): the client waits for a word before
        it sends its body. zcserve answers only GET and HEAD and throws bodies away,
        so it never asks for one: the request is answered at once with its final
        status (its file, 405, 413 ...), without its body, and the connection then
        closes, since the body the client may still send would otherwise be read as
        the next request. Sending "100 Continue" instead would only invite bytes to
        discard. The close lingers (the connection drains what the client sends),
        so it does not reset the answer."""
        self._body_bytes = 0
        headers, version = head.headers, head.version
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if version == "1.0":
                raise _Reject(HttpError(400, "Transfer-Encoding in an HTTP/1.0 request"))
            if coding.strip().lower() != "chunked":
                raise _Reject(HttpError(501, f"Transfer-Encoding {coding!r}: only chunked"))
            # Trailer fields must not join the request's own fields: a fresh dict.
            self._headers = {}
            announced = True
        else:
            length = int(headers["content-length"])  # llhttp checked its digits
            if length > MAX_BODY:
                raise _Reject(HttpError(413, f"request body of {length} bytes"))
            announced = length > 0
        expect = headers.get("expect")
        if announced and expect is not None and version == "1.1":
            if expect.strip().lower() == "100-continue":
                raise _Reject(without_keep_alive(head))

    def on_message_complete(self) -> None:
        self.in_head = False
        if self._head is None:  # pragma: no cover - llhttp always completes a head first
            return
        if len(self._ready) >= self._max_pipelined:
            raise _Reject(HttpError(429, "too many pipelined requests"))
        self._ready.append(self._head)
        # `_reset_message`, inlined: this runs once per request.
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._header_count = 0
        self._head = None


def weighted_items(header: str) -> Iterator[tuple[str, float]]:
    """Each item of an Accept-style header, lower-cased, with its q-value (RFC 9110
    12.4.2): 1 when absent, 0 when it does not parse. Empty items are skipped."""
    for item in header.split(","):
        token, *params = (part.strip() for part in item.split(";"))
        if not token:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        yield token.lower(), weight


def without_keep_alive(request: Request) -> Request:
    """The same request, answered with Connection: close."""
    return request._replace(keep_alive=False)


def _bad_request(exc: Exception) -> HttpError:
    return HttpError(400, f"malformed request ({exc})")


def _absolute_form_path(target: bytes) -> tuple[bytes, bytes]:
    try:
        parsed = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError as exc:
        raise _Reject(HttpError(400, "malformed request target")) from exc
    if not parsed.schema or parsed.schema.lower() not in (b"http", b"https"):
        raise _Reject(HttpError(400, "malformed request target"))
    return parsed.path or b"/", parsed.query or b""


# Responses -----------------------------------------------------------------------


class _DateCache:
    """The Date header changes once a second; format it once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""
        self.ends = 0.0
        """When the last value made stops being now, on the monotonic clock."""

    def now(self) -> str:
        wall = _time()
        second = int(wall)
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True)
            self.ends = time.monotonic() + (second + 1 - wall)
        return self._value


_time = time.time  # bound once: `now` runs on every response
_date_cache = _DateCache()
current_http_date = _date_cache.now
"""The Date header's value for now: `http_date()` without its argument check."""


def current_date_ends() -> float:
    """When `current_http_date()`'s last value stops being current (monotonic)."""
    return _date_cache.ends


def http_date(timestamp: float | None = None) -> str:
    """An IMF-fixdate (RFC 9110 5.6.7); the current second is cached, and so are
    files' modification times, which repeat on every request for the same file."""
    if timestamp is None:
        return _date_cache.now()
    return _format_second(int(timestamp))


LAST_HTTP_SECOND = 253402300799
"""9999-12-31 23:59:59 UTC: IMF-fixdate has four year digits, and tmpfs accepts
modification times past it."""


@functools.lru_cache(maxsize=4096)
def _format_second(second: int) -> str:
    return formatdate(min(max(second, 0), LAST_HTTP_SECOND), usegmt=True)


def parse_http_date(value: str) -> float | None:
    """Seconds since the epoch for an HTTP date, or None when it does not parse."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def render_head(
    status: int,
    headers: Iterable[tuple[str, str]],
    *,
    keep_alive: bool,
    version: str = "1.1",
    extra: bytes = b"",
) -> bytes:
    """Status line and headers, with Date, Server and Connection added, as bytes;
    `extra` is header lines already rendered (what start-up flags add)."""
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Date: {_date_cache.now()}",
        f"Server: {SERVER_NAME}",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    elif version == "1.0":
        lines.append("Connection: keep-alive")
    lines.append("\r\n")
    head = "\r\n".join(lines).encode("latin-1")
    return head[:-2] + extra + b"\r\n" if extra else head


def error_body(status: int) -> bytes:
    """The one-line plain-text body of an error response."""
    return f"{status} {REASONS.get(status, 'Error')}\n".encode("ascii")


PLAIN_HTTP_ON_TLS_PORT = b"400 Bad Request: a plain HTTP request was sent to the HTTPS port\n"


def plain_http_on_tls_port() -> bytes:
    """The clear-text 400 a TLS port answers to plain HTTP (nginx's answer too)."""
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(PLAIN_HTTP_ON_TLS_PORT))),
    ]
    return render_head(400, headers, keep_alive=False) + PLAIN_HTTP_ON_TLS_PORT


def error_response(
    status: int,
    *,
    keep_alive: bool = False,
    head_only: bool = False,
    version: str = "1.1",
    extra: bytes = b"",
) -> bytes:
    """A complete response with a one-line plain-text body saying what went wrong."""
    body = error_body(status)
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if status == 405:
        headers.append(("Allow", ", ".join(ALLOWED_METHODS)))
    elif status == 503:  # zcserve answers 503 only for a shortage that passes
        headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
    head = render_head(status, headers, keep_alive=keep_alive, version=version, extra=extra)
    return head if head_only else head + body
