"""Ten listings of a crowded folder at once, and small requests meanwhile.

Run: `python benchmarks/listing_stall.py TREE ROOT`, where TREE is a zcserve
checkout and ROOT holds `big/` (many names) and `empty.txt`. It prints one
listing's time and size, the ten listings' wall time, the small requests'
latency, and the server's peak RSS and CPU time (BENCHMARKS §10).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time

QUERIES = (
    "", "?sort=size", "?sort=mtime", "?order=desc", "?sort=size&order=desc",
    "?sort=mtime&order=desc", "?page=2", "?page=5", "?format=json", "?page=10",
)  # fmt: skip


def fetch(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


def main(tree: str, root: str) -> None:
    command = [sys.executable, "-m", "zcserve", "serve", root, "--listing", "-q", "--port", "0"]
    server = subprocess.Popen(
        [*command, "--ready-json"], cwd=tree, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    while not line.startswith("{"):
        line = server.stdout.readline()
    port = int(json.loads(line)["url"].rstrip("/").rsplit(":", 1)[1])
    try:
        started = time.perf_counter()
        one = fetch(port, "/big/")
        one_seconds = time.perf_counter() - started
        threads = [threading.Thread(target=fetch, args=(port, "/big/" + q)) for q in QUERIES]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        waits = []
        while any(thread.is_alive() for thread in threads):
            asked = time.perf_counter()
            fetch(port, "/empty.txt")
            waits.append(time.perf_counter() - asked)
        for thread in threads:
            thread.join()
        ten_seconds = time.perf_counter() - started
        with open(f"/proc/{server.pid}/status") as status:
            peak = next(int(row.split()[1]) for row in status if row.startswith("VmHWM:"))
        with open(f"/proc/{server.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    finally:
        server.terminate()
        server.wait()
    waits.sort()
    print(
        f"one listing: {one_seconds:.2f}s {len(one) / 1e6:.1f} MB | ten at once: {ten_seconds:.2f}s"
        f" | small requests: {len(waits)}, p50 {waits[len(waits) // 2] * 1e3:.1f} ms,"
        f" p99 {waits[len(waits) * 99 // 100] * 1e3:.1f} ms, max {waits[-1] * 1e3:.1f} ms"
        f" | peak RSS {peak // 1024} MiB | server CPU {cpu:.2f}s"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
