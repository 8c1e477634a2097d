"""Files without sockets: map a URL path inside the root, open it safely, and answer
the questions HTTP asks of it (validators, ranges, conditionals, listings).

Containment is checked on the descriptor actually opened (its /proc/self/fd link),
not on the path string, so a symlink swapped in between the check and the open
cannot leak a file from outside the root.
"""

from __future__ import annotations

import enum
import errno
import html
import mimetypes
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote_to_bytes

from zcserve.errors import HttpError
from zcserve.server.http import parse_http_date

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK  # no FIFO hangs
_PROC_FD = os.path.isdir("/proc/self/fd")
INDEX_FILE = "index.html"
DEFAULT_CONTENT_TYPE = "application/octet-stream"

mimetypes.init()
_type_cache: dict[str, str] = {}


def content_type(name: str) -> str:
    """The media type for a file name, by extension, with a binary default."""
    _, ext = os.path.splitext(name)
    ext = ext.lower()
    cached = _type_cache.get(ext)
    if cached is None:
        guessed, _ = mimetypes.guess_type("x" + ext, strict=False)
        cached = guessed or DEFAULT_CONTENT_TYPE
        if cached.startswith("text/") or cached in ("application/javascript", "application/json"):
            cached += "; charset=utf-8"
        _type_cache[ext] = cached
    return cached


