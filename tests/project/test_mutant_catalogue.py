"""Every planted defect still names text that occurs once in the tree, and tests that
exist: a refactor that moves the text or a test would otherwise turn `make mutants`
into an error, not a check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mutants import Mutant
from tests.mutants.__main__ import all_mutants

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mutant", all_mutants(), ids=lambda mutant: mutant.name)
def test_the_defect_text_occurs_once(mutant: Mutant) -> None:
    text = (ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: {mutant.path} no longer holds its text"


@pytest.mark.parametrize("mutant", all_mutants(), ids=lambda mutant: mutant.name)
def test_the_named_tests_exist(mutant: Mutant) -> None:
    """Each node id names a test file that exists and, after `::`, a test it defines."""
    for node in mutant.tests:
        path, _, name = node.partition("::")
        assert (ROOT / path).is_file(), f"{mutant.name}: no file {path}"
        function = re.sub(r"\[.*\]$", "", name)
        if function:
            text = (ROOT / path).read_text()
            assert f"def {function}(" in text, f"{mutant.name}: {path} defines no {function}"
