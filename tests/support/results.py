"""The one way a test makes a `LoadResult` without running a load."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zcserve.load.stats import LoadResult, encode_histogram, new_histogram


def load_result(
    latencies: Sequence[int] = (), *, body_size: int = 100, **fields: Any
) -> LoadResult:
    """A closed-model result of one process with two connections over 2 s: one
    request of `body_size` bytes per latency (µs, recorded in its histogram), no
    failure; `fields` set any other field."""
    histogram = new_histogram()
    for value in latencies:
        histogram.record_value(value)
    base: dict[str, Any] = dict(
        urls=("http://127.0.0.1:1/",),
        model="closed",
        connections=2,
        processes=1,
        duration=2.0,
        requests=len(latencies),
        failed=0,
        body_bytes=body_size * len(latencies),
        errors={},
        histogram=encode_histogram(histogram),
        cpu_seconds=0.5,
    )
    base.update(fields)
    return LoadResult(**base)
