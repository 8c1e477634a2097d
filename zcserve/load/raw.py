"""`zcserve load --raw HOST:PORT`: the seed experiment's client, without HTTP.

Connect, read until the server closes, close; N times, one after another. The
server side is `zcserve serve --raw FILE`, which sends FILE to each connection
with the chosen copy strategy. Plain blocking sockets: one download at a time
needs no event loop, and one large buffer, reused by every `recv_into`, keeps the
client cheap (nothing is copied or parsed after the kernel). `timeout` bounds each
whole download, connect included, however slowly the bytes trickle in.
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.markup import escape

from zcserve.errors import ConfigError
from zcserve.load.report import describe_errors, format_ms
from zcserve.runtime import cpu_seconds, parse_host_port

DEFAULT_DOWNLOADS = 10
RECV_SIZE = 1024 * 1024
"""Bytes per recv_into: large, so the client's syscalls are few next to the server's."""


def parse_raw_address(text: str) -> tuple[str, int]:
    return parse_host_port(text, flag="--raw", example="127.0.0.1:8000")


@dataclass(frozen=True, slots=True)
class RawOptions:
    address: str
    downloads: int = DEFAULT_DOWNLOADS
    timeout: float = 10.0

    def __post_init__(self) -> None:
        parse_raw_address(self.address)
        if self.downloads < 1:
            raise ConfigError(f"downloads must be at least 1, not {self.downloads}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be more than 0 seconds, not {self.timeout:g}")


@dataclass(frozen=True)
class RawResult:
    """Sizes and times of each download; `errors` counts the ones that failed."""

    address: str
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    total_seconds: float
    errors: dict[str, int]
    cpu_seconds: float

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def megabytes_per_second(self) -> float:
        return self.total_bytes / 1e6 / self.total_seconds if self.total_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            mode="raw",
            downloads=len(self.sizes),
            sizes=list(self.sizes),
            seconds=list(self.seconds),
            total_bytes=self.total_bytes,
            megabytes_per_second=self.megabytes_per_second,
            error_total=sum(self.errors.values()),
        )
        return data


def _download(address: tuple[str, int], timeout: float, buffer: bytearray) -> int:
    """Bytes received until the server closed; TimeoutError once `timeout` has passed
    since the start, whether or not bytes still arrive."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(address, timeout=timeout) as sock:
        received = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the download outlasted the timeout")
            sock.settimeout(left)
            count = sock.recv_into(buffer)
            if not count:
                return received
            received += count


def run_raw(options: RawOptions) -> RawResult:
    """Download `options.downloads` times in sequence; the first connect must succeed."""
    address = parse_raw_address(options.address)
    buffer = bytearray(RECV_SIZE)
    sizes: list[int] = []
    seconds: list[float] = []
    errors: dict[str, int] = {}
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    for attempt in range(options.downloads):
        begin = time.perf_counter()
        try:
            size = _download(address, options.timeout, buffer)
        except (ConnectionRefusedError, socket.gaierror) as exc:
            if attempt == 0:
                why = exc.strerror if exc.strerror else str(exc)
                raise ConfigError(f"cannot connect to {options.address}: {why}") from None
            errors["connect"] = errors.get("connect", 0) + 1
            continue
        except TimeoutError:
            errors["timeout"] = errors.get("timeout", 0) + 1
            continue
        except OSError:
            errors["reset"] = errors.get("reset", 0) + 1
            continue
        seconds.append(time.perf_counter() - begin)
        sizes.append(size)
    total = time.perf_counter() - started
    return RawResult(
        address=options.address,
        sizes=tuple(sizes),
        seconds=tuple(seconds),
        total_seconds=total,
        errors=errors,
        cpu_seconds=cpu_seconds() - cpu_before,
    )


def summary_lines(result: RawResult) -> list[str]:
    lines = [
        f"zcserve load --raw {result.address}: {len(result.sizes)} downloads "
        f"in {result.total_seconds:.3f} s"
    ]
    if result.sizes:
        low, high = min(result.sizes), max(result.sizes)
        each = f"{low:,} (all equal)" if low == high else f"{low:,} to {high:,} (sizes differ)"
        lines.append(f"  bytes per download  {each}")
        lines.append(f"  throughput          {result.megabytes_per_second:,.1f} MB/s")
        ordered = sorted(result.seconds)
        middle = ordered[len(ordered) // 2]
        lines.append(
            f"  per download ms     min {format_ms(ordered[0] * 1000)}  "
            f"p50 {format_ms(middle * 1000)}  max {format_ms(ordered[-1] * 1000)}"
        )
    lines.append(f"  client CPU          {result.cpu_seconds:.2f} s")
    errors = describe_errors(result.errors)
    lines.append(f"[bold red]  {escape(errors)}[/]" if errors else "  errors              none")
    return lines
