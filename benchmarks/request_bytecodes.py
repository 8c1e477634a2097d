"""Bytecodes zcserve's connection core runs per keep-alive request, by function.

A count, not a time: unlike µs on a shared machine it does not move with the noise,
so it shows what a change to the hot path removed. One TCP connection on loopback;
each request is written by the client, answered by one call of the connection's
readable callback under `sys.settrace` (opcode events), and read back. The files
named are this checkout's. Run: `python benchmarks/request_bytecodes.py [--size N]`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from request_cost import REQUEST, answering, main, zcserve_connection  # noqa: E402

WARM_UP = 50


def count(client: Any, on_readable: Any, size: int, n: int) -> Counter[str]:
    """Opcodes per function over `n` requests, after `WARM_UP` untraced ones."""
    seen: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            seen[f"{code.co_name} ({os.path.basename(code.co_filename)})"] += 1
        return tracer

    buffer = bytearray(size + 4096)
    for index in range(WARM_UP + n):
        client.sendall(REQUEST)
        if index >= WARM_UP:
            sys.settrace(tracer)
        on_readable()
        sys.settrace(None)
        received = client.recv_into(buffer)
        head_end = buffer.find(b"\r\n\r\n", 0, received)
        while head_end < 0 or received < head_end + 4 + size:
            received += client.recv_into(memoryview(buffer)[received:])
            head_end = buffer.find(b"\r\n\r\n", 0, received)
    return seen


async def measure(root: str, strategy: str, size: int, n: int, tls: bool = False) -> None:
    loop = asyncio.get_running_loop()
    client, connection = zcserve_connection(root, strategy, loop, tls=tls)
    seen = count(client, answering(connection), size, n)
    client.close()
    connection.close()
    over = " over TLS" if tls else ""
    print(
        f"zcserve {strategy}{over}, {size} bytes:",
        f"{sum(seen.values()) / n:.0f} bytecodes per request",
    )
    for name, opcodes in seen.most_common():
        print(f"{opcodes / n:8.1f}  {name}")


if __name__ == "__main__":
    main(measure, __doc__ or "", requests=200)
