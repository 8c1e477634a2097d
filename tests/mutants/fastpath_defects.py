"""Defects of the per-request shortcuts: a repeat taken for a request while llhttp
holds part of another, and the end of a split head remembered as a request."""

from __future__ import annotations

from tests.mutants import Mutant

HTTP = "zcserve/server/http.py"
PARSER_TESTS = "tests/server/test_http.py"

MUTANTS: list[Mutant] = [
    Mutant(
        name="repeat-taken-while-a-message-is-begun",
        path=HTTP,
        old="if repeat is not None and self._at_rest and data == repeat[0]:",
        new="if repeat is not None and data == repeat[0]:",
        tests=(
            f"{PARSER_TESTS}::test_a_repeat_after_a_partial_feed_is_parsed_as_what_it_continues",
        ),
    ),
    Mutant(
        name="repeat-remembers-the-end-of-a-split-head",
        path=HTTP,
        old="        if at_rest and was_at_rest and len(self._ready) == 1",
        new="        if at_rest and len(self._ready) == 1",
        tests=(f"{PARSER_TESTS}::test_the_end_of_a_split_head_is_not_remembered_as_a_request",),
    ),
]
