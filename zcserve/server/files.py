"""Files without sockets: map a URL path inside the root, open it safely, and answer
the questions HTTP asks of it (validators, ranges, conditionals, listings).

Containment is checked on the descriptor actually opened (its /proc/self/fd link),
not on the path string, so a symlink swapped in between the check and the open
cannot leak a file from outside the root.
"""

from __future__ import annotations

import enum
import errno
import mimetypes
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote_to_bytes

from zcserve.errors import HttpError
from zcserve.server.http import parse_http_date
from zcserve.server.listing import (
    LISTING_MAX,
    Entry,
    ListingCache,
    ListingQuery,
    RenderedPage,
    paginate,
    render_html,
    render_json,
)

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK  # no FIFO hangs
_PROC_FD = os.path.isdir("/proc/self/fd")
WHOLES_HELD = 2
"""Whole answers (head and body) a file held in memory keeps at once, as for the
keep-alive and the closing variant of HTTP/1.1; more, and they are made afresh."""
LISTING_CACHE_BYTES = 32 * 1024 * 1024
"""Rendered listing pages kept at most, in all: a few pages of 10,000 entries."""
LISTING_CACHE_AGE = 1.0
"""Seconds a rendered page is reused: a listed size or date is at most this stale."""
INDEX_FILE = "index.html"
WELL_KNOWN = ".well-known"
"""The one dot-named folder served without `--hidden` (RFC 8615: ACME, security.txt)."""
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
    """Decode a URL path into safe segments, or raise 404 (see `split_url_path`)."""
    return split_url_path(url_path)[0]


def split_url_path(url_path: bytes) -> tuple[list[str], bool]:
    """Decode a URL path into safe segments, and whether it ends as a directory does
    (a slash or a "." segment, raw or encoded), or raise 404.

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
    pieces = text.split("/")
    for segment in pieces:
        if segment in ("", "."):
            continue
        if segment == "..":
            raise HttpError(404, "path leaves the root")
        segments.append(segment)
    return segments, pieces[-1] in ("", ".")


def _refuse_hidden(segments: list[str]) -> None:
    """404 for a segment starting with "." (`.env`, `.git/`), as nginx setups deny
    them: such files are rarely meant for the web. `/.well-known/` (RFC 8615) is
    the exception, at the top of the path only."""
    named = segments[1:] if segments[:1] == [WELL_KNOWN] else segments
    for segment in named:
        if segment.startswith("."):
            raise HttpError(404, "hidden path segment")


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
    body: bytes | None = None
    """The whole file's bytes, when the memory cache holds them (`--memory-cache`)."""
    wholes: dict[tuple[bool, str], tuple[str, bytes]] | None = None
    """With `body`: whole 200 answers, head and body, rendered once per Date second."""
    encoding: str = ""
    """Set for a precompressed sidecar standing in for the file it encodes (its
    name, so its Content-Type, is the original's): the Content-Encoding."""

    @property
    def etag(self) -> str:
        if self.encoding:  # the encoded bytes are a representation of their own
            return f'"{self.size:x}-{self.mtime_ns:x}-{self.encoding}"'
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
    directory: str = ""
    """A listing's URL path; `folder` is where it is, `version` its stat identity."""
    folder: str = ""
    version: tuple[object, ...] = ()
    location: str = ""


def identity(info: os.stat_result) -> tuple[object, ...]:
    """What changes when a file or folder is replaced, rewritten, renamed, or made
    unreadable: mode, inode, device, links, owner, group, size, mtime and ctime
    (ctime moves on chmod, chown, rename and link)."""
    return (info[:7], info.st_mtime_ns, info.st_ctime_ns)


class Resolver(Protocol):
    """Maps a URL path to what it names: `Root` itself, or the open-file cache."""

    listings: ListingCache
    """Rendered listing pages, kept briefly (`respond` fills it)."""

    def resolve(self, url_path: bytes) -> Resolved: ...

    def render_listing(self, resolved: Resolved, query: ListingQuery) -> RenderedPage:
        """Read, sort and render a listing: blocking work, for a thread."""

    def cached(self, url_path: bytes) -> OpenedFile | None:
        """The file `url_path` named when last resolved, if a stat shows it still does;
        None: ask `resolve`. The hot path's lookup, with no `Resolved` made."""


