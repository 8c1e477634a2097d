"""`--metrics`: Prometheus counters that match what the load generator counted,
under the name of the strategy that really moved the bytes."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests.support.httpclient import connect, read_response
from tests.support.metrics import ACTIVE, FALLBACKS, OK, moved_by, sent_by_strategy, settled
from tests.support.servers import start_child
from tests.support.site import SIZES, Site
from tests.support.tls import Certificate
from zcserve.load.run import LoadOptions, run_load
from zcserve.load.stats import LoadResult
from zcserve.server.metrics import Metrics
from zcserve.server.strategies import STRATEGY_NAMES

HELD = 3
"""Idle keep-alive connections a test holds open to read the gauge against."""


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
    with start_child(*args) as child:
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
        check_counts(samples, result, moved_by(strategy, size=SIZES["64k1.bin"]))
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
    with start_child(*args, *certificate.flags()) as child:
        metrics_url = child.metrics_url
        assert metrics_url is not None and child.url.startswith("https://127.0.0.1:")
        load = LoadOptions(
            urls=(f"{child.url}/64k1.bin", f"{child.url}/missing"),
            connections=4,
            requests=600,
            processes=1,
            cacert=certificate.cert,
        )
        result = run_load(load)
        ok = result.requests - result.errors.get("status_404", 0)
        samples = settled(metrics_url, OK, ok)
        check_counts(samples, result, moved_by(strategy, size=SIZES["64k1.bin"], tls=True))
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
