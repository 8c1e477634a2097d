"""What the server, the load generator and the bench share about the process they
run in: the event loop, the descriptor limit, CPU time and `HOST:PORT` addresses.

Nothing here imports the server or the load generator, so either side can start
without loading the other.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Literal, get_args

from zcserve.errors import ConfigError

LoopName = Literal["uvloop", "asyncio"]
LOOP_NAMES: tuple[LoopName, ...] = get_args(LoopName)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for `--loop NAME` (None: asyncio's default), or `ConfigError`
    when uvloop is asked for and missing: a result labelled "uvloop" must be one."""
    if name == "asyncio":
        return None
    if name != "uvloop":
        raise ConfigError(f"unknown loop {name!r}; expected one of {', '.join(LOOP_NAMES)}")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        raise ConfigError("uvloop is not installed; use --loop asyncio") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_host_port(
    text: str, *, flag: str, example: str, allow_port_zero: bool = False
) -> tuple[str, int]:
    """`(host, port)` from `HOST:PORT` or `[V6]:PORT`, or `ConfigError` naming `flag`.

    Port 0 is a listener's "pick a free port"; a client cannot connect to it."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise ConfigError(f"bad {flag} address {text!r}; expected HOST:PORT, e.g. {example}")
    return host, int(port_text)
