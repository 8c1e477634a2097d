"""aiohttp's static file handler, for the side-by-side comparison.

Usage: python benchmarks/aiohttp_static.py ROOT {uvloop,asyncio} [CERT KEY]
Prints "listening on http://127.0.0.1:PORT" (https with CERT and KEY, PEM files) once
the socket is bound.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys

from aiohttp import web


async def serve(root: str, context: ssl.SSLContext | None) -> None:
    app = web.Application()
    app.router.add_static("/", root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    site = web.SockSite(runner, sock, ssl_context=context)
    await site.start()
    scheme = "http" if context is None else "https"
    print(f"listening on {scheme}://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    root, loop = sys.argv[1], sys.argv[2]
    context = None
    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        context.set_alpn_protocols(["http/1.1"])
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(root, context))
    else:
        asyncio.run(serve(root, context))


if __name__ == "__main__":
    main()
