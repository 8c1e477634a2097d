"""The layout rules: load/ and server/ never import each other or the bench, a
strategy sees sockets and files only, a load worker starts without the server,
each package owns its command; every test module sits in a suite folder, and none
imports another or conftest."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.import_graph import (
    PACKAGE_DIR,
    STRATEGIES,
    STRATEGIES_MAY_IMPORT,
    Edge,
    build_graph,
    crossing_edges,
    discover,
    forbidden_edges,
    imports_in,
    main,
    part_edges,
    part_of,
)

GRAPH = build_graph()
MODULES = discover()
TESTS_DIR = Path(__file__).resolve().parents[1]


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
    script = Path(__file__).resolve().parents[1] / "support" / "import_graph.py"
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


@pytest.mark.parametrize(
    "module", ["zcserve.load", "zcserve.load.run", "zcserve.load.procs", "zcserve.load.command"]
)
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


# each package owns its command ----------------------------------------------------------

COMMANDS = {"zcserve.server.command", "zcserve.load.command", "zcserve.bench.command"}
"""One per package with a subcommand: its flags, built from the shared conventions."""
SHARED_CLI = "zcserve.cliargs"
"""The parser class, the help formatter, the ZCSERVE_* variables and the converters."""
CLI_MAY_IMPORT = COMMANDS | {SHARED_CLI, "zcserve", "zcserve.errors"}
PARSER_CALLS = frozenset(
    {
        "ArgumentParser",
        "Parser",
        "add_subparsers",
        "add_parser",
        "add_argument",
        "add_argument_group",
        "add_mutually_exclusive_group",
    }
)


def _called_names(module: str) -> set[str]:
    """The names of every function or method `module` calls (`p.add_argument` -> add_argument)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
            elif isinstance(node.func, ast.Name):
                names.add(node.func.id)
    return names


def _names_used(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    return names | {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def test_each_package_owns_its_command_and_cli_only_dispatches() -> None:
    assert COMMANDS <= set(MODULES)
    imported = {e.target for e in GRAPH["zcserve.cli"]}
    assert imported <= CLI_MAY_IMPORT, sorted(imported - CLI_MAY_IMPORT)
    assert COMMANDS <= imported
    for module in COMMANDS:
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert "add_command" in defined, module


def test_no_parser_is_built_outside_the_command_modules() -> None:
    builders = {m for m in MODULES if _called_names(m) & PARSER_CALLS}
    assert builders <= COMMANDS | {SHARED_CLI}, sorted(builders - COMMANDS - {SHARED_CLI})


def test_argparse_converters_are_written_once() -> None:
    """Only the shared module turns a bad value into argparse's one-line error."""
    converters = {m for m in MODULES if "ArgumentTypeError" in _names_used(m)}
    assert converters == {SHARED_CLI}


# the tests tree --------------------------------------------------------------------------


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and parts[-1].startswith("test_")


def _module_name(path: Path) -> str:
    """tests/server/test_serve.py -> tests.server.test_serve"""
    relative = path.resolve().relative_to(TESTS_DIR.parent).with_suffix("")
    return ".".join(relative.parts)


def _test_modules_imported_by(module: str, source: str) -> set[str]:
    """The test modules (tests.*.test_*) that `source`, the module `module`, imports."""
    package = module.rpartition(".")[0].split(".")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: against the importing module's package
                base = ".".join([*package[: len(package) - node.level + 1], *base.split(".")])
                base = base.rstrip(".")
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if _is_test_module(name) and name != module}


def test_no_test_module_imports_another() -> None:
    pairs = set()
    for path in sorted(TESTS_DIR.rglob("test_*.py")):
        module = _module_name(path)
        for imported in _test_modules_imported_by(module, path.read_text(encoding="utf-8")):
            pairs.add((module, imported))
    assert sorted(pairs) == [], "move what they share into tests/support/"


def test_every_way_of_importing_a_test_module_is_seen() -> None:
    source = textwrap.dedent(
        """
        import tests.test_a
        import tests.load.test_g as g
        from tests.server.test_b import helper
        from tests import test_c, conftest
        from tests.bench import test_h
        from .test_d import other
        from . import test_e
        from .. import test_i
        from ..load.test_j import thing
        from tests.support.httpclient import get
        def later():
            from tests.test_f import late
        """
    )
    assert _test_modules_imported_by("tests.server.test_self", source) == {
        "tests.test_a",
        "tests.load.test_g",
        "tests.server.test_b",
        "tests.test_c",
        "tests.bench.test_h",
        "tests.server.test_d",
        "tests.server.test_e",
        "tests.test_i",
        "tests.load.test_j",
        "tests.test_f",
    }
    assert _module_name(TESTS_DIR / "server" / "test_serve.py") == "tests.server.test_serve"


SUITES = ("server", "load", "bench", "e2e", "project")
"""The folders of tests: one per part of the package, and two across them."""


def test_every_test_module_is_in_a_suite_folder_beside_only_tests() -> None:
    """tests/<suite>/test_*.py, each suite a package; helpers live in tests/support/."""
    misplaced = [
        str(path.relative_to(TESTS_DIR))
        for path in TESTS_DIR.rglob("test_*.py")
        if path.parent.parent != TESTS_DIR or path.parent.name not in SUITES
    ]
    assert misplaced == []
    for suite in SUITES:
        folder = TESTS_DIR / suite
        assert (folder / "__init__.py").is_file(), suite
        others = {p.name for p in folder.glob("*.py")} - {"__init__.py"}
        assert {name for name in others if not name.startswith("test_")} == set(), suite


def test_nothing_imports_conftest() -> None:
    """conftest.py holds fixtures; what a test imports comes from tests/support/."""
    importers = []
    for path in sorted(TESTS_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            if any(name.split(".")[-1] == "conftest" for name in names):
                importers.append(str(path.relative_to(TESTS_DIR)))
    assert importers == []
