"""The load generator's HTTP side, without I/O: URLs to request bytes, response bytes to facts.

`ResponseReader` is fed the bytes of one connection and says when a response is
complete, its status, how many body bytes it carried and (when asked) their
SHA-256. It never touches a socket, so the framing rules are tested on bytes and
shared by the load connections and the one-shot reference fetch.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from zcserve import __version__
from zcserve.errors import ConfigError

USER_AGENT = f"zcserve-load/{__version__}"


@dataclass(frozen=True, slots=True)
class Target:
    """One URL to load, split into what a connection and a request need."""

    url: str
    host: str
    port: int
    target: str
    """Path and query as sent on the request line."""
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

    def request(self) -> bytes:
        """The GET request for this URL, rendered once and sent as is every time."""
        return (
            f"GET {self.target} HTTP/1.1\r\n"
            f"Host: {self.host_header}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\n\r\n"
        ).encode("latin-1")


def parse_target(url: str) -> Target:
    """`Target` for an `http[s]://host[:port][/path]` URL, or `ConfigError` saying why not."""
    expected = "expected http://host[:port]/path or https://host[:port]/path"
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
    if any(ch in target for ch in " \r\n"):
        raise ConfigError(f"bad URL {url!r}: spaces or line breaks in the path; {expected}")
    tls = scheme == "https"
    default_port = 443 if tls else 80
    return Target(url=url, host=parts.hostname, port=port or default_port, target=target, tls=tls)


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


class _ExtraBytes(Exception):
    """Raised inside httptools when bytes follow a complete response."""


_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


class ResponseReader:
    """httptools callbacks for one connection, one response at a time (no pipelining).

    `feed` returns True once the current response is complete; the owner reads
    `status`, `body_bytes`, `keep_alive` and `digest()` and then calls `reset()`
    before sending the next request. Any byte that arrives after a complete
    response and before that reset is beyond Content-Length: `long_body`.
    """

    __slots__ = (
        "parser",
        "hash_bodies",
        "hasher",
        "status",
        "body_bytes",
        "framed",
        "started",
        "head_done",
        "done",
        "keep_alive",
        "completed",
    )

    def __init__(self, *, hash_bodies: bool = False) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.hash_bodies = hash_bodies
        self.completed = 0
        """Responses finished on this connection so far."""
        self.reset()

    def reset(self) -> None:
        """Forget the finished response; the next bytes start a new one."""
        self.hasher = hashlib.sha256() if self.hash_bodies else None
        self.status = 0
        self.body_bytes = 0
        self.framed = False
        self.started = False
        self.head_done = False
        self.done = False
        self.keep_alive = True

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Parse `data`; True when the response is complete. Raises `ResponseError`.

        When it raises with `done` set, the response did complete and the error
        is about bytes after it.
        """
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self.done or (self.completed and not self.head_done):
                # Bytes after a complete response that do not start a valid one: most
                # likely the tail of a body longer than its Content-Length.
                raise ResponseError("long_body") from None
            raise ResponseError("bad_response") from None
        return self.done

    def eof_error(self) -> str | None:
        """The error kind for a connection that ended now, or None if that ended
        the response cleanly (a body delimited by the close)."""
        if not self.head_done:
            return "reset"
        if self.framed:
            return "short_body"
        self.done = True
        self.keep_alive = False
        self.completed += 1
        return None

    def digest(self) -> bytes | None:
        return None if self.hasher is None else self.hasher.digest()

    # httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _ExtraBytes
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 17) and name.lower() in _FRAMING_HEADERS:
            self.framed = True

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.hasher is not None:
            self.hasher.update(body)

    def on_message_complete(self) -> None:
        self.done = True
        self.completed += 1
        self.keep_alive = self.parser.should_keep_alive()
