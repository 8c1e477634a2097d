"""`--metrics`: Prometheus counters that match what the load generator counted."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import pytest

from tests.conftest import SIZES, Site
from tests.procs import serving
from zcserve.load.run import LoadOptions, run_load
from zcserve.server.metrics import Metrics

SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


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


def settled(url: str, key: str, want: float, seconds: float = 5.0) -> dict[str, float]:
    """Scrape until `key` reaches `want` (worker snapshots lag by up to half a second)."""
    deadline = time.monotonic() + seconds
    while True:
        samples = scrape(url)
        if samples.get(key) == want or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_counters_match_the_load_generator(site: Site, workers: str) -> None:
    args = (site.root, "--strategy", "sendfile", "--workers", workers, "--metrics", "127.0.0.1:0")
    with serving(*args) as child:
        metrics_url = child.metrics_url
        assert metrics_url is not None and metrics_url.startswith("http://127.0.0.1:")
        assert child.lines[1] == f"zcserve: metrics on {metrics_url}"
        mid_run: list[dict[str, float]] = []
        load = LoadOptions(
            urls=(f"{child.url}/64k1.bin", f"{child.url}/missing"),
            connections=4,
            requests=600,
            processes=1,
        )
        watcher = threading.Thread(target=lambda: mid_run.append(scrape(metrics_url)))
        watcher.start()
        result = run_load(load)
        watcher.join()
        ok = result.requests - result.errors.get("status_404", 0)
        samples = settled(metrics_url, 'zcserve_requests_total{status="200"}', ok)
    assert result.requests == 600 and ok > 0 and result.errors["status_404"] > 0
    assert samples['zcserve_requests_total{status="200"}'] == ok
    assert samples['zcserve_requests_total{status="404"}'] == result.errors["status_404"]
    assert samples['zcserve_sent_bytes_total{strategy="sendfile"}'] == ok * SIZES["64k1.bin"]
    assert samples["zcserve_connections_total"] >= 4
    assert samples["zcserve_response_seconds_count"] == 600
    assert samples['zcserve_response_seconds_bucket{le="+Inf"}'] == 600
    assert samples["zcserve_workers"] == int(workers)
    assert mid_run and mid_run[0]["zcserve_active_connections"] >= 0


def test_merged_metrics_add_up() -> None:
    a, b = Metrics(), Metrics()
    a.response(200, 0.002)
    b.response(200, 3.0)
    b.response(404, 0.0001)
    a.sent("sendfile", 10)
    b.sent("sendfile", 5)
    b.error("reset")
    total = Metrics.merged([a, b])
    assert total.requests == {"200": 2, "404": 1}
    assert total.bytes_sent == {"sendfile": 15} and total.errors == {"reset": 1}
    assert sum(total.latency_counts) == 3
    text = total.exposition(workers=2)
    assert 'zcserve_response_seconds_bucket{le="+Inf"} 3' in text
    assert 'zcserve_response_seconds_bucket{le="0.0025"} 2' in text
    assert "zcserve_workers 2" in text
