"""Reading a server's --metrics endpoint: its samples, a counter waited for, the bytes
sent by strategy, and which strategy really sends a body."""

from __future__ import annotations

import re
import time
import urllib.request
from urllib.parse import urlsplit

from tests.support.servers import Child
from tests.support.timing import DEADLINE, SETTLE
from zcserve.server.config import MEMORY_FILE_MAX

SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")
SENT = "zcserve_sent_bytes_total"
FALLBACKS = "zcserve_strategy_fallbacks_total"
ACTIVE = "zcserve_active_connections"
OK = 'zcserve_requests_total{status="200"}'


def scrape(url: str) -> dict[str, float]:
    """Every sample at `url`, by name and labels (`name{label="x"}`); the page must be
    Prometheus text with nothing else on it."""
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name, labels, value = match.groups()
        samples[name + (labels or "")] = float(value.replace("+Inf", "inf"))
    return samples


def settled(url: str, key: str, want: float, seconds: float = SETTLE) -> dict[str, float]:
    """Scrape until `key` reaches `want` or the deadline passes; the last scrape."""
    deadline = time.monotonic() + seconds
    while True:
        samples = scrape(url)
        if samples.get(key) == want or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def sent_by_strategy(samples: dict[str, float]) -> dict[str, float]:
    """`zcserve_sent_bytes_total` by its strategy label."""
    prefix = SENT + '{strategy="'
    return {k[len(prefix) : -2]: v for k, v in samples.items() if k.startswith(prefix)}


def moved_by(strategy: str, *, size: int, tls: bool = False) -> str:
    """The strategy that really sends a body of `size` bytes: auto picks sendfile on
    plain TCP and the userspace fallback under TLS; memory holds files up to
    --memory-file-max (16 KiB) and sends the others as auto does."""
    if strategy == "memory" and size <= MEMORY_FILE_MAX:
        return "memory"
    if strategy in ("auto", "memory"):
        return "fallback" if tls else "sendfile"
    return strategy


def metrics_port_of(child: Child) -> int:
    """The port of the metrics listener a `--metrics` child announced."""
    assert child.metrics_url is not None, "started without --metrics"
    port = urlsplit(child.metrics_url).port
    assert port is not None
    return port
