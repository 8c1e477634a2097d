"""The schedules on their own, with a connection that only notes what it was told:
which slots an open-model connection gets and in which phase, what is charged as
unsent, and the closed model's budget."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from zcserve.load.plan import WorkerPlan
from zcserve.load.schedule import ClosedSchedule, OpenSchedule
from zcserve.load.stats import LiveStats

START = 1000.0


class NotingSender:
    """A connection that notes each request it is given (see `schedule.Sender`)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.taken = 0
        self.given: list[tuple[float, LiveStats, float]] = []
        """(intended, stats, delay) of each request, delay 0 when sent at once."""
        self.idle = False

    def send(self, intended: float, stats: LiveStats) -> None:
        self.given.append((intended, stats, 0.0))

    def send_later(self, intended: float, stats: LiveStats, delay: float) -> None:
        self.given.append((intended, stats, delay))

    def go_idle(self) -> None:
        self.idle = True


PLAN = WorkerPlan(
    urls=("http://127.0.0.1:1/",),
    routes=(),
    first_connection=0,
    connections=3,
    total_connections=3,
    requests=None,
    duration=0.1,
    warmup=0.05,
    rate=100.0,
    timeout=2.0,
    sources=(),
    hash_bodies=False,
    loop="asyncio",
    connect_concurrency=4,
)
"""100 slots a second over 3 connections; the window is 0.05 s to 0.15 s: slots 5 to 14."""


def _plan(**changes: Any) -> WorkerPlan:
    return replace(PLAN, **changes)


def _open() -> tuple[OpenSchedule, LiveStats, LiveStats]:
    warmup, measured = LiveStats(), LiveStats()
    schedule = OpenSchedule(_plan(), warmup, measured)
    schedule.begin(START, open_start=START - 1)
    return schedule, warmup, measured


def test_open_slots_go_round_the_connections_each_in_the_phase_it_is_due_in() -> None:
    # Connection 1 owns slots 1, 4, 7, ...
    schedule, _, measured = _open()
    sender = NotingSender(index=1)
    for _ in range(6):
        schedule.take(sender, START)
    slots = [1, 4, 7, 10, 13]
    due = [START + j / 100 for j in slots]
    assert [intended for intended, _, _ in sender.given] == pytest.approx(due)
    assert [delay for _, _, delay in sender.given] == pytest.approx([j / 100 for j in slots])
    assert [stats is measured for _, stats, _ in sender.given] == [False, False, True, True, True]
    assert sender.taken == 5 and sender.idle, "slot 16 is past the window"


def test_open_slot_due_already_is_sent_at_once_from_its_due_time() -> None:
    schedule, _, _ = _open()
    sender = NotingSender(index=2)
    schedule.take(sender, START + 0.1)  # slot 2 was due at START + 0.02
    [(intended, stats, delay)] = sender.given
    assert intended == pytest.approx(START + 0.02) and delay == 0.0
    assert stats is schedule.warmup_stats


def test_open_nothing_is_sent_past_the_late_grace_or_after_a_stop() -> None:
    schedule, _, _ = _open()
    late = NotingSender(index=0)
    schedule.take(late, schedule.send_until)
    assert late.idle and late.given == []
    schedule.stop(START)
    stopped = NotingSender(index=0)
    schedule.take(stopped, START)
    assert stopped.idle and stopped.given == []


def test_unsent_slots_are_the_windows_not_taken_each_charged_from_its_due_time() -> None:
    schedule, _, measured = _open()
    senders = [NotingSender(index) for index in range(3)]
    senders[1].taken = 3  # slots 1, 4 and 7 went out
    end = START + 0.5
    schedule.charge_unsent(senders, end)
    # Not sent: 6, 9, 12 (connection 0), 10, 13 (1), 5, 8, 11, 14 (2).
    assert measured.unsent == 9
    assert sum(measured.pending.values()) == 9
    assert max(measured.pending) == pytest.approx((end - (START + 0.05)) * 1_000_000, abs=1)
    assert min(measured.pending) == pytest.approx((end - (START + 0.14)) * 1_000_000, abs=1)


def test_a_slot_given_back_is_charged_as_unsent() -> None:
    schedule, _, measured = _open()
    sender = NotingSender(index=1)
    for _ in range(3):
        schedule.take(sender, START)
    schedule.give_back(sender)  # its timer for slot 7 was cancelled
    schedule.charge_unsent([sender], START + 0.5)
    assert measured.unsent == 3  # 7, 10, 13


def test_a_stop_charges_only_the_slots_due_by_then_and_cuts_the_window() -> None:
    schedule, _, measured = _open()
    schedule.stop(START + 0.1)
    schedule.charge_unsent([NotingSender(index) for index in range(3)], START + 0.5)
    assert measured.unsent == 5  # slots 5 to 9
    assert schedule.duration(START + 0.05, START + 0.5) == pytest.approx(0.05)


def test_open_window_with_a_budget_holds_that_many_slots() -> None:
    schedule = OpenSchedule(_plan(duration=None, total_requests=30), LiveStats(), LiveStats())
    schedule.begin(START, open_start=START)
    assert schedule.end_index - schedule.first_index == 30
    assert schedule.stop_at == pytest.approx(START + 0.05 + 0.3)
    assert schedule.hard_end == pytest.approx(START + 0.05 + 0.3 + 2.0)
    assert schedule.deadline(START) == START + 2.0


def test_closed_budget_counts_only_the_measurement() -> None:
    warmup, measured = LiveStats(), LiveStats()
    schedule = ClosedSchedule(_plan(rate=None, duration=None, requests=2), warmup, measured)
    schedule.begin(START, open_start=START)
    sender = NotingSender(index=0)
    schedule.take(sender, START)  # in the warm-up: not from the budget
    for _ in range(3):
        schedule.take(sender, START + 0.1)
    assert [stats for _, stats, _ in sender.given] == [warmup, measured, measured]
    assert [intended for intended, _, _ in sender.given] == [START, START + 0.1, START + 0.1]
    assert sender.idle and sender.taken == 0
    schedule.charge_unsent([sender], START + 1)
    assert measured.unsent == 0
    assert schedule.duration(START + 0.05, START + 0.4) == pytest.approx(0.35)


def test_closed_window_ends_the_requests_and_a_hard_end_halts_them() -> None:
    schedule = ClosedSchedule(_plan(rate=None, duration=1.0, warmup=0.0), LiveStats(), LiveStats())
    schedule.begin(START, open_start=START - 0.5)
    assert schedule.hard_end == START - 0.5 + 1.0 + 2.0
    ended = NotingSender(index=0)
    schedule.take(ended, START + 1.0)
    assert ended.idle and ended.given == []
    schedule.end(START + 0.5)
    assert schedule.halted and schedule.deadline(START) == START + 0.5
    halted = NotingSender(index=0)
    schedule.take(halted, START + 0.1)
    assert halted.idle and halted.given == []