class Root:
    """The served folder. Resolves URL paths to open files without leaving it."""

    def __init__(
        self,
        path: str,
        *,
        listing: bool = False,
        hidden: bool = False,
        listing_max: int = LISTING_MAX,
    ) -> None:
        self.path = os.path.realpath(path)
        self.listing = listing
        self.hidden = hidden
        """Serve and list names starting with "." too (`--hidden`)."""
        self.listing_max = listing_max
        """Entries on one listing page (`--listing-max`)."""
        self.listings = ListingCache(LISTING_CACHE_BYTES, LISTING_CACHE_AGE)
        self._prefix = self.path.rstrip(os.sep) + os.sep

    def cached(self, url_path: bytes) -> OpenedFile | None:
        """Nothing is kept here: the open-file cache keeps files."""
        return None

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
            if exc.errno in (errno.ENXIO, errno.ENODEV):  # a UNIX socket, a device
                raise HttpError(403, "not a regular file") from exc
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
        """Open what `url_path` names inside the root, or raise `HttpError` (403/404).

        A regular file named as a directory (`/file/`, `/file/.`) is 404, as
        open("file/") is ENOTDIR; every other non-directory, non-regular file is 403."""
        segments, as_directory = split_url_path(url_path)
        if not self.hidden:
            _refuse_hidden(segments)
        joined = os.path.join(self.path, *segments)
        fd, info = self._open(joined)
        if stat.S_ISDIR(info.st_mode):
            try:
                return self._resolve_dir(fd, info, joined, url_path, segments)
            finally:
                os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise HttpError(403, "not a regular file")
        if as_directory:
            os.close(fd)
            raise HttpError(404, "a file named as a directory")
        name = segments[-1] if segments else ""
        return Resolved(Kind.FILE, file=_opened(fd, name, info))

    def _resolve_dir(
        self, fd: int, info: os.stat_result, joined: str, url_path: bytes, segments: list[str]
    ) -> Resolved:
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
        url_dir = "/" + "/".join(segments)
        return Resolved(Kind.LISTING, directory=url_dir, folder=joined, version=identity(info))

    def list_folder(self, resolved: Resolved) -> list[Entry]:
        """A listing's entries, read afresh (see `list_entries`)."""
        fd, info = self._open(resolved.folder)
        try:
            if not stat.S_ISDIR(info.st_mode):
                raise HttpError(404, "no longer a folder")
            return list_entries(
                resolved.directory,
                fd,
                hidden=self.hidden,
                inside=self._inside,
                folder=resolved.folder,
            )
        finally:
            os.close(fd)

    def render_listing(self, resolved: Resolved, query: ListingQuery) -> RenderedPage:
        """One listing page. It reads and stats every entry and sorts them all, so
        the server runs it in a thread, off the loop."""
        page = paginate(self.list_folder(resolved), query, self.listing_max)
        if query.as_json:
            body, media = render_json(resolved.directory, page, query), "application/json"
        else:
            body, media = render_html(resolved.directory, page, query), "text/html"
        return RenderedPage(body, media, page.pages)


def _opened(fd: int, name: str, info: os.stat_result) -> OpenedFile:
    return OpenedFile(fd, name, info.st_size, info.st_mtime, info.st_mtime_ns)


def list_entries(
    url_dir: str,
    dir_fd: int,
    *,
    hidden: bool = False,
    inside: Callable[[str], bool] | None = None,
    folder: str = "",
) -> list[Entry]:
    """The entries of a directory worth listing, with their size and mtime.

    Only names the server would serve are listed: names that are not UTF-8 or hold
    a backslash (refused with 404), dot-names unless `hidden` (but `.well-known` at
    the root), anything neither a folder nor a regular file (403), dangling
    symlinks included, and symlinks whose target is not `inside` the root (404)
    are left out, rather than listed as links that fail.
    """
    at_root = url_dir in ("", "/")
    entries = []
    with os.scandir(dir_fd) as scan:
        for entry in scan:
            name = entry.name
            try:
                os.fsencode(name).decode("utf-8")  # strict: undoes surrogateescape
            except UnicodeDecodeError:
                continue
            if "\\" in name:
                continue
            if name.startswith(".") and not (hidden or (at_root and name == WELL_KNOWN)):
                continue
            try:
                is_dir = entry.is_dir()
                if not is_dir and not entry.is_file():
                    continue
                info = entry.stat()  # follows a symlink, as serving it would
                if inside is not None and entry.is_symlink():
                    if not inside(os.path.realpath(os.path.join(folder, name))):
                        continue
            except OSError:
                continue
            entries.append(Entry(name, is_dir, 0 if is_dir else info.st_size, info.st_mtime))
    return entries


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
    one = _one_range(parts[0], size)
    if one is not None:
        return one
    # Invalid, or a suffix of an empty file: satisfiable (14.1.3), yet no 206 can say
    # "0 bytes", so 200, as nginx; but a zero-length suffix is unsatisfiable anywhere.
    first, _, last = parts[0].partition("-")
    if size == 0 and first == "" and _DIGITS.fullmatch(last) and _bounded_int(last) == 0:
        return UNSATISFIABLE
    return FULL


