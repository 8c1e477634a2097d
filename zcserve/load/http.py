"""The load generator's HTTP side, without I/O: URLs to request bytes, response bytes to facts.

`ResponseReader` is fed the bytes of one connection and says when a response is
complete, its status, how many body bytes it carried and (when asked) their
SHA-256. It never touches a socket, so the framing rules are tested on bytes and
shared by the load connections and the one-shot reference fetch.

Only the head goes through httptools (llhttp: strict about the status line,
duplicate or invalid Content-Length, Content-Length beside Transfer-Encoding,
obs-fold), one parser per head. The body is framed here, on the caller's buffer:
a Content-Length body, a chunked one and one that ends with the connection are
counted without a copy, and hashed from a memoryview only when asked. The head
is capped (`HEAD_LIMIT`), interim 1xx responses (but 101) are skipped, and
`receive` says where a response ended, so responses that follow each other in one
buffer are split exactly.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httptools

from zcserve import __version__
from zcserve.errors import ConfigError

USER_AGENT = f"zcserve-load/{__version__}"
HEAD_LIMIT = 64 * 1024
"""Bytes a response head (status line and headers), or a chunked body's trailers,
may take; more is a `bad_response`, never an ever-growing buffer."""
CHUNK_LINE_LIMIT = 4096
"""Bytes a chunk-size line (extensions included) may take."""
_SAFE_IN_TARGET = "!#$&'()*+,/:;=?@[]~%-._"
"""What stays as is when a non-ASCII path is percent-encoded: every reserved and
unreserved character, and '%' (a path may already be encoded)."""
_CONTROL = frozenset(chr(code) for code in (*range(0x20), 0x7F))
"""Characters a request line cannot carry, encoded or not (CR, LF, NUL, ...)."""
_HEX = b"0123456789abcdefABCDEF"
METHODS = ("GET", "HEAD")
"""What `zcserve load` sends: the methods of a static file server, both without a
request body. A HEAD response has no body whatever its Content-Length says."""
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""The characters of a header name (a token, RFC 9110 5.6.2)."""
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding"))
"""Headers that frame a request body; zcserve load sends none, so it refuses them."""
STATUS_KEYS = 1000
"""Statuses are three digits (llhttp refuses more), so `url * STATUS_KEYS + status`
keys one URL's count of one status in a single int-keyed dict."""
Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Target:
    """One URL to load, split into what a connection and a request need."""

    url: str
    host: str
    port: int
    target: str
    """Path and query as sent on the request line (ASCII: anything else is
    percent-encoded as UTF-8)."""
    tls: bool = False
    """https: the connection speaks TLS first."""

    @property
    def origin(self) -> tuple[bool, str, int]:
        """Requests to one origin (scheme, host, port) may share a connection."""
        return (self.tls, self.host, self.port)

    @property
    def default_port(self) -> int:
        return 443 if self.tls else 80

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == self.default_port else f"{host}:{self.port}"

    def request(self, method: str = "GET", headers: tuple[Header, ...] = ()) -> bytes:
        """The request for this URL, rendered once and sent as is every time. A header
        in `headers` named Host, User-Agent or Accept replaces the default one."""
        given = {name.lower() for name, _ in headers}
        defaults = (("Host", self.host_header), ("User-Agent", USER_AGENT), ("Accept", "*/*"))
        fields = [field for field in defaults if field[0].lower() not in given]
        fields.extend(headers)
        lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
        return f"{method} {self.target} HTTP/1.1\r\n{lines}\r\n".encode("latin-1")


