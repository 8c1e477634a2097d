"""Defects of sending at the end of the loop pass: answers sent as soon as they are
made, pipelined answers held a pass each, a held answer that keeps its file after
its connection closed, a repeat that failed at the end of the pass left
armed, and one failing held answer that drops the rest of the pass."""

from __future__ import annotations

from tests.mutants import Mutant

CONNECTION = "zcserve/server/connection.py"
OUTBOX = "zcserve/server/outbox.py"
TESTS = "tests/server/test_outbox.py"

MUTANTS: list[Mutant] = [
    Mutant(
        name="answers-sent-as-soon-as-made",
        path=CONNECTION,
        old="        self.phase = _RESPONDING\n        self._outbox.hold(self)\n",
        new="        self.phase = _RESPONDING\n        self.send_held()\n",
        tests=(f"{TESTS}::test_the_answers_of_one_pass_go_out_together_at_its_end",),
    ),
    Mutant(
        name="pipelined-answers-held-a-pass-each",
        path=CONNECTION,
        old="        if not inflight.last and not self._outbox.flushing:\n",
        new="        if not inflight.last:\n",
        tests=(f"{TESTS}::test_pipelined_answers_behind_a_held_one_go_in_the_same_end_of_pass",),
    ),
    Mutant(
        name="held-repeat-keeps-its-file-after-a-close",
        path=CONNECTION,
        old="            held[2].close()  # the repeat's lent file",
        new="            pass  # the repeat's lent file",
        tests=(f"{TESTS}::test_a_connection_closed_with_its_answer_held_gives_the_file_back",),
    ),
    Mutant(
        name="failed-held-repeat-stays-armed",
        path=CONNECTION,
        old="                self._repeat, self._repeat_length = _NO_REPEAT, -1\n",
        new="                self._repeat = _NO_REPEAT\n",
        tests=(f"{TESTS}::test_a_held_repeat_whose_strategy_fails_is_answered_the_common_way",),
    ),
    Mutant(
        name="one-failing-held-answer-drops-the-pass",
        path=OUTBOX,
        old="                except Exception:  # a bug costs its own connection",
        new="                except ZeroDivisionError:  # a bug costs its own connection",
        tests=(f"{TESTS}::test_a_held_answer_that_fails_costs_only_its_own_connection",),
    ),
]
