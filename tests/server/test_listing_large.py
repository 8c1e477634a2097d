"""A folder of 100,000 names: listings are built off the loop and paged, so a small
request is answered while they are rendered, and memory stays bounded.

Before, one listing of such a folder was 20.3 MB and took 1.7 s on the loop; ten at
once made a request for an empty file wait 25.7 s, and the server reached 534 MiB.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.servers import start_child

ENTRIES = 100_000
SMALL_WAIT_MOST = 0.1
"""Seconds a request for an empty file may wait while the listings are rendered."""
PEAK_RSS_MOST = 160 * 1024 * 1024
"""The server's peak RSS with ten listings of the folder in flight (534 MiB before)."""
QUERIES = (
    "", "?sort=size", "?sort=mtime", "?order=desc", "?sort=size&order=desc",
    "?sort=mtime&order=desc", "?page=2", "?page=5", "?format=json", "?page=10",
)  # fmt: skip
"""Ten listings of the folder, nearly all different: ten renderings, not one shared."""


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crowded")
    big = root / "big"
    big.mkdir()
    for i in range(ENTRIES):
        os.close(os.open(big / f"file-{i:06d}.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    (root / "empty.txt").write_bytes(b"")
    return root


def fetch(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.soak
def test_small_requests_are_answered_while_large_listings_render(crowded: Path) -> None:
    with start_child(str(crowded), "--listing", "--quiet") as child:
        port = urlsplit(child.url).port
        assert port is not None
        listings: dict[str, tuple[int, bytes]] = {}

        def list_folder(query: str) -> None:
            listings[query] = fetch(port, "/big/" + query)

        threads = [threading.Thread(target=list_folder, args=(q,)) for q in QUERIES]
        for thread in threads:
            thread.start()
        waits = []
        while any(thread.is_alive() for thread in threads):
            started = time.perf_counter()
            assert fetch(port, "/empty.txt") == (200, b"")
            waits.append(time.perf_counter() - started)
        for thread in threads:
            thread.join()
        rss = peak_rss(child.pid)

    waits.sort()
    p99, slowest = waits[len(waits) * 99 // 100], waits[-1]
    print(f"{len(waits)} small: p99 {p99 * 1e3:.1f} ms, max {slowest * 1e3:.1f} ms, {rss >> 20}MiB")
    assert len(waits) >= 3, "the listings ended before the small requests could overlap"
    assert slowest < SMALL_WAIT_MOST, f"an empty file waited {slowest:.3f}s"
    assert rss < PEAK_RSS_MOST, f"peak RSS {rss / 2**20:.0f} MiB"
    for query in QUERIES:
        status, body = listings[query]
        assert status == 200, query
        if "json" in query:
            document = json.loads(body)
            assert document["count"] == ENTRIES and len(document["entries"]) == 10_000
            assert document["next"] == "?format=json&page=2"
        else:
            assert body.count(b'<tr data-name="file-') == 10_000, query
            assert b"of 100,000 (page" in body
