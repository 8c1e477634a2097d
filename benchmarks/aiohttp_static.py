"""aiohttp's static file handler, for the side-by-side comparison.

Usage: python benchmarks/aiohttp_static.py ROOT {uvloop,asyncio}
Prints "listening on http://127.0.0.1:PORT" once the socket is bound.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from aiohttp import web


async def serve(root: str) -> None:
    app = web.Application()
    app.router.add_static("/", root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    site = web.SockSite(runner, sock)
    await site.start()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    root, loop = sys.argv[1], sys.argv[2]
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(root))
    else:
        asyncio.run(serve(root))


if __name__ == "__main__":
    main()
