"""Server configuration: one frozen dataclass, validated once, built by the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass

from zcserve.errors import ConfigError
from zcserve.runtime import LOOP_NAMES, LoopName
from zcserve.server.accesslog import ACCESS_LOG_FORMATS, AccessLogFormat
from zcserve.server.decorate import parse_header
from zcserve.server.files import MAX_RANGES
from zcserve.server.http import MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_PIPELINED, MAX_REQUEST_LINE
from zcserve.server.listing import LISTING_MAX
from zcserve.server.metrics import parse_address
from zcserve.server.precompressed import parse_encodings
from zcserve.server.strategies import (
    READALL_MAX,
    SENDFILE_MAX_CHUNK,
    STRATEGY_NAMES,
    StrategyName,
)

MEMORY_FILE_MAX = 16 * 1024
"""Largest file the `memory` strategy holds by default. Measured per request
(BENCHMARKS 11): memory beats sendfile by 1.6 µs at 4 KiB and 0.9 µs at 16 KiB,
and loses by 0.8 µs at 64 KiB, where the kernel's copy of the body costs more
than the syscall saved."""
MEMORY_CACHE_DEFAULT = 64 * 1024 * 1024
"""What `--strategy memory` holds without `--memory-cache`."""
ZERO_COPY_STRATEGIES = ("sendfile", "splice", "mmap")
"""Strategies that hand file pages to the kernel's socket path, which TLS cannot use."""

