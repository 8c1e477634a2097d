"""Which CPUs the server and the load generator run on, for every bench mode.

The server gets the first CPU this process may use and the load generator the
rest, so neither steals the other's time; on one CPU nothing can be separated.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def split_cpus() -> tuple[int | None, int | None]:
    """(server CPU, client CPU), or (None, None) on one CPU."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))  # pragma: no cover - Linux has affinity


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block (this process: the load generator) on `cpus`."""
    if cpus is None:
        yield
        return
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, original)


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the load generator run on, how many load processes
    share the load generator's CPUs, and how to say so.

    The server gets the first CPU; the load generator (this process, and the workers
    it spawns, which inherit its affinity) gets the rest. By default one load process
    per load CPU: on 2 CPUs that is one process, in the bench's own process, on CPU 1.
    A second process on that one core only adds switching between two event loops:
    measured on 2 CPUs (4 KiB at 64 connections, 1 MiB at 8, interleaved rounds), both
    settings were server-bound at the same rates within noise, and two processes spent
    up to a third more client CPU per byte. More processes than load CPUs is opt-in."""

    server: set[int] | None
    client: set[int] | None
    load_processes: int = 1
    external: bool = False
    """The server is at --url: the bench did not start it, so it neither pinned it
    nor sees its CPU and memory."""

    @classmethod
    def detect(cls, load_processes: int | None = None, *, external: bool = False) -> Placement:
        server_cpu, client_cpu = split_cpus()
        if server_cpu is None or client_cpu is None:
            return cls(None, None, load_processes or 1, external)
        cpus = set(os.sched_getaffinity(0))
        client = cpus - {server_cpu}
        return cls({server_cpu}, client, load_processes or len(client), external)

    @property
    def client_cpus(self) -> int:
        """CPUs the load can use: those it may run on, at most one per process (each
        process is one event loop). The client's CPU share is measured against these."""
        allowed = len(self.client) if self.client else len(_affinity())
        return max(1, min(allowed, self.load_processes))

    def describe(self) -> str:
        n = self.load_processes
        processes = f"{n} load process" + ("es" if n > 1 else " (in the bench's own process)")
        if self.external:
            load = f"CPU {sorted(self.client)}" if self.client is not None else "any CPU"
            return (
                "external server (--url): not started, pinned or watched by the bench, "
                f"its CPU and RSS not measured; load generator on {load} as {processes}"
            )
        if self.server is None or self.client is None:
            return f"one CPU: server and load generator could not be separated; {processes}"
        return (
            f"server pinned to CPU {sorted(self.server)}, "
            f"load generator on CPU {sorted(self.client)} as {processes}"
        )

    def to_json(self) -> dict[str, Any]:
        """The placement for results.json's meta."""
        return {
            "placement": self.describe(),
            "server_cpus": sorted(self.server) if self.server and not self.external else None,
            "external_server": self.external,
            "client_cpus": sorted(self.client) if self.client is not None else None,
            "load_processes": self.load_processes,
        }
