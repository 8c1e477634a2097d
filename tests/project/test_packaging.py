"""What a package index shows and what a server-only install pulls in."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

BLOCK_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; "


def test_the_license_is_an_spdx_string_with_its_file() -> None:
    assert PROJECT["license"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert PROJECT["license-files"] == ["LICENSE"]


def test_classifiers_and_urls_say_what_it_is() -> None:
    classifiers = set(PROJECT["classifiers"])
    assert {
        "Operating System :: POSIX :: Linux",
        "Framework :: AsyncIO",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
    } <= classifiers
    # No project URLs until there is a real public home: a placeholder repository
    # would send a reader to a page that does not exist.
    assert "urls" not in PROJECT


def test_every_readme_link_and_image_is_relative_and_exists() -> None:
    """The README works in a clone, a fork and offline: its links point into the tree."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert targets, "the README links its files"
    for target in targets:
        assert not target.startswith(("http://", "https://")), target
        path = target.split("#", 1)[0]
        assert not path or (ROOT / path).exists(), f"{target} is not in the tree"


def test_matplotlib_is_only_in_the_bench_extra() -> None:
    assert not any(dep.startswith("matplotlib") for dep in PROJECT["dependencies"])
    assert PROJECT["optional-dependencies"]["bench"] == ["matplotlib>=3.7"]


def test_serving_needs_no_matplotlib(tmp_path: Path) -> None:
    """`zcserve serve` answers a GET in an interpreter where matplotlib cannot import."""
    (tmp_path / "a.txt").write_text("lean\n")
    script = BLOCK_MATPLOTLIB + (
        "import threading, urllib.request, asyncio\n"
        "from zcserve.server.config import ServerConfig\n"
        "from zcserve.server.server import Server\n"
        "from zcserve.server.sockio import bind\n"
        "listener = bind('127.0.0.1', 0, 16)\n"
        "port = listener.getsockname()[1]\n"
        "server = Server(ServerConfig(root=sys.argv[1]))\n"
        "def fetch():\n"
        "    body = urllib.request.urlopen(f'http://127.0.0.1:{port}/a.txt').read()\n"
        "    print(body.decode(), end='')\n"
        "    server.shutdown()\n"
        "async def main():\n"
        "    asyncio.get_running_loop().call_later(0.2, threading.Thread(target=fetch).start)\n"
        "    await server.serve(listener)\n"
        "asyncio.run(main())\n"
        "assert 'matplotlib' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "lean\n"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:"))
    targets = phony.split(":", 1)[1].split()
    listed = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    shown = {line.split()[1] for line in listed.splitlines() if line.startswith("  make ")}
    missing = {target for target in targets if target != "all"} - shown
    assert not missing, f"make help does not list {sorted(missing)}"
