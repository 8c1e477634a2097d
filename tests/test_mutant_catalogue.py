"""Every planted defect still names text that occurs once in the tree: a refactor
that moves the text would otherwise turn `make mutants` into an error, not a check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mutants import Mutant
from tests.mutants.__main__ import all_mutants

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mutant", all_mutants(), ids=lambda mutant: mutant.name)
def test_the_defect_text_occurs_once(mutant: Mutant) -> None:
    text = (ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: {mutant.path} no longer holds its text"
