"""`zcserve serve`: its flags (each one a `ServerConfig` field, with that field's
default) and what the command does with them: start one server or a supervisor of
workers, and announce where it listens."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from zcserve import cliargs
from zcserve.errors import ConfigError
from zcserve.runtime import LOOP_NAMES
from zcserve.server.accesslog import ACCESS_LOG_FORMATS
from zcserve.server.config import ServerConfig
from zcserve.server.strategies import STRATEGY_NAMES

SERVE_DEFAULTS = {f.name: f for f in dataclasses.fields(ServerConfig)}


def _encodings(text: str) -> tuple[str, ...]:
    from zcserve.server.precompressed import parse_encodings

    try:
        return parse_encodings(text)
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix(f"--precompressed {text!r}: ")) from None


def _workers(text: str) -> int:
    from zcserve.server.workers import worker_count

    return worker_count(text)


class _Option(NamedTuple):
    """One `serve` flag whose value and default are `ServerConfig`'s field `field`."""

    flag: str
    field: str
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    """Other spellings: short forms first (`-p`), then long ones (`--bind`)."""
    choices: tuple[str, ...] | None = None


_SERVE_OPTIONS = (
    _Option("--host", "host", "address to listen on", aliases=("-b", "--bind")),
    _Option("--port", "port", "port; 0 picks a free one", int, aliases=("-p",)),
    _Option(
        "--chunk-size",
        "chunk_size",
        "copy size: buffer, mmap slice or pipe (default: 256KiB for fallback, 1MiB for "
        "mmap/splice, 2MiB for readwrite up to 64MiB of buffers per worker, then 256KiB)",
        cliargs.size,
    ),
    _Option("--sendfile-chunk", "sendfile_chunk", "largest sendfile call, bytes", cliargs.size),
    _Option(
        "--readall-max",
        "readall_max",
        "largest range --strategy readall reads into memory (64k, 2G: binary units); 503 past it",
        cliargs.size,
        "SIZE",
    ),
    _Option(
        "--readall-budget",
        "readall_budget",
        "bytes all --strategy readall bodies may hold at once, per worker; 503 and "
        "Retry-After past it (default: a quarter of RAM, at most 4G)",
        cliargs.size,
        "SIZE",
    ),
    _Option(
        "--memory-cache",
        "memory_cache",
        "bytes of small files' heads and bodies kept in memory, each answered with one send "
        "(--strategy memory; auto uses it only when this is given; default: off, or 64M "
        "with --strategy memory)",
        cliargs.size,
        "SIZE",
    ),
    _Option(
        "--memory-file-max",
        "memory_file_max",
        "largest file the memory cache keeps; larger ones go by sendfile",
        cliargs.size,
        "SIZE",
    ),
    _Option(
        "--cache-valid",
        "cache_valid",
        "seconds a cached file is served without a stat to check it is unchanged (as nginx's "
        "open_file_cache_valid); a file changed meanwhile is served stale that long",
        cliargs.non_negative_seconds,
        "SECONDS",
    ),
    _Option(
        "--listing-max",
        "listing_max",
        "entries on one listing page; a longer folder gets a next-page link (?page=2)",
        int,
        "N",
    ),
    _Option("--backlog", "backlog", "listen backlog", int),
    _Option(
        "--header-timeout",
        "header_timeout",
        "seconds to receive a whole request head (slowloris guard)",
        cliargs.positive_seconds,
    ),
    _Option(
        "--keepalive-timeout",
        "keepalive_timeout",
        "idle seconds between requests",
        cliargs.positive_seconds,
    ),
    _Option(
        "--send-timeout",
        "send_timeout",
        "seconds a client may read nothing before it is cut off",
        cliargs.positive_seconds,
    ),
    _Option(
        "--max-connections",
        "max_connections",
        "open connections cap; past it new ones wait in the listen backlog",
        int,
    ),
    _Option("--max-request-line", "max_request_line", "414 past this", cliargs.size),
    _Option("--max-header-bytes", "max_header_bytes", "431 past this", cliargs.size),
    _Option("--max-headers", "max_headers", "431 past this", int),
    _Option(
        "--max-pipelined",
        "max_pipelined",
        "requests parsed ahead of their answers per connection; the rest wait unread",
        int,
    ),
    _Option(
        "--max-ranges",
        "max_ranges",
        "ranges one request may ask for (multipart/byteranges); past it the whole file, 200; "
        "1 turns multi-range off",
        int,
    ),
    _Option("--grace", "grace", "shutdown drain, seconds", cliargs.non_negative_seconds),
    _Option(
        "--access-log",
        "access_log",
        "append one line per response to FILE, or stdout for '-' (default: off)",
        metavar="FILE|-",
    ),
    _Option(
        "--access-log-format",
        "access_log_format",
        "common: CLF; combined: CLF with referer and user agent; json: one object a line, "
        "with duration_us and the copy strategy",
        choices=ACCESS_LOG_FORMATS,
    ),
    _Option("--raw", "raw_file", "no HTTP: send FILE to every connection, close", metavar="FILE"),
    _Option(
        "--open-file-cache",
        "open_file_cache",
        "hot files kept open between requests, revalidated by stat; 0 turns it off",
        int,
    ),
    _Option(
        "--metrics",
        "metrics",
        "serve Prometheus metrics on this separate listener (merged across workers; default: off)",
        metavar="HOST:PORT",
    ),
    _Option(
        "--tls-cert",
        "tls_cert",
        "serve HTTPS with this PEM chain (default: plain HTTP)",
        metavar="FILE",
    ),
    _Option("--tls-key", "tls_key", "the certificate's private key", metavar="FILE"),
)


