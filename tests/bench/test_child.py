"""The one helper that starts `zcserve serve` as a child and stops it, with real children."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.site import Site
from zcserve.bench.child import start_serve
from zcserve.errors import RunError

LOCAL = ("--host", "127.0.0.1", "--port", "0")


def test_ready_line_is_parsed_and_the_human_line_kept(site: Site) -> None:
    with start_serve([site.root, *LOCAL, "--strategy", "sendfile"]) as child:
        assert child.url.startswith("http://127.0.0.1:") and child.port > 0
        assert child.metrics_url is None
        assert child.pid == child.proc.pid == child.ready["pid"]
        assert child.ready["event"] == "ready" and child.ready["strategy"] == "sendfile"
        assert child.ready["workers"] == 1
        assert child.announce == (
            f"zcserve: serving {os.path.realpath(site.root)} on {child.url} "
            "(strategy=sendfile, loop=uvloop)"
        )
        assert child.lines == [child.announce]


def test_url_serves_a_file_and_later_output_stays_readable(site: Site) -> None:
    with start_serve([site.root, *LOCAL, "--access-log", "-"]) as child:
        with urllib.request.urlopen(f"{child.url}/hello.txt", timeout=10) as response:
            assert response.read() == b"hello\n"
        assert child.stop() == 0
    # The access log line came after the ready line: the helper left it in the pipe.
    assert '"GET /hello.txt HTTP/1.1" 200 6' in child.stdout


def test_metrics_url_comes_from_the_ready_line(site: Site) -> None:
    with start_serve([site.root, *LOCAL, "--metrics", "127.0.0.1:0"]) as child:
        assert child.metrics_url is not None
        assert child.lines[1] == f"zcserve: metrics on {child.metrics_url}"
        with urllib.request.urlopen(child.metrics_url, timeout=10) as response:
            assert b"zcserve_requests_total" in response.read()


def test_stop_by_pid_returns_and_is_idempotent(site: Site) -> None:
    child = start_serve([site.root, *LOCAL], cpus={min(os.sched_getaffinity(0))})
    assert psutil.Process(child.pid).cpu_affinity() == [min(os.sched_getaffinity(0))]
    started = time.monotonic()
    assert child.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 10
    assert child.proc.stdout is not None and child.proc.stdout.closed
    assert child.stop() == 0 and child.stdout == ""


def test_a_child_that_fails_to_start_raises_run_error(site: Site) -> None:
    not_a_folder = site.path("hello.txt")
    started = time.monotonic()
    with pytest.raises(RunError) as raised:
        start_serve([not_a_folder, *LOCAL], stderr=subprocess.PIPE, timeout=20)
    message = str(raised.value)
    assert "exited with code 2 before it was ready" in message
    assert "is not a directory" in message and "\n" not in message
    assert time.monotonic() - started < 15


def test_a_child_that_prints_nothing_in_time_is_stopped(tmp_path: Path, site: Site) -> None:
    # A sitecustomize that sleeps before zcserve even starts: silent, not exiting.
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    started = time.monotonic()
    with pytest.raises(RunError, match=r"was not ready within 1 s: no output"):
        start_serve([site.root, *LOCAL], env=env, timeout=1.0)
    assert time.monotonic() - started < 10
