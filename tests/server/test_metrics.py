"""`--metrics`: Prometheus counters that match what the load generator counted,
under the name of the strategy that really moved the bytes."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.conftest import SIZES, Site
from tests.support.httpclient import connect, read_response
from tests.support.procs import serving
from tests.support.scripted import Certificate, make_certificate
from zcserve.load.run import LoadOptions, run_load
from zcserve.load.stats import LoadResult
from zcserve.server.metrics import Metrics
from zcserve.server.strategies import STRATEGY_NAMES

SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")
SETTLE_SECONDS = 20.0
"""Deadline for a counter to reach its value (worker snapshots lag by up to half a
second; a loaded CI machine lags more)."""
SENT = "zcserve_sent_bytes_total"
FALLBACKS = "zcserve_strategy_fallbacks_total"
ACTIVE = "zcserve_active_connections"
OK = 'zcserve_requests_total{status="200"}'
HELD = 3
"""Idle keep-alive connections a test holds open to read the gauge against."""


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
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


def settled(url: str, key: str, want: float, seconds: float = SETTLE_SECONDS) -> dict[str, float]:
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


def moved_by(strategy: str, tls: bool = False) -> str:
    """The strategy that really sends a body past 64 KiB: auto picks sendfile on
    plain TCP and the userspace fallback under TLS; memory holds only smaller
    files, and sends the others as auto does."""
    if strategy in ("auto", "memory"):
        return "fallback" if tls else "sendfile"
    return strategy


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certificate]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate")
    yield make_certificate(tmp_path_factory.mktemp("tls"))


def hold_connections(port: int, count: int, stack: ExitStack) -> None:
    """Open `count` keep-alive connections, each answered once, then left idle."""
    for _ in range(count):
        sock = stack.enter_context(connect(port))
        reader = stack.enter_context(sock.makefile("rb"))
        sock.sendall(b"GET /missing HTTP/1.1\r\nHost: test\r\n\r\n")
        response = read_response(reader)
        assert response is not None and response.status == 404
        assert response.headers.get("connection") != "close"


def check_counts(samples: dict[str, float], result: LoadResult, label: str) -> int:
    """The counters agree with the load generator; returns the 200s."""
    ok = result.requests - result.errors.get("status_404", 0)
    assert result.requests == 600 and ok > 0 and result.errors["status_404"] > 0
    assert result.failed == 0 and set(result.errors) == {"status_404"}
    assert samples[OK] == ok
    assert samples['zcserve_requests_total{status="404"}'] == result.errors["status_404"]
    assert sent_by_strategy(samples) == {label: ok * SIZES["64k1.bin"]}
    assert samples["zcserve_response_seconds_count"] == 600
    assert samples['zcserve_response_seconds_bucket{le="+Inf"}'] == 600
    return ok


@pytest.mark.parametrize(
    ("strategy", "workers"),
    [*((s, "1") for s in STRATEGY_NAMES), ("auto", "2"), ("sendfile", "2")],
)
def test_counters_match_the_load_generator(site: Site, strategy: str, workers: str) -> None:
    args = (site.root, "--strategy", strategy, "--workers", workers, "--metrics", "127.0.0.1:0")
    with serving(*args) as child:
        metrics_url = child.metrics_url
        assert metrics_url is not None and metrics_url.startswith("http://127.0.0.1:")
        assert child.lines[1] == f"zcserve: metrics on {metrics_url}"
        load = LoadOptions(
            urls=(f"{child.url}/64k1.bin", f"{child.url}/missing"),
            connections=4,
            requests=600,
            processes=1,
        )
        result = run_load(load)
        ok = result.requests - result.errors.get("status_404", 0)
        samples = settled(metrics_url, OK, ok)
        check_counts(samples, result, moved_by(strategy))
        assert samples[FALLBACKS] == 0  # auto found sendfile usable on every response
        assert samples["zcserve_connections_total"] >= 4
        assert samples["zcserve_workers"] == int(workers)
        # The load generator closed every connection: the gauge is back to exactly 0.
        assert settled(metrics_url, ACTIVE, 0)[ACTIVE] == 0
        with ExitStack() as held:
            hold_connections(child.port, HELD, held)
            assert settled(metrics_url, ACTIVE, HELD)[ACTIVE] == HELD
        assert settled(metrics_url, ACTIVE, 0)[ACTIVE] == 0


@pytest.mark.parametrize("strategy", ["auto", "fallback", "readwrite"])
def test_tls_counts_the_fallback(site: Site, certificate: Certificate, strategy: str) -> None:
    """Under TLS, sendfile cannot see the encrypted bytes: auto falls back and says so
    on every file response; an explicit userspace strategy is no fallback."""
    args = (site.root, "--strategy", strategy, "--metrics", "127.0.0.1:0")
    tls = ("--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key))
    with serving(*args, *tls) as child:
        metrics_url = child.metrics_url
        assert metrics_url is not None and child.url.startswith("https://127.0.0.1:")
        load = LoadOptions(
            urls=(f"{child.url}/64k1.bin", f"{child.url}/missing"),
            connections=4,
            requests=600,
            processes=1,
            cacert=str(certificate.cert),
        )
        result = run_load(load)
        ok = result.requests - result.errors.get("status_404", 0)
        samples = settled(metrics_url, OK, ok)
        check_counts(samples, result, moved_by(strategy, tls=True))
        assert samples[FALLBACKS] == (ok if strategy == "auto" else 0)
        assert settled(metrics_url, ACTIVE, 0)[ACTIVE] == 0


def test_merged_metrics_add_up() -> None:
    a, b = Metrics(), Metrics()
    a.response(200, 0.002)
    b.response(200, 3.0)
    b.response(404, 0.0001)
    a.sent("sendfile", 10)
    b.sent("sendfile", 5)
    b.sent("mmap", 7)
    a.fallbacks, b.fallbacks = 2, 3
    a.active_connections, b.active_connections = 1, 2
    b.error("reset")
    total = Metrics.merged([a, b])
    assert total.requests == {"200": 2, "404": 1}
    assert total.bytes_sent == {"sendfile": 15, "mmap": 7} and total.errors == {"reset": 1}
    assert total.fallbacks == 5 and total.active_connections == 3
    assert sum(total.latency_counts) == 3
    text = total.exposition(workers=2)
    assert 'zcserve_response_seconds_bucket{le="+Inf"} 3' in text
    assert 'zcserve_response_seconds_bucket{le="0.0025"} 2' in text
    assert 'zcserve_sent_bytes_total{strategy="mmap"} 7' in text
    assert "zcserve_strategy_fallbacks_total 5" in text
    assert "zcserve_active_connections 3" in text
    assert "zcserve_workers 2" in text
