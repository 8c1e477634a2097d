"""Planted defects (`make mutants`): each one is a real bug the suite must catch.

A `Mutant` replaces one exact piece of source text; `python -m tests.mutants`
plants each in a copy of the tree, runs only the tests named for it, and says
whether they failed (caught) or passed (missed). A new feature adds its own
defects to the area files here (`MUTANTS` in each module)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mutant:
    """One defect: in `path`, the text `old` (found exactly once) becomes `new`."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    """pytest node ids or files that must fail with the defect planted."""
