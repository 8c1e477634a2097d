"""Load results: live counters while running, a mergeable `LoadResult` afterwards.

Latencies go into an HDR histogram (microseconds, 1 us to 1 hour, 3 significant
digits, as wrk2). Each worker process returns its histogram encoded; the parent
adds them back together, which is exact: merged percentiles equal those of one
histogram holding every value. TLS handshakes get a second histogram of the same
shape, so request latencies never include a handshake.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Literal

from hdrh.histogram import HdrHistogram

from zcserve.load.http import STATUS_KEYS, unexpected_statuses
from zcserve.load.plan import WorkerPlan

LOWEST_MICROS = 1
HIGHEST_MICROS = 3600 * 1_000_000
SIGNIFICANT_DIGITS = 3

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p75", 75.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)


Model = Literal["closed", "open"]
CLIENT_SATURATED = 0.9
"""Client CPU share (of wall time x processes) from which a run warns that the
client, not the server, may have set the pace."""
RATE_KEPT = 0.95
"""Open model: a run that sent less than this share of its target rate fell behind
its schedule by more than the last, late slots of each connection explain; it
says that the client or the server is saturated."""


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS)


def encode_histogram(histogram: HdrHistogram) -> str:
    """HdrHistogram's compressed base64 encoding, as results hold it."""
    text: str = histogram.encode().decode("ascii")
    return text


def merge_histograms(encoded: Sequence[str]) -> HdrHistogram:
    """One histogram holding every value of the encoded ones (exact)."""
    merged = new_histogram()
    for text in encoded:
        if text:  # results saved before handshakes were measured have none
            merged.decode_and_add(text)
    return merged


def figures_ms(histogram: HdrHistogram) -> dict[str, float]:
    """The PERCENTILES, max, min, mean and stdev of a microsecond histogram, in ms."""
    if histogram.get_total_count() == 0:
        return {name: 0.0 for name in (*dict(PERCENTILES), "max", "min", "mean", "stdev")}
    figures = {
        name: histogram.get_value_at_percentile(percentile) / 1000
        for name, percentile in PERCENTILES
    }
    figures["max"] = histogram.get_max_value() / 1000
    figures["min"] = histogram.get_min_value() / 1000
    figures["mean"] = round(histogram.get_mean_value() / 1000, 3)
    figures["stdev"] = round(histogram.get_stddev() / 1000, 3)
    return figures


def status_counts(counts: Mapping[int, int]) -> dict[int, int]:
    """Counts keyed `url * STATUS_KEYS + status` (see `LiveStats.statuses`) summed per
    status, sorted."""
    totals: dict[int, int] = {}
    for key, count in counts.items():
        status = key % STATUS_KEYS
        totals[status] = totals.get(status, 0) + count
    return dict(sorted(totals.items()))