MAX_RANGES = 16
"""Ranges one request may ask for before it gets the whole file: nginx's max_ranges
has no default cap, Apache's MaxRanges is 200; 16 covers PDF readers and video
seeking, and after coalescing no request can cost more than the file itself."""


def _one_range(spec: str, size: int) -> ByteRange | None:
    """One range-spec as a ByteRange (PARTIAL or UNSATISFIABLE), or None when it is
    not a valid range-spec (or the file is empty, where no part can say "0 bytes")."""
    first, dash, last = spec.partition("-")
    if not dash or not _DIGITS.fullmatch(first + "0") or not _DIGITS.fullmatch(last + "0"):
        return None  # "0" lets an empty side through; str.isdigit would take "²"
    if first == "":
        if last == "" or size == 0:
            return None
        suffix = _bounded_int(last)
        if suffix == 0:
            return UNSATISFIABLE
        return ByteRange(RangeKind.PARTIAL, max(0, size - suffix), size - 1)
    start = _bounded_int(first)
    end = _bounded_int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    return ByteRange(RangeKind.PARTIAL, start, min(end, size - 1))


def parse_ranges(header: str, size: int, max_ranges: int = MAX_RANGES) -> list[ByteRange]:
    """The satisfiable ranges of a Range header asking for several, coalesced.

    Returns `[FULL]` for an invalid header, an empty file or more than `max_ranges`
    ranges (the whole file, 200), `[UNSATISFIABLE]` when no range is satisfiable
    (416), else PARTIAL ranges. Overlapping and adjacent ranges are merged (RFC
    9110 14.2, 15.3.7.2), so the parts never add up to more than the file; the
    merged parts keep the order the client asked in (15.3.7.2)."""
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return [FULL]
    specs = [p.strip() for p in spec.split(",") if p.strip()]
    if not specs or len(specs) > max_ranges:
        return [FULL]
    asked: list[ByteRange] = []
    for text in specs:
        one = _one_range(text, size)
        if one is None:
            return [FULL]
        if one.kind is RangeKind.PARTIAL:
            asked.append(one)
    if not asked:
        return [UNSATISFIABLE]
    by_start = sorted(range(len(asked)), key=lambda i: asked[i].start)
    merged: list[tuple[int, int, int]] = []  # (first index asked, start, end)
    for i in by_start:
        piece = asked[i]
        if merged and piece.start <= merged[-1][2] + 1:
            first, start, end = merged[-1]
            merged[-1] = (min(first, i), start, max(end, piece.end))
        else:
            merged.append((i, piece.start, piece.end))
    merged.sort()
    return [ByteRange(RangeKind.PARTIAL, start, end) for _, start, end in merged]


# Conditionals (RFC 9110 13) -----------------------------------------------------------


class Precondition(enum.Enum):
    """The outcome of a GET or HEAD's preconditions (RFC 9110 13.2.2, steps 1-4)."""

    PASSED = "passed"
    FAILED = "failed"  # 412 Precondition Failed
    NOT_MODIFIED = "not modified"  # 304


def _etag_list(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def _date(value: str) -> float | None:
    """`parse_http_date`, also ignoring numbers too large for a C long (a 30-digit
    year), which it lets escape as OverflowError."""
    try:
        return parse_http_date(value)
    except OverflowError:
        return None


def preconditions(headers: Mapping[str, str], file: OpenedFile) -> Precondition:
    """Evaluate If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since
    in RFC 9110 13.2.2's order; If-Range (step 5) is `if_range_matches`.

    If-Match compares strongly and `*` matches any file (13.1.1); an
    If-Unmodified-Since that is not a valid date is ignored (13.1.4)."""
    if_match = headers.get("if-match")
    if if_match is not None:
        tags = _etag_list(if_match)
        if "*" not in tags and file.etag not in tags:  # ours is strong: W/ never equals
            return Precondition.FAILED
    else:
        if_unmodified_since = headers.get("if-unmodified-since")
        if if_unmodified_since is not None:
            since = _date(if_unmodified_since)
            if since is not None and int(file.mtime) > since:
                return Precondition.FAILED
    if not_modified(headers.get("if-none-match"), headers.get("if-modified-since"), file):
        return Precondition.NOT_MODIFIED
    return Precondition.PASSED


def not_modified(
    if_none_match: str | None, if_modified_since: str | None, file: OpenedFile
) -> bool:
    """True when a GET/HEAD should get 304 (RFC 9110 13.1.2, 13.1.3, 13.2.2)."""
    if if_none_match is not None:
        tags = _etag_list(if_none_match)
        return "*" in tags or any(_weak_equal(tag, file.etag) for tag in tags)
    if if_modified_since is not None:
        since = _date(if_modified_since)
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
    date = _date(value)
    return date is not None and int(file.mtime) == int(date)