def _ascii_host(url: str, host: str, expected: str) -> str:
    """The host as sent and resolved: an internationalised name in its IDNA (xn--) form."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(
            f"bad URL {url!r}: host {host!r} is not a valid name; {expected}"
        ) from None


def parse_target(url: str) -> Target:
    """`Target` for an `http[s]://host[:port][/path]` URL, or `ConfigError` saying why not.

    A path or query with characters beyond ASCII is sent percent-encoded (UTF-8),
    as a browser does; spaces and control characters are refused."""
    expected = "expected http://host[:port]/path or https://host[:port]/path"
    if not _CONTROL.isdisjoint(url):  # urlsplit would drop tabs and line breaks silently
        raise ConfigError(f"bad URL {url!r}: control characters; {expected}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad URL {url!r} ({exc}); {expected}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad URL {url!r}; {expected}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"bad URL {url!r}: credentials are not supported; {expected}")
    if port == 0:
        raise ConfigError(f"bad URL {url!r}: port 0; {expected}")
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    if " " in target:
        raise ConfigError(f"bad URL {url!r}: spaces in the path; {expected}")
    if not target.isascii():
        target = quote(target, safe=_SAFE_IN_TARGET)
    tls = scheme == "https"
    default_port = 443 if tls else 80
    host = _ascii_host(url, parts.hostname, expected)
    return Target(url=url, host=host, port=port or default_port, target=target, tls=tls)


def parse_header(text: str) -> Header:
    """`(name, value)` of a `Name: value` header line, or `ConfigError` saying why not."""
    expected = "expected 'Name: value', e.g. 'Range: bytes=0-99'"
    name, colon, value = text.partition(":")
    if not colon:
        raise ConfigError(f"bad header {text!r}: no colon; {expected}")
    if not name or not _TCHAR.issuperset(name):
        raise ConfigError(f"bad header {text!r}: {name!r} is not a header name; {expected}")
    if name.lower() in _FRAMING_HEADERS:
        raise ConfigError(f"bad header {text!r}: zcserve load sends no request body")
    value = value.strip(" \t")
    for char in value:
        # CR or LF would end the header (or the head) early: a request smuggled in.
        if (char in _CONTROL and char != "\t") or ord(char) > 0xFF:
            raise ConfigError(
                f"bad header {text!r}: {char!r} in the value; {expected}, on one line, "
                "without control characters"
            )
    return (name, value)


def parse_statuses(text: str) -> tuple[int, ...]:
    """The statuses of `--expect-status 200,206,304` (a class as `2xx`), sorted, or
    `ConfigError` saying why not."""
    expected = "expected statuses from 100 to 599 separated by commas, e.g. 200,206,304 or 2xx"
    statuses: set[int] = set()
    for part in text.split(","):
        item = part.strip()
        if len(item) == 3 and item[0] in "12345" and item[1:].lower() == "xx":
            first = int(item[0]) * 100
            statuses.update(range(first, first + 100))
        elif len(item) == 3 and item.isdigit() and 100 <= int(item) <= 599:
            statuses.add(int(item))
        else:
            raise ConfigError(f"bad status {item!r} in {text!r}; {expected}")
    return tuple(sorted(statuses))


def unexpected_statuses(expected: tuple[int, ...] | None) -> bytes:
    """A table indexed by status: 1 where a complete response is an error (not in
    `expected`; None expects 2xx and 3xx, as wrk counts). Looked up once per
    response, without a string."""
    ok = set(range(200, 400) if expected is None else expected)
    return bytes(0 if status in ok else 1 for status in range(STATUS_KEYS))


def is_loopback(host: str) -> bool:
    """True for an IP literal on the loopback network (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ResponseError(Exception):
    """The bytes on a connection broke HTTP framing; `kind` names the error count."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


KNOWN_HEAD_SIZE = 1024
KNOWN_HEADS = 256
_Head = tuple[int, bool, int, int]
"""What a head says: status, keep-alive, what follows (a mode below: `_HEAD` for an
interim response) and the Content-Length (-1: none)."""
_KNOWN_HEADS: dict[bytes, _Head] = {}
"""Heads llhttp accepted (up to `KNOWN_HEAD_SIZE` bytes, at most `KNOWN_HEADS` of
them), and what they said: a server sends the same head again and again (nginx's
changes with its Date, once a second), and one seen before needs no parsing."""

# What the reader expects next.
_HEAD = 0
"""A head (status line and headers), maybe after interim 1xx ones."""
_COUNTED = 1
"""`remaining` bytes of a Content-Length body (or of one chunk)."""
_UNTIL_CLOSE = 2
"""A body that ends when the connection does."""
_CHUNK_SIZE = 3
_CHUNK_END = 4
"""The CRLF after a chunk's data."""
_TRAILERS = 5
_DONE = 6


class ResponseReader:
    """Frames the responses of one connection, one at a time.

    `receive(data, end)` takes the bytes `data[:end]` (the connection's reused
    buffer) and returns the offset where it stopped: `end`, or, once the response
    is complete (`done`), the offset just past it. The owner then reads `status`,
    `body_bytes`, `head_bytes`, `keep_alive` and `digest()` and calls `reset()`
    before the next response. `feed(bytes)` is the same for a byte string, and says
    a byte beyond the response is `long_body`.

    With `no_body` (the requests are HEAD) a response ends with its head, whatever
    its Content-Length or Transfer-Encoding say (RFC 9110 9.3.2).
    """

    __slots__ = (
        "hash_bodies",
        "no_body",
        "head_bytes",
        "hasher",
        "status",
        "body_bytes",
        "framed",
        "started",
        "head_done",
        "done",
        "keep_alive",
        "completed",
        "interim",
        "mode",
        "remaining",
        "chunked",
        "partial",
        "trailer_bytes",
        "_parser",
    )

    def __init__(self, *, hash_bodies: bool = False, no_body: bool = False) -> None:
        self.hash_bodies = hash_bodies
        self.no_body = no_body
        self.completed = 0
        """Responses finished on this connection so far."""
        self.interim = 0
        """Interim (1xx) responses skipped on this connection so far."""
        self._parser: httptools.HttpResponseParser | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the finished response; the next bytes start a new one."""
        self.hasher = hashlib.sha256() if self.hash_bodies else None
        self.status = 0
        self.body_bytes = 0
        self.head_bytes = 0
        """Bytes of this response's head (status line, headers, blank line), interim
        heads before it included: counted apart from the body."""
        self.framed = False
        """The body has a length or chunks: the connection ending early cuts it short."""
        self.started = False
        """A byte of this response (or of an interim one before it) arrived."""
        self.head_done = False
        self.done = False
        self.keep_alive = True
        self.mode = _HEAD
        self.remaining = 0
        self.chunked = False
        self.partial: bytearray | None = None
        """The start of a head (or of a chunk line) that ended with the last buffer."""
        self.trailer_bytes = 0

    # feeding -----------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Parse `data`; True when the response is complete. Raises `ResponseError`.

        When it raises with `done` set, the response did complete and the error
        is about bytes after it.
        """
        if isinstance(data, memoryview):
            data = data.tobytes()
        end = len(data)
        stop = self.receive(data, end)
        if self.done and stop < end:
            # Bytes after a complete response: most likely the tail of a body longer
            # than its Content-Length.
            raise ResponseError("long_body")
        return self.done

    def receive(self, data: bytes | bytearray, end: int, start: int = 0) -> int:
        """Take `data[start:end]`; return where this response's bytes stop (see the
        class). Raises `ResponseError` when the bytes break HTTP framing."""
        if start >= end:
            return end
        self.started = True
        pos = start
        while True:
            mode = self.mode
            if mode == _COUNTED:
                remaining = self.remaining
                take = end - pos
                if take > remaining:
                    take = remaining
                if self.hasher is None:
                    self.body_bytes += take
                else:
                    self.on_body(memoryview(data)[pos : pos + take])
                pos += take
                self.remaining = remaining = remaining - take
                if remaining:
                    return pos
                if not self.chunked:
                    self._complete()
                    return pos
                self.mode = _CHUNK_END
            elif mode == _HEAD:
                pos = self._head(data, pos, end)
                if self.mode == _DONE:
                    self._complete()
                    return pos
            elif mode == _UNTIL_CLOSE:
                take = end - pos
                if self.hasher is None:
                    self.body_bytes += take
                else:
                    self.on_body(memoryview(data)[pos:end])
                return end
            elif mode == _DONE:
                return pos
            else:
                pos = self._chunk_line(data, pos, end)
                if self.mode == _DONE:
                    self._complete()
                    return pos
            if pos >= end:
                return end

    def eof_error(self) -> str | None:
        """The error kind for a connection that ended now, or None if that ended
        the response cleanly (a body delimited by the close)."""
        if not self.head_done:
            return "reset"
        if self.framed:
            return "short_body"
        if not self.done:
            self._complete()
        self.keep_alive = False
        return None

    def digest(self) -> bytes | None:
        return None if self.hasher is None else self.hasher.digest()

    def on_body(self, body: bytes | memoryview) -> None:
        """Count (and hash) one piece of body; only on the hashing path."""
        self.body_bytes += len(body)
        if self.hasher is not None:
            self.hasher.update(body)

    def _complete(self) -> None:
        self.mode = _DONE
        self.done = True
        self.completed += 1

    # the head ------------------------------------------------------------------

    def _head(self, data: bytes | bytearray, pos: int, end: int) -> int:
        """Find the end of the head and parse it; return the offset past it (or `end`
        when the head goes on in the next buffer)."""
        partial = self.partial
        if partial is None:
            stop = data.find(b"\r\n\r\n", pos, end)
            if stop < 0:
                if end - pos >= 5 and data[pos : pos + 5] != b"HTTP/":
                    self._not_http()
                if end - pos > HEAD_LIMIT:
                    raise ResponseError("bad_response")
                self.partial = bytearray(data[pos:end])
                return end
            stop += 4
            if stop - pos > HEAD_LIMIT:
                raise ResponseError("bad_response")
            self._parse_head(data[pos:stop])
            return stop
        before = len(partial)
        room = HEAD_LIMIT + 4 - before
        partial += data[pos : pos + room] if end - pos > room else data[pos:end]
        stop = partial.find(b"\r\n\r\n", max(before - 3, 0))
        if stop < 0:
            if len(partial) >= 5 and partial[:5] != b"HTTP/":
                self._not_http()
            if len(partial) > HEAD_LIMIT:
                raise ResponseError("bad_response")
            return end
        stop += 4
        if stop > HEAD_LIMIT:
            raise ResponseError("bad_response")
        self.partial = None
        self._parse_head(partial[:stop])
        return pos + stop - before

    def _not_http(self) -> None:
        # Bytes that do not start a response where the next one is due: after an
        # earlier response on this connection, most likely the tail of a body longer
        # than its Content-Length.
        raise ResponseError("long_body" if self.completed else "bad_response")

    def _parse_head(self, head: bytes | bytearray) -> None:
        """Parse one complete head and set up the framing of what follows it."""
        key = bytes(head) if len(head) <= KNOWN_HEAD_SIZE else None
        known = _KNOWN_HEADS.get(key) if key is not None else None
        if known is None:
            known = self._judge_head(head)
            if key is not None:
                if len(_KNOWN_HEADS) >= KNOWN_HEADS:
                    _KNOWN_HEADS.clear()
                _KNOWN_HEADS[key] = known
        status, keep_alive, mode, length = known
        self.head_bytes += len(head)
        if mode == _HEAD:
            # Interim (100 Continue, 103 Early Hints, ...): the final response follows.
            self.interim += 1
            self.head_done = False
            self.status = 0
            return
        if self.no_body:
            mode, length = _DONE, -1  # what the cache holds is about GET
        self.head_done = True
        self.status = status
        self.keep_alive = keep_alive
        self.mode = mode
        self.remaining = length
        self.chunked = mode == _CHUNK_SIZE
        self.framed = length >= 0 or self.chunked

    def _judge_head(self, head: bytes | bytearray) -> _Head:
        """What a head says (see `_Head`), or `ResponseError`.

        llhttp checks the whole head, without a Python call per header (that alone
        would cost a third more); the framing headers are then found by hand, which is
        safe because llhttp refused duplicate or conflicting ones."""
        parser = httptools.HttpResponseParser(self)
        self._parser = parser
        self.status = 0
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # 101 Switching Protocols: the head itself parsed
        except httptools.HttpParserError:
            if not (self.head_done and self.status == 101):
                if head[:5] != b"HTTP/":
                    self._not_http()
                raise ResponseError("bad_response") from None
        finally:
            self._parser = None
        status = self.status
        keep_alive = self.keep_alive
        if not 100 <= status < STATUS_KEYS:
            raise ResponseError("bad_response")
        if 100 <= status < 200 and status != 101:
            return (status, keep_alive, _HEAD, -1)
        if status < 200 or status in (204, 304):
            # 101: the connection now speaks another protocol; it cannot be reused.
            return (status, keep_alive and status != 101, _DONE, -1)
        at = head.find(b"\r\nContent-Length:")  # as nearly every server spells it
        if at < 0:
            head = head.lower()  # header names are case-insensitive
            at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            length = int(head[at + 17 : head.index(b"\r\n", at + 17)])
            return (status, keep_alive, _COUNTED if length else _DONE, length)
        codings = []
        at = head.find(b"\r\ntransfer-encoding:")
        while at >= 0:
            end = head.index(b"\r\n", at + 20)
            codings.append(bytes(head[at + 20 : end]))
            at = head.find(b"\r\ntransfer-encoding:", end)
        final = b",".join(codings).rsplit(b",", 1)[-1].strip() if codings else b""
        # A body in chunks; with any other coding, or none, the close ends it.
        return (status, keep_alive, _CHUNK_SIZE if final == b"chunked" else _UNTIL_CLOSE, -1)

    # httptools callbacks (the head only) ---------------------------------------------

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self.head_done = True
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()

    # chunked bodies --------------------------------------------------------------

    def _chunk_line(self, data: bytes | bytearray, pos: int, end: int) -> int:
        """One line of chunked framing (a chunk size, the CRLF after a chunk, a
        trailer); return the offset past it, or `end` when it goes on later."""
        newline = data.find(b"\n", pos, end)
        partial = self.partial
        limit = HEAD_LIMIT if self.mode == _TRAILERS else CHUNK_LINE_LIMIT
        if newline < 0:
            if partial is None:
                self.partial = partial = bytearray()
            if len(partial) + end - pos > limit:
                raise ResponseError("bad_response")
            partial += data[pos:end]
            return end
        if partial is None:
            line = data[pos:newline]
        else:
            partial += data[pos:newline]
            line = bytes(partial)
            self.partial = None
        if len(line) > limit or not line.endswith(b"\r"):
            raise ResponseError("bad_response")
        line = line[:-1]
        mode = self.mode
        if mode == _CHUNK_END:
            if line:
                raise ResponseError("bad_response")
            self.mode = _CHUNK_SIZE
        elif mode == _CHUNK_SIZE:
            size = line.split(b";", 1)[0].rstrip(b" \t")
            if not size or len(size) > 15 or size.strip(_HEX):
                raise ResponseError("bad_response")
            self.remaining = int(size, 16)
            self.mode = _COUNTED if self.remaining else _TRAILERS
        else:  # _TRAILERS
            if not line:
                self.mode = _DONE
            else:
                self.trailer_bytes += len(line) + 2
                if self.trailer_bytes > HEAD_LIMIT:
                    raise ResponseError("bad_response")
        return newline + 1
