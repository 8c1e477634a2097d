"""Defects of the `memory` strategy: a held file that is never let go, and a
cache that outgrows its budget."""

from __future__ import annotations

from tests.mutants import Mutant

MEMORY = "tests/server/test_memory_cache.py"

MUTANTS: list[Mutant] = [
    Mutant(
        name="memory-serves-a-rewritten-file-stale",
        path="zcserve/server/filecache.py",
        old="            if current != entry.identity:\n",
        new="            if current != entry.identity and entry.body is None:\n",
        tests=(f"{MEMORY}::test_a_file_rewritten_in_place_is_served_new_at_once",),
    ),
    Mutant(
        name="memory-cache-outgrows-its-budget",
        path="zcserve/server/filecache.py",
        old="        while self.held > self.capacity:\n",
        new="        while False:\n",
        tests=(f"{MEMORY}::test_memory_stays_within_its_budget_and_every_file_is_still_served",),
    ),
]
