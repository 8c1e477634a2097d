"""Sizes and durations as people type them: 4KiB, 1M, 64MiB, 1G; 10s, 500ms."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes in `text`; K, M, G, T are binary (1K = 1024), as in dd and nginx."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; expected for example 4096, 64KiB, 1M, 1GiB")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _POWERS[unit.lower()])


def format_size(size: int) -> str:
    """The shortest exact binary form: 4096 -> '4KiB', 1048576 -> '1MiB'."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        scale = 1024**power
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`: '10', '10s', '500ms', '2m'."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; expected for example 10s, 500ms, 2m")
    number, unit = match.groups()
    return float(number) * _SECONDS[(unit or "s").lower()]
