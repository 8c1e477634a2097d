"""`python -m tests.mutants [NAME ...]`: plant each defect in a copy of the tree,
run the tests that should catch it, print a table of caught and missed.

Exit 0 only when every defect was caught. The working tree is never modified."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutants import Mutant

REPO = Path(__file__).resolve().parents[2]
COPIED = ("zcserve", "tests", "pyproject.toml")
TIMEOUT = 900.0


def all_mutants() -> list[Mutant]:
    found: list[Mutant] = []
    package = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"tests.mutants.{info.name}")
        found.extend(getattr(module, "MUTANTS", ()))
    return found


def plant(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the text occurs {count} times in {mutant.path}")
    path.write_text(text.replace(mutant.old, mutant.new))


def copy_tree(destination: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(source, destination / name)


def run_one(mutant: Mutant) -> tuple[str, float, str]:
    """Plant `mutant` in a fresh copy and run its tests: (verdict, seconds, last line)."""
    with tempfile.TemporaryDirectory(prefix="zcserve-mutant-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        plant(tree, mutant)
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
        command += ["-m", "not soak or soak", *mutant.tests]
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return "caught (timeout)", time.monotonic() - started, "the tests hung"
        seconds = time.monotonic() - started
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        last = lines[-1] if lines else done.stderr.strip().splitlines()[-1:]
        verdict = {0: "MISSED", 1: "caught"}.get(done.returncode, f"error {done.returncode}")
        return verdict, seconds, str(last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make mutants", description=__doc__)
    parser.add_argument("names", nargs="*", help="only these defects (default: all)")
    args = parser.parse_args(argv)
    mutants = all_mutants()
    if args.names:
        unknown = set(args.names) - {m.name for m in mutants}
        if unknown:
            parser.error(f"unknown defects: {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.name in args.names]
    started = time.monotonic()
    missed = 0
    print(f"{'defect':<44} {'verdict':<18} {'seconds':>7}")
    for mutant in mutants:
        verdict, seconds, last = run_one(mutant)
        missed += not verdict.startswith("caught")
        print(f"{mutant.name:<44} {verdict:<18} {seconds:7.1f}", flush=True)
        if not verdict.startswith("caught"):
            print(f"    {last}")
    total = time.monotonic() - started
    print(f"{len(mutants) - missed} of {len(mutants)} caught in {total:.0f} s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
