"""`LoadOptions`: one load run, validated once, and its defaults.

Each concern has its own validator; they run in a fixed order, so a run with
several faults reports the same one each time (`ConfigError`, one line).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from zcserve.errors import ConfigError
from zcserve.load.http import METHODS, Header, Target, parse_header, parse_target
from zcserve.runtime import LOOP_NAMES

DEFAULT_DURATION = 10.0
"""Seconds a run lasts when neither a duration nor a request count is given (wrk)."""
DEFAULT_CONNECTIONS = 10
"""wrk's default."""
CONNECT_CONCURRENCY = 256
"""Connects in flight per process, so a 10k burst fits a listen backlog of 4096."""
CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
"""Seconds the schedule's clock tells apart: a rate with slots closer than this
cannot be kept (or even counted), so it is refused."""


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """One load run, validated once; the CLI builds it and nothing else reads argv."""

    urls: tuple[str, ...]
    connections: int = DEFAULT_CONNECTIONS
    duration: float | None = None
    """Seconds to measure; None with `requests` None means `DEFAULT_DURATION`."""
    requests: int | None = None
    """Total requests to send, split exactly between the processes."""
    rate: float | None = None
    """Total requests per second (open model); None is the closed model."""
    warmup: float = 0.0
    processes: int | None = None
    """Worker processes; None is the CPU count. Capped by connections (and requests)."""
    timeout: float = 10.0
    verify: bool = False
    expect: str | None = None
    loop: str = "uvloop"
    connect_concurrency: int = CONNECT_CONCURRENCY
    insecure: bool = False
    """https: do not verify the server's certificate or host name."""
    cacert: str | None = None
    """https: trust only the CA certificates in this PEM file."""
    method: str = "GET"
    """One of `METHODS`; HEAD responses have no body whatever their Content-Length."""
    headers: tuple[str, ...] = ()
    """Extra request headers, each `Name: value`, sent on every request; a Host,
    User-Agent or Accept among them replaces the default one."""
    expect_status: tuple[int, ...] | None = None
    """The statuses that count as success; None is every 2xx and 3xx. Any other complete
    response is counted, and is an error (`status_NNN`)."""

    def __post_init__(self) -> None:
        targets = self._check_urls()
        self._check_connections(targets)
        self._check_bounds()
        self._check_rate()
        self._check_times()
        self._check_processes()
        self._check_expect()
        self._check_loop()
        self._check_tls(targets)
        self._check_request()

    def _check_urls(self) -> list[Target]:
        """At least one URL, each one parsed; stores `urls` as a tuple."""
        if isinstance(self.urls, str):
            raise ConfigError("urls must be a sequence of URLs, not one string")
        object.__setattr__(self, "urls", tuple(self.urls))
        if not self.urls:
            raise ConfigError("no URL given; expected http://host[:port]/path or https://...")
        return [parse_target(url) for url in self.urls]

    def _check_connections(self, targets: list[Target]) -> None:
        """At least one connection, and one per origin."""
        if self.connections < 1:
            raise ConfigError(f"connections must be at least 1, not {self.connections}")
        origins = {target.origin for target in targets}
        if len(origins) > self.connections:
            raise ConfigError(
                f"{len(origins)} hosts need at least {len(origins)} connections, "
                f"not {self.connections}"
            )

    def _check_bounds(self) -> None:
        """Exactly one of `duration` and `requests` bounds the run (default: a duration)."""
        if self.duration is not None and self.requests is not None:
            raise ConfigError("give a duration or a request count, not both")
        if self.duration is None and self.requests is None:
            object.__setattr__(self, "duration", DEFAULT_DURATION)
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"duration must be more than 0 seconds, not {self.duration:g}")
        if self.requests is not None and self.requests < 1:
            raise ConfigError(f"requests must be at least 1, not {self.requests}")

    def _check_rate(self) -> None:
        """More than 0 requests/s, and slots no closer than the clock resolves."""
        if self.rate is None:
            return
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(f"rate must be more than 0 requests/s, not {self.rate:g}")
        if self.rate * CLOCK_RESOLUTION > 1:
            raise ConfigError(
                f"rate {self.rate:g}/s is beyond the clock: it resolves {CLOCK_RESOLUTION:g} s, "
                f"so at most {1 / CLOCK_RESOLUTION:g} requests/s"
            )

    def _check_times(self) -> None:
        """The warm-up may be 0; the per-request timeout may not."""
        if not self.warmup >= 0:
            raise ConfigError(f"warm-up must be 0 or more seconds, not {self.warmup:g}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be more than 0 seconds, not {self.timeout:g}")

    def _check_processes(self) -> None:
        if self.processes is not None and self.processes < 1:
            raise ConfigError(f"processes must be at least 1, not {self.processes}")

    def _check_expect(self) -> None:
        """`expect` names a regular file holding the body of the one URL."""
        if self.expect is None:
            return
        if len(self.urls) != 1:
            raise ConfigError("--expect FILE compares one URL; give exactly one")
        if not os.path.isfile(self.expect):
            raise ConfigError(f"expected body {self.expect!r} is not a regular file")

    def _check_loop(self) -> None:
        """A known event loop, and at least one connect in flight."""
        if self.loop not in LOOP_NAMES:
            raise ConfigError(
                f"unknown loop {self.loop!r}; expected one of {', '.join(LOOP_NAMES)}"
            )
        if self.connect_concurrency < 1:
            raise ConfigError("connect concurrency must be at least 1")

    def _check_tls(self, targets: list[Target]) -> None:
        """`insecure` or `cacert` (not both), only with an https:// URL; `cacert` a file."""
        if self.insecure and self.cacert is not None:
            raise ConfigError("give --insecure or --cacert FILE, not both")
        if (self.insecure or self.cacert is not None) and not any(t.tls for t in targets):
            flag = "--insecure" if self.insecure else "--cacert"
            raise ConfigError(f"{flag} applies to https:// URLs; none given")
        if self.cacert is not None and not os.path.isfile(self.cacert):
            raise ConfigError(f"--cacert {self.cacert!r} is not a regular file")

    def _check_request(self) -> None:
        """A known method; headers that parse; statuses from 100 to 599."""
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}"
            )
        if isinstance(self.headers, str):
            raise ConfigError("headers must be a sequence of 'Name: value', not one string")
        object.__setattr__(self, "headers", tuple(self.headers))
        for line in self.headers:
            parse_header(line)
        if self.expect_status is not None:
            statuses = tuple(sorted(set(self.expect_status)))
            bad = [status for status in statuses if not 100 <= status <= 599]
            if bad or not statuses:
                raise ConfigError(
                    f"bad expected status {bad[0] if bad else 'list (empty)'}; "
                    "expected statuses from 100 to 599"
                )
            object.__setattr__(self, "expect_status", statuses)

    @property
    def header_fields(self) -> tuple[Header, ...]:
        return tuple(parse_header(line) for line in self.headers)

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(parse_target(url) for url in self.urls)

    @property
    def hash_bodies(self) -> bool:
        return self.verify or self.expect is not None

    @property
    def worker_count(self) -> int:
        wanted = self.processes if self.processes is not None else (os.cpu_count() or 1)
        limit = min(self.connections, self.requests or self.connections)
        return max(1, min(wanted, limit))