def add_command(sub: cliargs.Subcommands) -> None:
    """Add `zcserve serve` to the `zcserve` command's subparsers."""
    p = sub.add_parser(
        "serve",
        help="serve a folder over HTTP/1.1",
        description="Serve ROOT over HTTP/1.1 with a chosen copy strategy.",
        formatter_class=cliargs.DefaultsFormatter,
        epilog=(
            f"Every flag can also be set by an environment variable {cliargs.ENV_PREFIX}<FLAG>, "
            f"for example {cliargs.ENV_PREFIX}PORT=8080, {cliargs.ENV_PREFIX}ACCESS_LOG=-, "
            f"{cliargs.ENV_PREFIX}LISTING=1 (booleans: 1/0, true/false, yes/no); a flag given "
            "on the command line wins."
        ),
    )
    assert isinstance(p, cliargs.Parser)
    p.env_prefix = cliargs.ENV_PREFIX
    default = {name: spec.default for name, spec in SERVE_DEFAULTS.items()}
    p.add_argument("root", nargs="?", default=default["root"], help="folder to serve")
    p.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=default["strategy"],
        help="copy strategy; readall is the lab's naive server, kept for its comparison: "
        "it reads each whole file (or range) into memory before sending it, so never "
        "serve with it",
    )
    p.add_argument("--loop", choices=LOOP_NAMES, default=default["loop"], help="event loop")
    p.add_argument("--listing", action="store_true", help="list folders without index.html")
    p.add_argument(
        "--hidden",
        action="store_true",
        default=default["hidden"],
        help="serve and list names starting with '.' (.env, .git/); without it they are 404, "
        "except /.well-known/",
    )
    p.add_argument(
        "--cork",
        action=argparse.BooleanOptionalAction,
        default=default["cork"],
        help="send the head with MSG_MORE so head and body share segments (measured in "
        "BENCHMARKS.md)",
    )
    for option in _SERVE_OPTIONS:
        shorts = [alias for alias in option.aliases if not alias.startswith("--")]
        longs = [alias for alias in option.aliases if alias.startswith("--")]
        p.add_argument(
            *shorts,
            option.flag,
            *longs,
            dest=option.field,
            type=option.type,
            default=default[option.field],
            metavar=option.metavar,
            choices=option.choices,
            help=option.help,
        )
    p.add_argument(
        "--header",
        dest="headers",
        action=cliargs.AppendOverDefault,
        default=[],
        metavar="'NAME: VALUE'",
        help="add this header to 2xx and 3xx answers (304 included), e.g. "
        "'Cache-Control: max-age=60'; repeatable",
    )
    p.add_argument(
        "--cors",
        action="store_true",
        help="let any origin read the files (Access-Control-Allow-Origin: *, Range "
        "headers exposed) and answer CORS preflight OPTIONS with 204",
    )
    p.add_argument(
        "--precompressed",
        type=cliargs.argument_type(_encodings),
        default=default["precompressed"],
        metavar="br,gzip,zstd",
        help="serve x.css.br, .gz or .zst beside x.css, when no older and the client's "
        "Accept-Encoding takes it, in this order (default: off)",
    )
    p.add_argument(
        "--log-level",
        choices=cliargs.LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="error log verbosity on stderr (default: warning)",
    )
    p.add_argument(
        "--workers",
        type=cliargs.argument_type(_workers),
        default=1,
        help="worker processes sharing the port with SO_REUSEPORT; auto = one per CPU",
    )
    p.add_argument(
        "--ready-json",
        action="store_true",
        help="once listening, also print one JSON line for programs: "
        '{"event": "ready", "url", "metrics_url", "pid", ...}',
    )
    p.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="on a terminal, do not log each request to stderr (without --access-log, "
        "a terminal gets one line per request, as python -m http.server prints)",
    )
    p.set_defaults(run=run_command)


TERMINAL_LOG = "/dev/stderr"
"""Where requests are logged by default when stderr is a terminal: each worker
process opens its own (inherited) standard error."""


def run_command(args: argparse.Namespace) -> int:
    """`zcserve serve`: the server's exit code once it stops."""
    from zcserve.server import server

    given = vars(args) | {"headers": tuple(args.headers)}
    if given["access_log"] is None and not args.quiet and sys.stderr.isatty():
        given["access_log"] = TERMINAL_LOG
    config = ServerConfig(**{name: given[name] for name in SERVE_DEFAULTS})
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
