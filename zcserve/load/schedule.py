"""When each request of a load run is due, which phase counts it, and the run's bounds.

Two models behind one interface (`Schedule`). The closed model (`ClosedSchedule`):
a connection sends its next request when the previous answer arrives. The open
model (`OpenSchedule`, `--rate`): requests are due at a fixed rate whatever the
answers do. Slots are numbered over every connection (slot j is due at j / rate and
belongs to connection j mod C), so which slots a window holds is exact integer
arithmetic, the same in every process.

Latency runs from `min(intended, sent)`: in the closed model the request is sent
the moment it is intended; in the open model a request delayed by a busy
connection still counts from its slot (wrk2's correction for coordinated
omission), while one that a coarse timer (uvloop's are in whole milliseconds)
fires slightly early counts from when it really left. The slots due in the window
but never sent are counted as `unsent`, each charged the latency from its due
time to the end of the run.

A schedule calls back the connection (`Sender`) rather than returning what to do:
no tuple per request, one call fewer on the hot path.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from zcserve.load.plan import WorkerPlan
from zcserve.load.stats import LiveStats, record_spread

LATE_GRACE = 0.25
"""Open model: seconds after the window's end during which slots due in it may still
be sent late, so a brief stall at the edge (a busy CPU, a collection) does not turn
them into unsent. A schedule further behind is not drained: the client or the server
is saturated, and what is left is counted as unsent."""
UNSENT_SPREAD = 100_000
"""At most this many distinct latencies are recorded for a run's unsent slots
(each slot still counts once; see `record_spread`)."""


def first_index_at(seconds: float, rate: float) -> int:
    """The first slot due at or after `seconds` (slot j is due at j / rate); a slot
    within a billionth of the edge counts as on it, whatever the float rounding."""
    product = seconds * rate
    return max(math.ceil(product - 1e-9 * max(1.0, abs(product))), 0)


class Sender(Protocol):
    """What a schedule needs of a connection (`client.Connection`)."""

    index: int
    taken: int

    def send(self, intended: float, stats: LiveStats) -> None:
        """Send the next request now; its latency counts from `intended` at the latest."""

    def send_later(self, intended: float, stats: LiveStats, delay: float) -> None:
        """Send the next request in `delay` seconds, at `intended`."""

    def go_idle(self) -> None:
        """No request for now: the schedule has none left for this connection."""


class Schedule(ABC):
    """The phases and bounds of one worker's run; `take` is the model's."""

    def __init__(self, plan: WorkerPlan, warmup_stats: LiveStats, stats: LiveStats) -> None:
        self.plan = plan
        self.warmup_stats = warmup_stats
        """Counts of requests intended before the measurement starts; thrown away."""
        self.stats = stats
        """Counts of requests intended from the measurement start on: the result."""
        self.origin = 0.0
        """The common start time of every process (`time.monotonic`)."""
        self.measure_at = math.inf
        self.stop_at = math.inf
        """No request intended from then on (closed model), the window's end."""
        self.hard_end = math.inf
        """Nothing runs past this: requests in flight then time out."""
        self.send_until = math.inf
        """Open model: no slot is sent from then on (the window's end + `LATE_GRACE`)."""
        self.begun = False
        self.halted = False
        """No request is sent or retried any more (stopped, or past `hard_end`)."""
        self.stopped = False
        """Ended early (Ctrl-C): the window ends at the stop."""

    def begin(self, start: float, open_start: float) -> None:
        """Set the phases and bounds from the common `start`; the connections began
        opening at `open_start`, which counts against the bound too."""
        plan = self.plan
        self.begun = True
        self.origin = start
        self.measure_at = start + plan.warmup
        window = self._window()
        if window is not None:
            # From the common clock, so every process stops at the same moment.
            self.stop_at = self.measure_at + window
            # Never before the window ends.
            bound = open_start + plan.warmup + window + plan.timeout
            self.hard_end = max(bound, self.stop_at)
            self.send_until = min(self.stop_at + LATE_GRACE, self.hard_end)

    def _window(self) -> float | None:
        """Seconds of the measurement window; None: until the budget is spent."""
        return self.plan.duration

    @abstractmethod
    def take(self, connection: Sender, now: float) -> None:
        """Give `connection` its next request: sent now, at its time, or none."""

    @abstractmethod
    def give_back(self, connection: Sender) -> None:
        """The request `connection` last took was never sent (a timer or a connect
        cancelled)."""

    def deadline(self, attempt_start: float) -> float:
        """When an attempt (connect included) begun at `attempt_start` times out."""
        return min(attempt_start + self.plan.timeout, self.hard_end)

    def stop(self, now: float) -> None:
        """End early (Ctrl-C): nothing more is taken, and the window ends now."""
        self.halted = self.stopped = True
        if self.begun:
            self.stop_at = min(self.stop_at, now)

    def end(self, now: float) -> None:
        """The hard end is reached: nothing more is taken (a timer may fire early)."""
        self.halted = True
        self.hard_end = min(self.hard_end, now)

    @abstractmethod
    def charge_unsent(self, connections: Sequence[Sender], end: float) -> None:
        """Count the requests due in the window but never sent, as answered at `end`."""

    def duration(self, measure_start: float, measure_end: float) -> float:
        """Closed model: to the last response."""
        return max(measure_end - measure_start, 0.0)

    def window_seconds(self, measure_start: float, measure_end: float) -> float:
        """The measurement window, cut at its end (`window_bytes` counts in it)."""
        return max(min(self.stop_at, measure_end) - measure_start, 0.0)