def add_counts(into: dict[Any, int], counts: Mapping[Any, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count


def _clamp(micros: int) -> int:
    return min(max(micros, LOWEST_MICROS), HIGHEST_MICROS)


def record_spread(pending: dict[int, int], low: int, high: int, count: int, points: int) -> None:
    """Count `count` latencies spread evenly from `low` to `high` microseconds (the
    unsent slots of one connection: an arithmetic sequence) in `pending`, using at
    most `points` distinct values, each weighted; the total is exactly `count`."""
    if count <= 0:
        return
    points = max(1, min(points, count))
    if points == 1:
        pending[high] = pending.get(high, 0) + count
        return
    each, extra = divmod(count, points)
    span = high - low
    for point in range(points):
        micros = low + span * point // (points - 1)
        pending[micros] = pending.get(micros, 0) + each + (1 if point < extra else 0)


class UrlStats:
    """One URL's share of a phase's counters, kept when a run loads several URLs."""

    __slots__ = ("failed", "body_bytes", "pending", "histogram")

    def __init__(self) -> None:
        self.failed = 0
        self.body_bytes = 0
        self.pending: dict[int, int] = {}
        self.histogram = new_histogram()

    def flush(self) -> None:
        record = self.histogram.record_value
        for micros, count in self.pending.items():
            record(_clamp(micros), count)
        self.pending.clear()


class LiveStats:
    """One worker's counters for one phase (warm-up or measurement).

    Latencies are first counted in a dict keyed by microseconds and flushed into
    the histogram now and then: a dict increment costs a tenth of `record_value`.
    Statuses are counted the same way, keyed by int (`url * STATUS_KEYS + status`):
    no string and no judgement per response; which statuses are errors is worked out
    from these counts when they are read (the progress, four times a second, and the
    result), and the `status_NNN` errors are named at the end.
    """

    __slots__ = (
        "requests",
        "failed",
        "body_bytes",
        "header_bytes",
        "statuses",
        "unexpected",
        "by_url",
        "errors",
        "pending",
        "histogram",
        "handshakes",
        "handshake_histogram",
        "reconnects",
        "unsent",
    )

    def __init__(self, urls: int = 1, unexpected: bytes | None = None) -> None:
        self.requests = 0
        """Complete responses, whatever their status."""
        self.failed = 0
        """Requests that got no complete response (connect, reset, timeout, ...)."""
        self.body_bytes = 0
        self.header_bytes = 0
        """Bytes of the response heads (status lines and headers), not in `body_bytes`."""
        self.statuses: dict[int, int] = {}
        """Complete responses by `url * STATUS_KEYS + status`."""
        self.unexpected = unexpected_statuses(None) if unexpected is None else unexpected
        """1 for each status that is an error (see `http.unexpected_statuses`)."""
        self.by_url: list[UrlStats] | None = [UrlStats() for _ in range(urls)] if urls > 1 else None
        """Per-URL latencies, bytes and failures; None with one URL (the totals say it)."""
        self.errors: dict[str, int] = {}
        self.pending: dict[int, int] = {}
        self.histogram = new_histogram()
        self.handshakes = 0
        """Completed TLS handshakes; each one's duration is in `handshake_histogram`."""
        self.handshake_histogram = new_histogram()
        self.reconnects = 0
        """Requests sent again on a new connection: the reused one closed before any
        byte of the response (not failures)."""
        self.unsent = 0
        """Open model: slots due in the window that were never sent."""

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_total(self) -> int:
        """Errors so far, the responses with an unexpected status included."""
        unexpected = self.unexpected
        statuses = sum(
            count for key, count in self.statuses.items() if unexpected[key % STATUS_KEYS]
        )
        return sum(self.errors.values()) + statuses

    def flush(self) -> None:
        """Move the pending latencies into the histogram."""
        record = self.histogram.record_value
        for micros, count in self.pending.items():
            record(_clamp(micros), count)
        self.pending.clear()
        if self.by_url is not None:
            for one in self.by_url:
                one.flush()

    def all_errors(self) -> dict[str, int]:
        """Every error by kind, the unexpected statuses named (`status_404`)."""
        errors = dict(self.errors)
        for status, count in status_counts(self.statuses).items():
            if self.unexpected[status]:
                kind = f"status_{status}"
                errors[kind] = errors.get(kind, 0) + count
        return dict(sorted(errors.items()))

    def url_results(self, urls: Sequence[str]) -> tuple[UrlResult, ...]:
        """One row per URL (flush first); a URL given twice is one row, and one row is
        none (the totals say it)."""
        if self.by_url is None:
            return ()
        statuses: list[dict[int, int]] = [{} for _ in urls]
        for key, count in self.statuses.items():
            statuses[key // STATUS_KEYS][key % STATUS_KEYS] = count
        rows = [
            UrlResult(
                url=url,
                requests=sum(statuses[index].values()),
                failed=one.failed,
                body_bytes=one.body_bytes,
                status=dict(sorted(statuses[index].items())),
                histogram=encode_histogram(one.histogram),
            )
            for index, (url, one) in enumerate(zip(urls, self.by_url, strict=True))
        ]
        merged = merge_url_results([rows])
        return merged if len(merged) > 1 else ()

    def handshake(self, seconds: float) -> None:
        """Count one completed TLS handshake (one per connection: rare, recorded now)."""
        self.handshakes += 1
        self.handshake_histogram.record_value(_clamp(int(seconds * 1_000_000)))


@dataclass(frozen=True)
class UrlResult:
    """What one URL of several got: its row in the summary and in the JSON (`per_url`)."""

    url: str
    requests: int
    """Complete responses, whatever their status."""
    failed: int
    body_bytes: int
    status: Mapping[int, int]
    histogram: str

    def latency_ms(self) -> dict[str, float]:
        return figures_ms(merge_histograms([self.histogram]))

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "requests": self.requests,
            "failed": self.failed,
            "body_bytes": self.body_bytes,
            "status": {str(status): count for status, count in self.status.items()},
            "histogram": self.histogram,
            "latency_ms": self.latency_ms(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UrlResult:
        return cls(
            url=str(data["url"]),
            requests=int(data["requests"]),
            failed=int(data["failed"]),
            body_bytes=int(data["body_bytes"]),
            status=_statuses_from_json(data.get("status", {})),
            histogram=str(data["histogram"]),
        )


def _statuses_from_json(data: Mapping[str, Any]) -> dict[int, int]:
    return dict(sorted((int(status), int(count)) for status, count in data.items()))


def merge_url_results(groups: Iterable[Sequence[UrlResult]]) -> tuple[UrlResult, ...]:
    """The rows of several results (processes, clients) added up URL by URL, in the
    order the URLs first appear; histograms merge exactly."""
    by_url: dict[str, list[UrlResult]] = {}
    for rows in groups:
        for row in rows:
            by_url.setdefault(row.url, []).append(row)
    merged = []
    for url, rows in by_url.items():
        if len(rows) == 1:
            merged.append(rows[0])
            continue
        status: dict[int, int] = {}
        for row in rows:
            add_counts(status, row.status)
        histogram = merge_histograms([row.histogram for row in rows])
        merged.append(
            UrlResult(
                url=url,
                requests=sum(row.requests for row in rows),
                failed=sum(row.failed for row in rows),
                body_bytes=sum(row.body_bytes for row in rows),
                status=dict(sorted(status.items())),
                histogram=encode_histogram(histogram),
            )
        )
    return tuple(merged)


# How each field of a `LoadResult` merges and loads from JSON ---------------------

MergeRule = Callable[[Sequence["LoadResult"], str], Any]
"""The merged value of field `name` over several processes' results."""


def _rule(merge: MergeRule, load: Callable[[Any], Any]) -> dict[str, Any]:
    """A `LoadResult` field's metadata: how it merges, how its JSON value loads."""
    return {"merge": merge, "load": load}


def _kept(results: Sequence[LoadResult], name: str) -> Any:
    """A setting the processes share: the first one's."""
    return getattr(results[0], name)


def _summed(results: Sequence[LoadResult], name: str) -> Any:
    return sum(getattr(result, name) for result in results)


def _longest(results: Sequence[LoadResult], name: str) -> Any:
    """A length of time: the processes ran side by side, over the longest."""
    return max(getattr(result, name) for result in results)


def _histograms(results: Sequence[LoadResult], name: str) -> str:
    return encode_histogram(merge_histograms([getattr(result, name) for result in results]))


def _counts(results: Sequence[LoadResult], name: str) -> dict[Any, int]:
    total: dict[Any, int] = {}
    for result in results:
        add_counts(total, getattr(result, name))
    return dict(sorted(total.items()))


def _url_rows(results: Sequence[LoadResult], name: str) -> tuple[UrlResult, ...]:
    if not any(result.per_url for result in results):
        return ()
    merged = merge_url_results(result.url_rows() for result in results)
    return merged if len(merged) > 1 else ()


def _strings(data: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(one) for one in data)


def _model(data: Any) -> Model:
    return "open" if data == "open" else "closed"


def _error_counts(data: Mapping[str, Any]) -> dict[str, int]:
    return {str(kind): int(count) for kind, count in data.items()}


def _optional_float(data: Any) -> float | None:
    return None if data is None else float(data)


def _url_results(data: Iterable[Mapping[str, Any]]) -> tuple[UrlResult, ...]:
    return tuple(UrlResult.from_json(row) for row in data)


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured; `merge` adds the results of several processes.

    `requests` counts complete responses of any status; `failed` counts requests
    that got none. With `-n N`, requests + failed == N. A status not expected (by
    default a 4xx or 5xx), a body over its Content-Length or a hash mismatch is both a
    request and an error. A failed TLS
    handshake is a failed request (error kind "tls"). In the open model, the slots
    due in the window are requests + failed + `unsent`, and the latency histogram
    holds the unsent ones too, each charged from its due time to the end of the run.

    Each field says how the results of several processes merge and how its JSON
    loads (`_rule`): `merge` and `from_json` follow the fields, no list of their own.
    """

    urls: tuple[str, ...] = field(metadata=_rule(_kept, _strings))
    model: Model = field(metadata=_rule(_kept, _model))
    connections: int = field(metadata=_rule(_summed, int))
    processes: int = field(metadata=_rule(_summed, int))
    duration: float = field(metadata=_rule(_longest, float))
    """Seconds measured: closed model, from the end of the warm-up to the last
    response; open model, the window of the schedule (-d, or -n / rate)."""
    requests: int = field(metadata=_rule(_summed, int))
    failed: int = field(metadata=_rule(_summed, int))
    body_bytes: int = field(metadata=_rule(_summed, int))
    errors: Mapping[str, int] = field(metadata=_rule(_counts, _error_counts))
    histogram: str = field(metadata=_rule(_histograms, str))
    """The latency histogram, HdrHistogram's compressed base64 encoding."""
    cpu_seconds: float = field(metadata=_rule(_summed, float))
    """User + system CPU of every client process during the measurement."""
    target_rate: float | None = field(default=None, metadata=_rule(_kept, _optional_float))
    warmup: float = field(default=0.0, metadata=_rule(_kept, float))
    loop: str = field(default="uvloop", metadata=_rule(_kept, str))
    verified: bool = field(default=False, metadata=_rule(_kept, bool))
    tls_handshakes: int = field(default=0, metadata=_rule(_summed, int))
    """TLS handshakes completed: one per https connection opened, reconnects included."""
    handshake_histogram: str = field(default="", metadata=_rule(_histograms, str))
    """Handshake durations (TCP connect excluded), encoded like `histogram`; "" is none."""
    window_bytes: int = field(default=0, metadata=_rule(_summed, int))
    """Body bytes that arrived inside the measurement window, whichever request they
    belong to: a 64 MiB response to each of 512 connections may not finish in the
    window, yet its bytes still moved."""
    window_seconds: float = field(default=0.0, metadata=_rule(_longest, float))
    """Length of that window: the duration asked for, or the whole run with -n."""
    unsent: int = field(default=0, metadata=_rule(_summed, int))
    """Open model: slots due in the window that were never sent, because the server
    (or the client) fell behind; each is in the latency histogram, from its due time
    to the end of the run (wrk2's correction carried to the end)."""
    reconnects: int = field(default=0, metadata=_rule(_summed, int))
    """Connections the server closed (`Connection: close`, or an idle keep-alive
    closed), opened again; a request that met one closing before any byte of its
    response was sent again on the new one. Not failures."""
    wall_seconds: float = field(default=0.0, metadata=_rule(_summed, float))
    """Wall-clock seconds over which `cpu_seconds` was counted, summed over the
    processes: `cpu_seconds / wall_seconds` is how busy the client was."""
    status: Mapping[int, int] = field(
        default_factory=dict, metadata=_rule(_counts, _statuses_from_json)
    )
    """Complete responses by status (JSON: `"status": {"200": n, "206": n}`)."""
    header_bytes: int = field(default=0, metadata=_rule(_summed, int))
    """Bytes of the response heads (status lines and headers), apart from `body_bytes`."""
    per_url: tuple[UrlResult, ...] = field(default=(), metadata=_rule(_url_rows, _url_results))
    """One row per URL when the run loaded several; empty with one (the totals say it)."""

    @classmethod
    def of_worker(
        cls,
        plan: WorkerPlan,
        stats: LiveStats,
        *,
        duration: float = 0.0,
        cpu_seconds: float = 0.0,
        wall_seconds: float = 0.0,
        window_bytes: int = 0,
        window_seconds: float = 0.0,
    ) -> LoadResult:
        """One worker process's result: how it ran from `plan`, its counts from `stats`
        (flushed), its times as measured (none: a worker that died)."""
        return cls(
            # how it ran
            urls=plan.urls,
            model="closed" if plan.rate is None else "open",
            connections=plan.connections,
            processes=1,
            target_rate=plan.rate,
            warmup=plan.warmup,
            loop=plan.loop,
            verified=plan.hash_bodies,
            # what it counted
            requests=stats.requests,
            failed=stats.failed,
            body_bytes=stats.body_bytes,
            header_bytes=stats.header_bytes,
            status=status_counts(stats.statuses),
            errors=stats.all_errors(),
            histogram=encode_histogram(stats.histogram),
            unsent=stats.unsent,
            reconnects=stats.reconnects,
            tls_handshakes=stats.handshakes,
            handshake_histogram=encode_histogram(stats.handshake_histogram),
            per_url=stats.url_results(plan.urls),
            # when, and at what cost
            duration=duration,
            window_seconds=window_seconds,
            window_bytes=window_bytes,
            cpu_seconds=cpu_seconds,
            wall_seconds=wall_seconds,
        )

    # derived figures -----------------------------------------------------------

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration if self.duration > 0 else 0.0

    @property
    def achieved_rate(self) -> float:
        """Requests sent per second, answered or not: compare with `target_rate`."""
        sent = self.requests + self.failed
        return sent / self.duration if self.duration > 0 else 0.0

    @property
    def client_cpu_share(self) -> float:
        """Client CPU over the wall time it was counted in (1.0: every process was
        busy all the time); from the duration for results saved without it."""
        wall = self.wall_seconds or self.duration * self.processes
        return self.cpu_seconds / wall if wall > 0 else 0.0

    @property
    def rate_saturated(self) -> bool:
        """Open model: the requests sent fell short of the target rate (see `RATE_KEPT`)."""
        if self.target_rate is None or self.duration <= 0:
            return False
        return self.achieved_rate < RATE_KEPT * self.target_rate

    @property
    def client_saturated(self) -> bool:
        """The client used 90 % or more of its CPUs: it, not the server, may be the limit."""
        return self.client_cpu_share >= CLIENT_SATURATED

    @property
    def megabytes_per_second(self) -> float:
        """Body bytes per second in MB (10^6 bytes)."""
        return self.body_bytes / 1e6 / self.duration if self.duration > 0 else 0.0

    @property
    def window_megabytes_per_second(self) -> float:
        """Bytes that arrived in the window, per second of it (MB = 10^6 bytes): the
        throughput when responses are too large to complete within the window."""
        if self.window_seconds <= 0:
            return self.megabytes_per_second
        return self.window_bytes / 1e6 / self.window_seconds

    def decode_histogram(self) -> HdrHistogram:
        return merge_histograms([self.histogram])

    def latency_ms(self) -> dict[str, float]:
        """The PERCENTILES, max, min, mean and stdev of the latency in milliseconds."""
        return figures_ms(self.decode_histogram())

    def decode_handshake_histogram(self) -> HdrHistogram:
        return merge_histograms([self.handshake_histogram])

    def handshake_ms(self) -> dict[str, float]:
        """The same figures for TLS handshakes (all zero without TLS)."""
        return figures_ms(self.decode_handshake_histogram())

    def url_rows(self) -> tuple[UrlResult, ...]:
        """`per_url`, or for a one-URL result the one row its totals make."""
        if self.per_url or len(self.urls) != 1:
            return self.per_url
        return (
            UrlResult(
                url=self.urls[0],
                requests=self.requests,
                failed=self.failed,
                body_bytes=self.body_bytes,
                status=self.status,
                histogram=self.histogram,
            ),
        )

    @property
    def tls(self) -> bool:
        """True when any URL is https."""
        return any(url.lower().startswith("https:") for url in self.urls)

    # merging and JSON -------------------------------------------------------

    @classmethod
    def merge(cls, results: Sequence[LoadResult]) -> LoadResult:
        """One result for processes that ran side by side over the same period."""
        if not results:
            raise ValueError("nothing to merge")
        merged = {one.name: one.metadata["merge"](results, one.name) for one in fields(LoadResult)}
        return replace(results[0], **merged)

    def to_json(self) -> dict[str, Any]:
        """Every figure, derived ones included, as JSON-ready values."""
        data = asdict(self)
        data["urls"] = list(self.urls)
        data["errors"] = dict(self.errors)
        data["status"] = {str(status): count for status, count in self.status.items()}
        data["per_url"] = [row.to_json() for row in self.per_url]
        data.update(
            error_total=self.error_total,
            requests_per_second=self.requests_per_second,
            achieved_rate=self.achieved_rate,
            megabytes_per_second=self.megabytes_per_second,
            window_megabytes_per_second=self.window_megabytes_per_second,
            client_cpu_share=self.client_cpu_share,
            client_saturated=self.client_saturated,
            rate_saturated=self.rate_saturated,
            latency_ms=self.latency_ms(),
            handshake_ms=self.handshake_ms(),
        )
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoadResult:
        """The inverse of `to_json`; derived figures are recomputed, not read. A field
        without a default must be there (KeyError); the others may be missing."""
        values = {
            one.name: one.metadata["load"](data[one.name])
            for one in fields(LoadResult)
            if one.name in data or (one.default is MISSING and one.default_factory is MISSING)
        }
        return cls(**values)
