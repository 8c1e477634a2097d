"""The `zcserve serve` command line: announce, clean stop, one-line errors."""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest

from tests.support.httpclient import get
from tests.support.servers import start_child, start_server, zcserve_command
from tests.support.site import Site
from zcserve.cli import main
from zcserve.server.strategies import STRATEGY_NAMES


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(zcserve_command(*args), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_announces_serves_and_stops_cleanly(site: Site, stop: int) -> None:
    with start_child(site.root, "--strategy", "sendfile", stop_signal=stop) as child:
        assert child.announce.startswith(f"zcserve: serving {site.root} on http://127.0.0.1:")
        assert child.announce.rstrip().endswith("(strategy=sendfile, loop=uvloop)")
        assert get(child.port, "/hello.txt").body == b"hello\n"
    assert child.proc.returncode == 0
    # A clean stop says nothing on stderr: no traceback, no warning, no log line.
    assert "Traceback" not in child.stdout + child.log()
    assert child.log() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "/no/such/folder"], "is not a directory"),
        # python -m http.server's habit: the port where the folder goes
        (["serve", "8000"], "'8000' is not a directory; did you mean --port 8000?"),
        (["serve", ".", "--strategy", "teleport"], "invalid choice: 'teleport'"),
        (["serve", ".", "--loop", "trio"], "invalid choice: 'trio'"),
        (["serve", ".", "--port", "70000"], "port 70000 out of range"),
        (["serve", ".", "--port", "eighty"], "invalid int value"),
        (["serve", ".", "--chunk-size", "lots"], "is not a size"),
        (["serve", ".", "--readall-max", "lots"], "is not a size"),
        (["serve", ".", "--readall-max", "0"], "readall-max must be positive"),
        (["serve", ".", "--header-timeout", "-1"], "greater than 0"),
        (["serve", ".", "--host", "no.such.host.invalid"], "cannot resolve host"),
        (["serve", "--raw", "/no/such/file"], "is not a regular file"),
        # argparse's prefix matching would take these as --keepalive-timeout etc.
        (["serve", ".", "--keepalive", "5"], "unknown option --keepalive"),
        (["serve", ".", "--header-time", "5"], "unknown option --header-time"),
        # wrk's -t: the unknown option is named, not the URL it pushed out of place.
        (["load", "-t", "2", "http://127.0.0.1:9/"], "unknown option -t; see zcserve load"),
        (["serve", ".", "--header-timeout", "nan"], "must be a finite number"),
        (["serve", ".", "--send-timeout", "inf"], "must be a finite number"),
        (["serve", ".", "--grace", "nan"], "must be a finite number"),
        (["serve", ".", "--access-log", "/no/such/folder/log"], "cannot open the access log"),
        (["serve", ".", "--access-log", "/"], "cannot open the access log"),
        # Past what the kernel or a buffer can take (the adversarial review's finds).
        (["serve", ".", "--chunk-size", "99999999999999999999"], "chunk-size"),
        (["serve", ".", "--backlog", "99999999999999999"], "backlog"),
        (["serve", ".", "--backlog", "2147483648"], "backlog"),
        (["serve", ".", "--sendfile-chunk", "100G"], "sendfile-chunk"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "zcserve: error: " if args[0] == "frobnicate" else f"zcserve {args[0]}: error: "
    )
    assert message in lines[0] and "http://" not in lines[0], lines[0]


def test_port_in_use_is_one_line(site: Site) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("serve", site.root, "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"zcserve serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"--strategy {{{','.join(STRATEGY_NAMES)}}}" in out
    flat = " ".join(out.split())
    assert "readall is the lab's naive server" in flat and "into memory" in flat
    assert "--readall-max SIZE" in out and "(default: 2147483648)" in flat
    assert "(default: auto)" in out and "0 picks a free one" in out
    assert "--hidden" in out and "names starting with '.'" in " ".join(out.split())


def test_listing_flag(site: Site) -> None:
    server = start_server(root=site.root, listing=True)
    try:
        page = get(server.port, "/plain/")
    finally:
        server.stop()
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"a&amp;b&lt;c&gt;.txt" in page.body


def test_ipv6_loopback(site: Site) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError:
        pytest.skip("::1 unavailable")
    with start_child(site.root, "--host", "::1") as child:
        assert child.url.startswith("http://[::1]:")
        with socket.create_connection(("::1", child.port), timeout=10) as sock:
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    assert data.endswith(b"hello\n")


def _serve_on_a_terminal(root: str, *flags: str) -> str:
    """Run `zcserve serve ROOT` on a pseudo-terminal, fetch one file, stop it with
    SIGINT, and read the terminal to its end: what zcserve wrote there."""
    import os
    import pty
    import re
    import select
    import time
    import urllib.request

    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes zcserve, its stdout and stderr the terminal
        command = zcserve_command("serve", root, "--port", "0", *flags)
        os.execv(command[0], command)
    out = b""

    def read(until: bytes | None) -> None:
        nonlocal out
        give_up = time.monotonic() + 15
        while (until is None or until not in out) and time.monotonic() < give_up:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child is gone and the terminal with it
                    return
                if not chunk:
                    return
                out += chunk

    try:
        read(b"serving")
        found = re.search(rb"http://127\.0\.0\.1:(\d+) ", out)
        assert found, out
        urllib.request.urlopen(f"http://127.0.0.1:{found.group(1).decode()}/hello.txt").read()
    finally:
        os.kill(pid, signal.SIGINT)
    read(None)  # to the end: the line for the request was written before the stop
    os.waitpid(pid, 0)
    os.close(fd)
    return out.decode(errors="replace")


def test_on_a_terminal_each_request_is_logged_unless_quiet(site: Site) -> None:
    shown = _serve_on_a_terminal(site.root)
    assert '"GET /hello.txt HTTP/1.1" 200 6' in shown, shown
    quiet = _serve_on_a_terminal(site.root, "--quiet")
    assert "serving" in quiet and "GET /hello.txt" not in quiet, quiet
