"""An open-file cache, as nginx's open_file_cache: descriptors and their fstat kept
between requests, so a hot small file costs one stat(2) instead of open, readlink,
fstat and close.

Every hit is revalidated by a stat of the path (or, with `valid`, once per that
many seconds): if the path no longer names the same inode, size, mtime and ctime
(replaced, rewritten, truncated, deleted, or a symlink swapped in), the entry is
dropped and the path resolved afresh, with the root check. Descriptors are
shared by reference count: an evicted entry closes its descriptor when its last
response finishes. Idle entries close after `inactive`.

With a `MemoryCache` (`--memory-cache`), small files' bytes are kept too, so the
answer goes out as one send of head and body.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from zcserve.server.files import (
    WHOLES_HELD,
    Kind,
    OpenedFile,
    Resolved,
    Root,
    identity,
    url_segments,
)
from zcserve.server.listing import ListingCache, ListingQuery, RenderedPage

_monotonic = time.monotonic  # bound once: `current` runs on every cache hit

_FILE = Kind.FILE  # bound once: an enum member lookup costs a call on the hot path

DEFAULT_INACTIVE = 2.0
"""Seconds an unused entry keeps its descriptor (nginx's `inactive`, shortened:
reopening a file every two seconds costs nothing, idle descriptors do)."""


@dataclass(slots=True, eq=False)
class Entry:
    """One cached file: its descriptor, what fstat said, and what was rendered from it."""

    fd: int
    name: str
    path: bytes
    identity: tuple[object, ...]
    size: int
    mtime: float
    mtime_ns: int
    last_used: float
    users: int = 0
    evicted: bool = False
    heads: dict[tuple[bool, str], tuple[str, bytes]] = field(default_factory=dict)
    """Full-file 200 heads, rendered once per Date second (see `OpenedFile.heads`)."""
    checked: float = 0.0
    """When a stat last showed the path unchanged (monotonic seconds)."""
    body: bytes | None = None
    """The file's bytes, while the memory cache holds them."""
    wholes: dict[tuple[bool, str], tuple[str, bytes]] = field(default_factory=dict)
    """With `body`: whole answers, head and body (see `OpenedFile.wholes`)."""

    def lend(self) -> OpenedFile:
        self.users += 1
        # Positional, once per request: keywords cost more.
        return OpenedFile(
            self.fd, self.name, self.size, self.mtime, self.mtime_ns, self._release, self.heads,
            self.body, self.wholes,
        )  # fmt: skip

    def _release(self) -> None:
        self.users -= 1
        if self.evicted and self.users == 0:
            os.close(self.fd)

    def evict(self) -> None:
        if not self.evicted:
            self.evicted = True
            if self.users == 0:
                os.close(self.fd)


HEAD_ALLOWANCE = 512
"""Bytes counted per held body for its rendered heads."""


def _cost(entry: Entry) -> int:
    """What holding `entry` costs: its body, and the whole answers made from it."""
    return entry.size * (1 + WHOLES_HELD) + HEAD_ALLOWANCE


class MemoryCache:
    """The bytes of small files, `capacity` bytes in all (heads counted), the least
    recently used let go first. A file it cannot hold is still served, by the copy
    strategy; `held` and `evictions` show a cache that is too small."""

    def __init__(self, capacity: int, file_max: int) -> None:
        self.capacity = capacity
        self.file_max = file_max
        self.held = 0
        self.evictions = 0
        self._bodies: OrderedDict[Entry, None] = OrderedDict()

    def admit(self, entry: Entry) -> None:
        """Read `entry`'s file into memory, unless it changes while being read."""
        cost = _cost(entry)
        if not 0 < entry.size <= self.file_max or cost > self.capacity:
            return
        body = os.pread(entry.fd, entry.size, 0)
        if len(body) != entry.size or identity(os.fstat(entry.fd)) != entry.identity:
            return  # being written: it is read again when it settles
        entry.body = body
        self._bodies[entry] = None
        self.held += cost
        while self.held > self.capacity:
            self.forget(next(iter(self._bodies)))
            self.evictions += 1

    def touch(self, entry: Entry) -> None:
        self._bodies.move_to_end(entry)

    def forget(self, entry: Entry) -> None:
        if entry.body is not None:
            del self._bodies[entry]
            self.held -= _cost(entry)
            entry.body = None
            entry.wholes.clear()


