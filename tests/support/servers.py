"""An in-process zcserve on 127.0.0.1 port 0, run on its own loop in a thread.

In-process, so tests can wrap os.sendfile and friends; in a thread, so the test
itself can use plain blocking sockets; on either loop, so every test runs under
uvloop and asyncio alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

from zcserve.runtime import loop_factory
from zcserve.server.config import ServerConfig
from zcserve.server.server import Server
from zcserve.server.sockio import bind

READY_TIMEOUT = 10.0


class ServerThread:
    """Start with `start()`, stop with `stop()`; `port` is the real bound port."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.listener = bind(config.host, config.port, config.backlog)
        self.port: int = self.listener.getsockname()[1]
        self.server = Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"zcserve-{self.port}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory(self.config.loop)) as runner:
                runner.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._ready.set)
        await self.server.serve(self.listener)

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT):
            raise RuntimeError("server thread did not start")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.shutdown)
        self._thread.join(READY_TIMEOUT + self.config.grace)
        if self._thread.is_alive():
            raise RuntimeError("server thread did not stop")
        if self.error is not None:
            raise self.error


def start_server(**overrides: Any) -> ServerThread:
    config = dataclasses.replace(ServerConfig(port=0, grace=2.0), **overrides)
    return ServerThread(config).start()
