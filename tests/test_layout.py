"""The layout rules: load/ and server/ never import each other or the bench, a
strategy sees sockets and files only, and a load worker starts without the server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.import_graph import (
    PACKAGE_DIR,
    STRATEGIES,
    STRATEGIES_MAY_IMPORT,
    Edge,
    build_graph,
    crossing_edges,
    forbidden_edges,
    imports_in,
    main,
    part_edges,
    part_of,
)

GRAPH = build_graph()


def _edges_from(part: str) -> list[Edge]:
    return [e for edges in GRAPH.values() for e in edges if part_of(e.source) == part]


def test_the_graph_sees_the_package() -> None:
    assert {"zcserve.cli", "zcserve.server.strategies", "zcserve.load.run"} <= set(GRAPH)
    assert Edge("zcserve.server.strategies", "zcserve.server.sockio") in {
        Edge(e.source, e.target) for e in GRAPH["zcserve.server.strategies"]
    }
    assert part_edges(GRAPH)["server", "server"] > 0 and part_edges(GRAPH)["load", "load"] > 0


@pytest.mark.parametrize(
    ("part", "banned"), [("load", {"server", "bench"}), ("server", {"load", "bench"})]
)
def test_part_does_not_import(part: str, banned: set[str]) -> None:
    bad = [
        f"{e.source}:{e.line} -> {e.target}"
        for e in _edges_from(part)
        if part_of(e.target) in banned
    ]
    assert bad == []


def test_strategies_depend_on_the_socket_abstraction_only() -> None:
    imported = {e.target for e in GRAPH[STRATEGIES]}
    assert imported <= STRATEGIES_MAY_IMPORT, sorted(imported - STRATEGIES_MAY_IMPORT)
    assert "zcserve.server.sockio" in imported


def test_no_forbidden_edges_and_the_script_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert [str(v) for v in forbidden_edges(GRAPH)] == []
    assert main([str(PACKAGE_DIR)]) == 0
    out = capsys.readouterr().out
    assert "forbidden edges: 0" in out and "load -> core" in out


def test_script_runs_as_a_file() -> None:
    script = Path(__file__).with_name("import_graph.py")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "edges between parts" in done.stdout


def test_parser_sees_every_import_form() -> None:
    known = {
        "zcserve",
        "zcserve.errors",
        "zcserve.load",
        "zcserve.load.a",
        "zcserve.load.b",
        "zcserve.server",
        "zcserve.server.http",
        "zcserve.server.files",
        "zcserve.bench",
        "zcserve.bench.sweep",
    }
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        import os, zcserve.server.http as h
        from zcserve import errors, __version__
        from zcserve.server import files
        from . import b
        from .b import thing
        if TYPE_CHECKING:
            from zcserve.bench.sweep import Sweep
        def later():
            import zcserve.server
        class K:
            def m(self):
                from ..server.files import OpenedFile
        """
    )
    got = {(e.target, e.line) for e in imports_in(source, "zcserve.load.a", known)}
    assert got == {
        ("zcserve.server.http", 3),
        ("zcserve.errors", 4),
        ("zcserve", 4),
        ("zcserve.server.files", 5),
        ("zcserve.load.b", 6),
        ("zcserve.load.b", 7),
        ("zcserve.bench.sweep", 9),
        ("zcserve.server", 11),
        ("zcserve.server.files", 14),
    }


def test_a_forbidden_edge_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A synthetic package that breaks every rule once: the checks can fail."""
    package = tmp_path / "zcserve"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "server/__init__.py": "",
        "server/sockio.py": "from zcserve.errors import X\n",
        "server/server.py": "import zcserve.server.sockio\n",
        "server/strategies.py": "from zcserve.server import server\n",
        "server/bad.py": "def f():\n    from zcserve.load import client\n",
        "load/__init__.py": "",
        "load/client.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from zcserve.server.server import S\n",
        "load/run.py": "from zcserve.bench import sweep\n",
        "bench/__init__.py": "",
        "bench/sweep.py": "from zcserve.load import run\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    graph = build_graph(package)
    found = {(v.edge.source, v.edge.target) for v in forbidden_edges(graph)}
    assert found == {
        ("zcserve.server.strategies", "zcserve.server.server"),
        ("zcserve.server.bad", "zcserve.load.client"),
        ("zcserve.load.client", "zcserve.server.server"),
        ("zcserve.load.run", "zcserve.bench.sweep"),
    }
    assert ("zcserve.bench.sweep", "zcserve.load.run") in crossing_edges(graph)
    assert main([str(package)]) == 1
    assert "forbidden edges: 4" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["zcserve.load", "zcserve.load.run", "zcserve.load.procs"])
def test_load_imports_no_server_in_a_fresh_interpreter(module: str) -> None:
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('zcserve', 'aiofiles'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=PACKAGE_DIR.parent,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    assert module in loaded
    banned = [
        m
        for m in loaded
        if m == "aiofiles" or m.startswith(("aiofiles.", "zcserve.server", "zcserve.bench"))
    ]
    assert banned == [], f"import {module} loaded {banned}"