DEFAULT_BACKLOG = 4096
"""Listen backlog; asyncio's default of 100 drops SYNs under a burst (wrk's README)."""
MAX_BACKLOG = 65535
"""listen(2) takes an int, and Linux caps the backlog at net.core.somaxconn anyway."""
MAX_CHUNK_SIZE = 64 * 1024 * 1024
"""A chunk is a buffer per transfer: past this it is memory, not speed."""
MAX_SENDFILE_CHUNK = 0x7FFFF000
"""The most one sendfile(2) moves on Linux."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `zcserve serve` needs; nothing else reads argv."""

    root: str = "."
    host: str = "127.0.0.1"
    port: int = 8000
    strategy: StrategyName = "auto"
    loop: LoopName = "uvloop"
    listing: bool = False
    listing_max: int = LISTING_MAX
    """Entries on one listing page; the rest are on `?page=2` and on."""
    hidden: bool = False
    """Serve and list dot-names (`.env`, `.git/`); `/.well-known/` is served anyway."""
    chunk_size: int | None = None
    sendfile_chunk: int = SENDFILE_MAX_CHUNK
    readall_max: int = READALL_MAX
    """Largest range the readall strategy reads into memory; 503 past it."""
    readall_budget: int | None = None
    """Bytes all readall bodies may hold at once (per worker); None: a quarter of RAM,
    at most 4 GiB. A request past it gets 503 and Retry-After before its head."""
    backlog: int = DEFAULT_BACKLOG
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    max_connections: int = 10_000
    open_file_cache: int = 1024
    memory_cache: int | None = None
    """Bytes the `memory` strategy may hold (heads and bodies); None: off, unless the
    strategy is `memory`, which then holds up to MEMORY_CACHE_DEFAULT."""
    memory_file_max: int = MEMORY_FILE_MAX
    """Largest file the memory cache holds."""
    cache_valid: float = 0.0
    """Seconds a cached file is trusted without a stat (nginx's open_file_cache_valid)."""
    """Open descriptors kept for hot files; 0 turns the cache off."""
    cork: bool = True
    """Send a head with MSG_MORE so it leaves in one segment with the body's start."""
    max_request_line: int = MAX_REQUEST_LINE
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADER_COUNT
    max_pipelined: int = MAX_PIPELINED
    grace: float = 10.0
    access_log: str | None = None
    access_log_format: AccessLogFormat = "common"
    """common (CLF), combined (with referer and user agent) or json."""
    raw_file: str | None = None
    metrics: str | None = None
    """HOST:PORT of the Prometheus listener, or None."""
    tls_cert: str | None = None
    tls_key: str | None = None
    headers: tuple[str, ...] = ()
    """`--header` values, "Name: value", added to 2xx and 3xx answers."""
    max_ranges: int = MAX_RANGES
    """Ranges one request may ask for; past it the whole file is sent (200)."""
    cors: bool = False
    precompressed: tuple[str, ...] = ()
    """Content codings whose sidecars (x.css.br, .gz, .zst) are served, in this order."""
    """Allow any origin to read files, and answer CORS preflights."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(
                f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGY_NAMES)}"
            )
        if self.access_log_format not in ACCESS_LOG_FORMATS:
            raise ConfigError(
                f"unknown access log format {self.access_log_format!r}; expected one of "
                f"{', '.join(ACCESS_LOG_FORMATS)}"
            )
        if self.loop not in LOOP_NAMES:
            raise ConfigError(
                f"unknown loop {self.loop!r}; expected one of {', '.join(LOOP_NAMES)}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} out of range; expected 0-65535")
        self._check_tls()
        for header in self.headers:
            parse_header(header)
        if self.precompressed:
            parse_encodings(",".join(self.precompressed))
        if self.metrics is not None:
            parse_address(self.metrics)
        if self.raw_file is not None:
            if not os.path.isfile(self.raw_file):
                raise ConfigError(f"raw file {self.raw_file!r} is not a regular file")
            size = os.path.getsize(self.raw_file)
            if self.strategy == "readall" and size > self.readall_max:
                raise ConfigError(
                    f"raw file {self.raw_file!r} is {size} bytes, over --readall-max "
                    f"{self.readall_max}; raise it or pick another strategy"
                )
        elif not os.path.isdir(self.root):
            hint = ""
            if self.root.isdigit() and 0 < int(self.root) < 65536:  # `http.server 8000`
                hint = f"; did you mean --port {self.root}?"
            raise ConfigError(f"root {self.root!r} is not a directory{hint}")
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise ConfigError("chunk-size must be positive")
        for name, most in (
            ("chunk_size", MAX_CHUNK_SIZE),
            ("sendfile_chunk", MAX_SENDFILE_CHUNK),
            ("backlog", MAX_BACKLOG),
        ):
            value = getattr(self, name)
            if value is not None and value > most:
                raise ConfigError(f"{name.replace('_', '-')} {value} is more than {most}")
        positive = (
            "sendfile_chunk",
            "readall_max",
            "readall_budget",
            "backlog",
            "max_connections",
            "max_request_line",
            "max_header_bytes",
            "max_headers",
            "max_pipelined",
            "max_ranges",
            "listing_max",
            "memory_cache",
            "memory_file_max",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        for name in ("header_timeout", "keepalive_timeout", "send_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive, in seconds")
        if (self.strategy == "memory" or self.memory_cache) and not self.open_file_cache:
            raise ConfigError(
                "the memory cache keeps files in the open-file cache; "
                "--open-file-cache 0 turns both off"
            )
        if self.cache_valid < 0:
            raise ConfigError("cache-valid must be zero or more seconds")
        if self.open_file_cache < 0:
            raise ConfigError("open-file-cache must be 0 (off) or more")
        if self.grace < 0:
            raise ConfigError("grace must be zero or more seconds")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.tls_cert is None or self.tls_key is None:
            return
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if not os.path.isfile(path):
                raise ConfigError(f"{flag} {path!r} is not a file")
        if self.strategy in ZERO_COPY_STRATEGIES:
            raise ConfigError(
                f"--strategy {self.strategy} cannot carry TLS: records are encrypted in "
                "userspace, so file bytes must pass through it; use auto, fallback or readwrite"
            )
        if self.raw_file is not None:
            raise ConfigError("--raw speaks plain TCP; it cannot be combined with TLS")