def url_segments(url_path: bytes) -> list[str]:
    """Decode a URL path into safe segments, or raise 404.

    Rejected: NUL bytes, invalid UTF-8 (overlong forms included), '..' segments
    (raw or percent-encoded, after decoding), backslashes, and '*'.
    """
    raw = unquote_to_bytes(url_path)
    if b"\x00" in raw or b"\\" in raw:
        raise HttpError(404, "path contains a forbidden byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(404, "path is not valid UTF-8") from exc
    if not text.startswith("/"):
        raise HttpError(404, "path is not absolute")
    segments = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise HttpError(404, "path leaves the root")
        segments.append(segment)
    return segments


@dataclass(slots=True)
class OpenedFile:
    """An open regular file and what `fstat` of that descriptor said about it."""

    fd: int
    name: str
    size: int
    mtime: float
    mtime_ns: int
    on_close: Callable[[], None] | None = None
    """Set when the descriptor is shared (the open-file cache): close releases it."""
    heads: dict[tuple[bool, str], tuple[str, bytes]] | None = None
    """Set by the open-file cache: 200 heads already rendered for this file version,
    by (keep-alive, HTTP version), each with the Date it carries."""

    @property
    def etag(self) -> str:
        return f'"{self.size:x}-{self.mtime_ns:x}"'

    @property
    def content_type(self) -> str:
        return content_type(self.name)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            if self.on_close is not None:
                self.on_close()
            else:
                os.close(fd)


class Kind(enum.Enum):
    FILE = "file"
    LISTING = "listing"
    REDIRECT = "redirect"


@dataclass(slots=True)
class Resolved:
    """What a URL path names: an open file, a directory listing, or a slash redirect."""

    kind: Kind
    file: OpenedFile | None = None
    listing: bytes = b""
    location: str = ""


class Resolver(Protocol):
    """Maps a URL path to what it names: `Root` itself, or the open-file cache."""

    def resolve(self, url_path: bytes) -> Resolved: ...


class Root:
    """The served folder. Resolves URL paths to open files without leaving it."""

    def __init__(self, path: str, *, listing: bool = False) -> None:
        self.path = os.path.realpath(path)
        self.listing = listing
        self._prefix = self.path.rstrip(os.sep) + os.sep

    def _inside(self, real: str) -> bool:
        return real == self.path or real.startswith(self._prefix)

    def _check_fd(self, fd: int, joined: str) -> None:
        real = os.readlink(f"/proc/self/fd/{fd}") if _PROC_FD else os.path.realpath(joined)
        if not self._inside(real):
            raise HttpError(404, "path resolves outside the root")

    def _open(self, joined: str) -> tuple[int, os.stat_result]:
        if not _PROC_FD and not self._inside(os.path.realpath(joined)):
            raise HttpError(404, "path resolves outside the root")
        try:
            fd = os.open(joined, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise HttpError(404, "no such file") from exc
        except PermissionError as exc:
            raise HttpError(403, "permission denied") from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
                raise HttpError(404, "unresolvable path") from exc
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise HttpError(503, "out of file descriptors") from exc
            raise
        try:
            self._check_fd(fd, joined)
            return fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise

    def resolve(self, url_path: bytes) -> Resolved:
        """Open what `url_path` names inside the root, or raise `HttpError` (403/404)."""
        segments = url_segments(url_path)
        joined = os.path.join(self.path, *segments)
        fd, info = self._open(joined)
        if stat.S_ISDIR(info.st_mode):
            try:
                return self._resolve_dir(fd, joined, url_path, segments)
            finally:
                os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise HttpError(403, "not a regular file")
        name = segments[-1] if segments else ""
        return Resolved(Kind.FILE, file=_opened(fd, name, info))

    def _resolve_dir(self, fd: int, joined: str, url_path: bytes, segments: list[str]) -> Resolved:
        if not url_path.endswith(b"/"):
            # Built from the decoded segments, never echoed: "//host/x" must not
            # become a protocol-relative Location, nor raw bytes a header.
            location = "/" + "".join(quote(segment) + "/" for segment in segments)
            return Resolved(Kind.REDIRECT, location=location)
        index_path = os.path.join(joined, INDEX_FILE)
        try:
            index_fd, index_info = self._open(index_path)
        except HttpError:
            index_fd = -1
        if index_fd >= 0:
            if stat.S_ISREG(index_info.st_mode):
                return Resolved(Kind.FILE, file=_opened(index_fd, INDEX_FILE, index_info))
            os.close(index_fd)
        if not self.listing:
            raise HttpError(404, "directory without index")
        return Resolved(Kind.LISTING, listing=render_listing("/" + "/".join(segments), fd))


def _opened(fd: int, name: str, info: os.stat_result) -> OpenedFile:
    return OpenedFile(fd, name, info.st_size, info.st_mtime, info.st_mtime_ns)


def render_listing(url_dir: str, dir_fd: int) -> bytes:
    """An HTML index of a directory; every name is escaped for HTML and for URLs."""
    entries = []
    with os.scandir(dir_fd) as scan:
        for entry in scan:
            is_dir = entry.is_dir(follow_symlinks=False)
            entries.append((not is_dir, entry.name, is_dir))
    entries.sort()
    title = html.escape(url_dir if url_dir.endswith("/") else url_dir + "/")
    rows = ['<li><a href="../">../</a></li>'] if url_dir not in ("", "/") else []
    for _, name, is_dir in entries:
        suffix = "/" if is_dir else ""
        raw = os.fsencode(name)  # names need not be UTF-8: link the bytes, show a repair
        href = quote(raw, safe="") + suffix
        shown = html.escape(raw.decode("utf-8", "replace"))
        rows.append(f'<li><a href="{html.escape(href)}">{shown}{suffix}</a></li>')
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Index of {title}</title>"
        f"</head>\n<body><h1>Index of {title}</h1>\n<ul>\n"
        + "\n".join(rows)
        + "\n</ul></body></html>\n"
    )
    return page.encode("utf-8")


# Ranges (RFC 9110 14.2) ---------------------------------------------------------------


class RangeKind(enum.Enum):
    FULL = "full"  # no Range, an invalid one, or several: send 200 with the whole file
    PARTIAL = "partial"  # one satisfiable range: 206
    UNSATISFIABLE = "unsatisfiable"  # 416 with Content-Range: bytes */size


@dataclass(frozen=True, slots=True)
class ByteRange:
    kind: RangeKind
    start: int = 0
    end: int = 0  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


FULL = ByteRange(RangeKind.FULL)
UNSATISFIABLE = ByteRange(RangeKind.UNSATISFIABLE)


_DIGITS = re.compile(r"[0-9]+")
_HUGE = 1 << 63
"""Past any file size; longer digit strings are not even converted (int() refuses
over 4,300 digits, and a header may hold 16 KiB of them)."""


def _bounded_int(digits: str) -> int:
    return _HUGE if len(digits) > 19 else min(int(digits), _HUGE)


def parse_range(header: str | None, size: int) -> ByteRange:
    """Interpret a Range header for a representation of `size` bytes.

    A syntactically invalid header is ignored (RFC 9110 14.2: "MAY ignore").
    Several ranges are answered with the whole file (200), which the RFC allows
    and which can never be wrong.
    """
    if header is None:
        return FULL
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return FULL
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) != 1:
        return FULL
    first, dash, last = parts[0].partition("-")
    if not dash or not _DIGITS.fullmatch(first + "0") or not _DIGITS.fullmatch(last + "0"):
        return FULL  # "0" lets an empty side through; str.isdigit would take "²"
    if first == "":
        if last == "":
            return FULL
        suffix = _bounded_int(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(RangeKind.PARTIAL, max(0, size - suffix), size - 1)
    start = _bounded_int(first)
    end = _bounded_int(last) if last else size - 1
    if last and end < start:
        return FULL
    if start >= size:
        return UNSATISFIABLE
    return ByteRange(RangeKind.PARTIAL, start, min(end, size - 1))


# Conditionals (RFC 9110 13) -----------------------------------------------------------


def _etag_list(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def not_modified(
    if_none_match: str | None, if_modified_since: str | None, file: OpenedFile
) -> bool:
    """True when a GET/HEAD should get 304 (RFC 9110 13.1.2, 13.1.3, 13.2.2)."""
    if if_none_match is not None:
        tags = _etag_list(if_none_match)
        return "*" in tags or any(_weak_equal(tag, file.etag) for tag in tags)
    if if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        return since is not None and int(file.mtime) <= since
    return False


def if_range_matches(if_range: str | None, file: OpenedFile) -> bool:
    """True when a Range may be honoured (RFC 9110 13.1.5): strong ETag or exact date."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"'):
        return value == file.etag
    if value.startswith("W/"):
        return False
    date = parse_http_date(value)
    return date is not None and int(file.mtime) == int(date)