class ClosedSchedule(Schedule):
    """Each connection sends its next request when the previous answer arrives,
    until the window ends or the budget (`-n`) is spent."""

    def __init__(self, plan: WorkerPlan, warmup_stats: LiveStats, stats: LiveStats) -> None:
        super().__init__(plan, warmup_stats, stats)
        self.remaining = plan.requests
        """Requests left to measure; None: no budget, only the window."""

    def take(self, connection: Sender, now: float) -> None:
        if self.halted or now >= self.stop_at:
            connection.go_idle()
        elif now < self.measure_at:
            connection.send(now, self.warmup_stats)
        elif (remaining := self.remaining) is None:
            connection.send(now, self.stats)
        elif remaining > 0:
            self.remaining = remaining - 1
            connection.send(now, self.stats)
        else:
            connection.go_idle()

    def give_back(self, connection: Sender) -> None:
        pass  # only the end of the run cancels a request: the budget no longer matters

    def charge_unsent(self, connections: Sequence[Sender], end: float) -> None:
        pass  # no request is due before the previous answer: none goes unsent


class OpenSchedule(Schedule):
    """Slots due at a fixed rate over every connection; a slot belongs to the phase it
    is due in, so exactly the window's slots are measured."""

    def __init__(self, plan: WorkerPlan, warmup_stats: LiveStats, stats: LiveStats) -> None:
        super().__init__(plan, warmup_stats, stats)
        assert plan.rate is not None
        self.rate = plan.rate
        self.spacing = 1 / plan.rate
        """Seconds between two slots (over every connection)."""
        self.total_connections = plan.total_connections
        self.first_index = 0
        """The first slot of the measurement (before it: warm-up)."""
        self.end_index = 0
        """The first slot past the window."""

    def _window(self) -> float:
        plan = self.plan
        self.first_index = first_index_at(plan.warmup, self.rate)
        if plan.duration is not None:
            self.end_index = first_index_at(plan.warmup + plan.duration, self.rate)
            return plan.duration
        total = plan.total_requests or 0
        self.end_index = self.first_index + total
        return total * self.spacing

    def take(self, connection: Sender, now: float) -> None:
        if self.halted or now >= self.send_until:
            connection.go_idle()  # what is left of the window is unsent
            return
        index = connection.index + connection.taken * self.total_connections
        if index >= self.end_index:
            connection.go_idle()
            return
        connection.taken += 1
        stats = self.warmup_stats if index < self.first_index else self.stats
        # Multiplied, not summed, so the schedule does not drift over a long run.
        intended = self.origin + index * self.spacing
        if intended > now:
            connection.send_later(intended, stats, intended - now)
        else:
            connection.send(intended, stats)

    def give_back(self, connection: Sender) -> None:
        connection.taken -= 1  # counted as unsent if it was due

    def charge_unsent(self, connections: Sequence[Sender], end: float) -> None:
        """Each slot of the window never sent is charged the latency from its due time
        to `end` (as if answered then: a lower bound)."""
        if not self.begun:
            return
        end_index = self.end_index
        if self.stopped:
            # Stopped early: only what was due by then.
            end_index = min(end_index, first_index_at(self.stop_at - self.origin, self.rate))
        total = self.total_connections
        spans = []
        for connection in connections:
            index = connection.index
            first = max(connection.taken, -((index - self.first_index) // total))
            last = -((index - end_index) // total)  # past the last
            if last > first:
                spans.append((index + first * total, index + (last - 1) * total, last - first))
        unsent = sum(count for _, _, count in spans)
        if unsent:
            share = max(1, UNSENT_SPREAD // len(spans))
            for first_index, last_index, count in spans:
                # Earlier slots waited longer: from the first one's latency down.
                oldest = int((end - (self.origin + first_index * self.spacing)) * 1_000_000)
                newest = int((end - (self.origin + last_index * self.spacing)) * 1_000_000)
                record_spread(self.stats.pending, newest, oldest, count, share)
            self.stats.unsent += unsent

    def duration(self, measure_start: float, measure_end: float) -> float:
        """The window asked for (cut short by Ctrl-C): rates divide by the schedule's
        length, not the tail's."""
        if not self.begun:
            return super().duration(measure_start, measure_end)
        return max(self.stop_at - measure_start, 0.0)


def schedule_for(plan: WorkerPlan, warmup_stats: LiveStats, stats: LiveStats) -> Schedule:
    """The plan's model: open with a rate, closed without."""
    schedule_class = ClosedSchedule if plan.rate is None else OpenSchedule
    return schedule_class(plan, warmup_stats, stats)
