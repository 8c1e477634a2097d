"""Defects of sending at the end of the loop pass: answers sent as soon as they are
made, pipelined answers held a pass each, a held answer whose closed connection
keeps its file, and one failing held answer that drops the rest of the pass."""

from __future__ import annotations

from tests.mutants import Mutant

CONNECTION = "zcserve/server/connection.py"
OUTBOX = "zcserve/server/outbox.py"
TESTS = "tests/server/test_outbox.py"

MUTANTS: list[Mutant] = [
    Mutant(
        name="repeats-sent-as-soon-as-made",
        path=CONNECTION,
        old="        if self._outbox.flushing:\n            self._send_repeat(held)\n",
        new="        if True:\n            self._send_repeat(held)\n",
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
        name="held-answer-keeps-its-file-after-a-close",
        path=CONNECTION,
        old="        if held is not None:  # made but not sent: what it took goes back\n",
        new="        if False:\n",
        tests=(f"{TESTS}::test_a_connection_closed_with_its_answer_held_gives_the_file_back",),
    ),
    Mutant(
        name="one-failing-held-answer-drops-the-pass",
        path=OUTBOX,
        old="                except Exception:  # a bug costs its own connection",
        new="                except ZeroDivisionError:  # a bug costs its own connection",
        tests=(f"{TESTS}::test_a_held_answer_that_fails_costs_only_its_own_connection",),
    ),
]