class OpenFileCache:
    """Resolves like `Root.resolve`, keeping up to `capacity` regular files open.

    Keys are the raw URL paths, so "/f", "/f/" and "/%2ef" are separate keys, and an
    entry is made only for what `Root.resolve` served: its refusals (dot-names, a
    file named as a folder) hold on every hit without being checked again there.
    """

    def __init__(
        self,
        root: Root,
        capacity: int,
        *,
        inactive: float = DEFAULT_INACTIVE,
        valid: float = 0.0,
        memory: MemoryCache | None = None,
    ) -> None:
        self.root = root
        self.capacity = capacity
        self.inactive = inactive
        self.valid = valid
        """Seconds a hit is trusted without a stat (`--cache-valid`); 0: every hit."""
        self.memory = memory
        self.listings: ListingCache = root.listings
        self._entries: dict[bytes, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def current(self, url_path: bytes) -> Entry | None:
        """The entry for `url_path` if the path still names the file it holds (a stat,
        or none within `valid` of the last); a changed file's entry is dropped."""
        entry = self._entries.get(url_path)
        if entry is None:
            return None
        now = _monotonic()
        if now - entry.checked >= self.valid:  # always, with valid 0
            try:
                current = identity(os.stat(entry.path))
            except OSError:
                current = None
            if current != entry.identity:
                self._drop(url_path)
                return None
            entry.checked = now
        entry.last_used = now
        return entry

    def entry(self, url_path: bytes) -> Entry | None:
        """The entry for `url_path`, unchecked: for a caller that was just lent its file."""
        return self._entries.get(url_path)

    def cached(self, url_path: bytes) -> OpenedFile | None:
        entry = self.current(url_path)
        if entry is None:
            return None
        memory = self.memory
        if memory is not None:
            if entry.body is not None:
                memory.touch(entry)
            elif entry.size <= memory.file_max:  # let go for room earlier: take it back
                memory.admit(entry)
        return entry.lend()

    def resolve(self, url_path: bytes) -> Resolved:
        file = self.cached(url_path)
        if file is not None:
            return Resolved(_FILE, file)
        resolved = self.root.resolve(url_path)
        if resolved.kind is Kind.FILE and resolved.file is not None and self.capacity > 0:
            if not url_path.endswith(b"/"):  # an index.html is found through its folder
                resolved = Resolved(Kind.FILE, file=self._keep(url_path, resolved.file))
        return resolved

    def render_listing(self, resolved: Resolved, query: ListingQuery) -> RenderedPage:
        return self.root.render_listing(resolved, query)

    def _keep(self, url_path: bytes, file: OpenedFile) -> OpenedFile:
        # bytes: the path is stat'ed on every hit, and a str would be encoded each time
        path = os.fsencode(os.path.join(self.root.path, *url_segments(url_path)))
        info = os.fstat(file.fd)
        if len(self._entries) >= self.capacity:
            self._drop(next(iter(self._entries)))  # the oldest
        entry = Entry(
            fd=file.fd,
            name=file.name,
            path=path,
            identity=identity(info),
            size=file.size,
            mtime=file.mtime,
            mtime_ns=file.mtime_ns,
            last_used=time.monotonic(),
        )
        entry.checked = entry.last_used
        self._entries[url_path] = entry
        file.fd = -1  # the entry owns the descriptor now
        if self.memory is not None:
            self.memory.admit(entry)
        return entry.lend()

    def _drop(self, url_path: bytes) -> None:
        entry = self._entries.pop(url_path, None)
        if entry is not None:
            if self.memory is not None:
                self.memory.forget(entry)
            entry.evict()

    def sweep(self) -> None:
        """Close entries unused for `inactive` seconds."""
        horizon = time.monotonic() - self.inactive
        for key in [k for k, e in self._entries.items() if e.last_used < horizon]:
            self._drop(key)

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)
