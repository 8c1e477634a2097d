"""`zcserve bench --syscalls` at a tiny scale: the table shows each strategy's own path
(sendfile calls sendfile and reads nothing of the file; readwrite reads it in chunks,
readall in one call)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from tests.support.servers import zcserve_command
from zcserve.bench.syscalls import parse_strace, run_syscalls
from zcserve.server.strategies import ReadWriteStrategy

needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


@needs_strace
def test_sendfile_reads_nothing_and_readwrite_reads_the_file(tmp_path: Path) -> None:
    size = 4 * 1024 * 1024
    rows = run_syscalls(
        ("sendfile", "readwrite", "readall"), (size,), "uvloop", str(tmp_path), Console()
    )
    by_strategy = {row.strategy: row for row in rows}
    sendfile, readwrite, readall = (by_strategy[s] for s in ("sendfile", "readwrite", "readall"))
    assert sendfile.per_request.get("sendfile", 0) >= 1
    assert sendfile.file_bytes_read == 0
    for userspace in (readwrite, readall):
        assert userspace.per_request.get("sendfile", 0) == 0
        assert userspace.file_bytes_read == pytest.approx(size)  # every body byte, once
    # readwrite reads in chunks (2 MiB ones for a lone download), readall the whole
    # body in one call (both beside the loop's own wake-up reads).
    assert readwrite.per_request["read"] >= size // ReadWriteStrategy.LARGE_CHUNK
    assert readwrite.per_request["read"] - readall.per_request["read"] >= 1
    for row in rows:
        assert row.bytes_received > size  # the head and the body
        assert row.per_request.get("recvfrom", 0) >= 1
    saved = json.loads((tmp_path / "syscalls.json").read_text())
    per_request = saved["strategies"]["sendfile"]["4MiB"]["per_request"]
    assert per_request["sendfile"] >= 1
    assert saved["strategies"]["readwrite"]["4MiB"]["file_bytes_read"] == pytest.approx(size)


@needs_strace
def test_the_cli_prints_the_table_and_the_why(tmp_path: Path) -> None:
    result = subprocess.run(
        zcserve_command(
            "bench", "--syscalls", "--strategies", "splice", "--sizes", "4KiB",
            "--out", str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| splice | 4KiB |" in result.stdout
    assert "splice makes two calls per chunk" in result.stdout
    splice = json.loads((tmp_path / "syscalls.json").read_text())["strategies"]["splice"]
    assert splice["4KiB"]["per_request"]["splice"] >= 2


def test_without_strace_the_cli_says_so_and_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "bin"  # a PATH with no strace on it
    empty.mkdir()
    result = subprocess.run(
        zcserve_command("bench", "--syscalls", "--sizes", "4KiB", "--out", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(empty)},
    )
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        "zcserve bench: error: --syscalls needs strace; install it (apt-get install strace)"
    ]


def test_parse_strace_follows_unfinished_calls() -> None:
    log = "\n".join(
        [
            '101 recvfrom(7<TCP:[1->2]>, "GET / HTTP/1.1\\r\\n"..., 8192, 0, NULL, NULL) = 40',
            "102 read(9</srv/a.bin>,  <unfinished ...>",
            "101 epoll_pwait(4<anon_inode:[eventpoll]>, [], 1024, 0, NULL, 8) = 0",
            '102 <... read resumed>"\\0\\0"..., 262144) = 262144',
            '102 read(9</srv/a.bin>, ""..., 262144) = 0',
            '101 read(5<anon_inode:[eventfd]>, "\\1\\0\\0\\0\\0\\0\\0\\0", 8) = 8',
            '101 sendto(7<TCP:[1->2]>, "HTTP/1.1 200 OK"..., 200, MSG_MORE, NULL, 0) = 200',
            "102 +++ exited with 0 +++",
        ]
    )
    counts, file_bytes = parse_strace(log, "/srv")
    assert counts == {"recvfrom": 1, "read": 3, "epoll_pwait": 1, "sendto": 1}
    assert file_bytes == 262144
