"""The `zcserve` command: `serve`, `load`, `bench` and `report`.

Every bad flag ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from zcserve import __version__
from zcserve.bench import report
from zcserve.bench import sweep as bench
from zcserve.errors import ConfigError, RunError
from zcserve.load import run as loadgen
from zcserve.runtime import LOOP_NAMES
from zcserve.server.config import ServerConfig
from zcserve.server.http import MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_PIPELINED, MAX_REQUEST_LINE
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import parse_size

EXIT_USAGE = 2
EXIT_FAILURE = 1
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: `zcserve serve: error: ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _workers(text: str) -> int:
    from zcserve.server.workers import worker_count

    try:
        return worker_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a folder over HTTP/1.1",
        description="Serve ROOT over HTTP/1.1 with a chosen copy strategy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("root", nargs="?", default=".", help="folder to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    p.add_argument("--strategy", choices=STRATEGY_NAMES, default="auto", help="copy strategy")
    p.add_argument("--loop", choices=LOOP_NAMES, default="uvloop", help="event loop")
    p.add_argument("--listing", action="store_true", help="list folders without index.html")
    p.add_argument(
        "--chunk-size",
        type=_size,
        default=None,
        help="copy size: buffer, mmap slice or pipe; None means 256KiB for readwrite/fallback, "
        "1MiB for mmap/splice",
    )
    p.add_argument("--sendfile-chunk", type=_size, default="2MiB", help="largest sendfile call")
    p.add_argument("--backlog", type=int, default=4096, help="listen backlog")
    p.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=10.0,
        help="seconds to receive a whole request head (slowloris guard)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=_positive_float,
        default=75.0,
        help="idle seconds between requests",
    )
    p.add_argument(
        "--send-timeout",
        type=_positive_float,
        default=60.0,
        help="seconds a client may read nothing before it is cut off",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        help="open connections cap; past it new ones wait in the listen backlog",
    )
    p.add_argument(
        "--max-request-line", type=_size, default=str(MAX_REQUEST_LINE), help="414 past this"
    )
    p.add_argument(
        "--max-header-bytes", type=_size, default=str(MAX_HEADER_BYTES), help="431 past this"
    )
    p.add_argument("--max-headers", type=int, default=MAX_HEADER_COUNT, help="431 past this")
    p.add_argument(
        "--max-pipelined",
        type=int,
        default=MAX_PIPELINED,
        help="requests buffered per connection; 429 and close past this",
    )
    p.add_argument("--grace", type=float, default=10.0, help="shutdown drain, seconds")
    p.add_argument("--access-log", metavar="FILE|-", default=None, help="Common Log Format")
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="error log verbosity on stderr (default: warning)",
    )
    p.add_argument(
        "--raw", metavar="FILE", default=None, help="no HTTP: send FILE to every connection, close"
    )
    p.add_argument(
        "--open-file-cache",
        type=int,
        default=1024,
        help="hot files kept open between requests, revalidated by stat; 0 turns it off",
    )
    p.add_argument(
        "--cork",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send the head with MSG_MORE so head and body share segments (measured in "
        "BENCHMARKS.md)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus metrics on this separate listener (merged across workers)",
    )
    p.add_argument(
        "--tls-cert", metavar="FILE", default=None, help="serve HTTPS with this PEM chain"
    )
    p.add_argument("--tls-key", metavar="FILE", default=None, help="the certificate's private key")
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes sharing the port with SO_REUSEPORT; auto = one per CPU",
    )
    p.add_argument(
        "--ready-json",
        action="store_true",
        help="once listening, also print one JSON line for programs: "
        '{"event": "ready", "url", "metrics_url", "pid", ...}',
    )
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from zcserve.server import server

    config = ServerConfig(
        root=args.root,
        host=args.host,
        port=args.port,
        strategy=args.strategy,
        loop=args.loop,
        listing=args.listing,
        chunk_size=args.chunk_size,
        sendfile_chunk=args.sendfile_chunk,
        backlog=args.backlog,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        send_timeout=args.send_timeout,
        max_connections=args.max_connections,
        open_file_cache=args.open_file_cache,
        cork=args.cork,
        max_request_line=args.max_request_line,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        max_pipelined=args.max_pipelined,
        grace=args.grace,
        access_log=args.access_log,
        raw_file=args.raw,
        tls_cert=args.tls_cert,
        metrics=args.metrics,
        tls_key=args.tls_key,
    )
    announce = functools.partial(_announce, config, args.workers, args.ready_json)
    if args.workers == 1:
        return server.run(config, announce=announce)
    from zcserve.server.workers import Supervisor

    return Supervisor(config, args.workers).run(announce)


def _announce(
    config: ServerConfig, workers: int, ready_json: bool, url: str, metrics_url: str | None
) -> None:
    """The start-up lines: one for people, and with --ready-json one for programs."""
    if config.raw_file:
        what = f"raw file {os.path.realpath(config.raw_file)}"
    else:
        what = f"serving {os.path.realpath(config.root)}"
    extra = f", workers={workers}" if workers > 1 else ""
    print(f"zcserve: {what} on {url} (strategy={config.strategy}, loop={config.loop}{extra})")
    if metrics_url is not None:
        print(f"zcserve: metrics on {metrics_url}")
    if ready_json:
        ready = {
            "event": "ready",
            "url": url,
            "metrics_url": metrics_url,
            "pid": os.getpid(),
            "strategy": config.strategy,
            "loop": config.loop,
            "workers": workers,
        }
        print(json.dumps(ready))
    sys.stdout.flush()


def build_parser() -> _Parser:
    parser = _Parser(
        prog="zcserve", description="A file server that makes zero-copy I/O measurable."
    )
    parser.add_argument("--version", action="version", version=f"zcserve {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="error log verbosity (stderr)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_serve(sub)
    loadgen.add_command(sub)
    bench.add_command(sub)
    report.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"zcserve {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as exc:
        print(f"zcserve {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 0
    return result
