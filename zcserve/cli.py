"""The `zcserve` command: `serve`, `load`, `bench` and `report`.

Every bad flag ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

from zcserve import __version__
from zcserve.bench import report
from zcserve.bench import sweep as bench
from zcserve.errors import ConfigError, RunError
from zcserve.helptext import DefaultsFormatter
from zcserve.load import run as loadgen
from zcserve.runtime import LOOP_NAMES
from zcserve.server.accesslog import ACCESS_LOG_FORMATS
from zcserve.server.config import ServerConfig
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import parse_size

EXIT_USAGE = 2
EXIT_FAILURE = 1
SERVE_DEFAULTS = {f.name: f for f in dataclasses.fields(ServerConfig)}
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (`zcserve serve: error: ...`) and flags are
    never matched by prefix: `--keepalive 5` must not become `--keepalive-timeout`."""

    env_prefix: str | None = None
    """Set on `serve`: its flags' defaults are then read from the environment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.env_prefix is not None:
            _defaults_from_env(self, self.env_prefix, os.environ)
        return super().parse_known_args(args, namespace)


ENV_PREFIX = "ZCSERVE_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def env_name(action: argparse.Action, prefix: str = ENV_PREFIX) -> str:
    """`--access-log` is read from ZCSERVE_ACCESS_LOG: the first long flag's name,
    or the positional's (ZCSERVE_ROOT)."""
    longs = [flag for flag in action.option_strings if flag.startswith("--")]
    name = longs[0][2:] if longs else action.dest
    return prefix + name.replace("-", "_").upper()


def _env_value(parser: argparse.ArgumentParser, action: argparse.Action, text: str) -> Any:
    """`text` converted as the flag's own value would be; raises ValueError saying why."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True if action.const is None else action.const
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"expected one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}")
    convert = action.type if callable(action.type) else str
    try:
        value = convert(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    except (TypeError, ValueError):
        kind = getattr(convert, "__name__", "value")
        raise ValueError(f"invalid {kind} value") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
    if action.nargs == "*" or isinstance(action, argparse._AppendAction):
        return [value]
    return value


class _AppendOverDefault(argparse._AppendAction):
    """`append`, except that the first use on the command line replaces the default
    (which may come from the environment) instead of adding to it: a flag given
    wins over its variable, for a repeatable flag as for every other."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        marker = f"_{self.dest}_from_command_line"
        items = list(getattr(namespace, self.dest)) if getattr(namespace, marker, False) else []
        items.append(values)
        setattr(namespace, self.dest, items)
        setattr(namespace, marker, True)


def _defaults_from_env(
    parser: argparse.ArgumentParser, prefix: str, environ: Mapping[str, str]
) -> None:
    """Make ZCSERVE_<FLAG> the default of each flag, so a flag given still wins. An
    empty variable counts as unset; a bad one ends the run on one line naming it; an
    unknown one (a typo that would silently do nothing) gets a warning."""
    known = {
        env_name(action, prefix)
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
    }
    for unknown in sorted(name for name in environ if name.startswith(prefix)):
        if unknown not in known:
            close = difflib.get_close_matches(unknown, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            print(
                f"{parser.prog}: warning: unknown environment variable {unknown}{hint}",
                file=sys.stderr,
            )
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = env_name(action, prefix)
        text = environ.get(name, "")
        if not text:
            continue
        try:
            action.default = _env_value(parser, action, text)
        except ValueError as exc:
            parser.error(f"environment variable {name}={text!r}: {exc}")
        action.required = False


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(*, zero_allowed: bool) -> Callable[[str], float]:
    """A converter for a finite number of seconds, > 0 (or >= 0 when `zero_allowed`)."""
    bound = "0 or more" if zero_allowed else "greater than 0"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number, {bound}")
        return value

    return convert


_positive_float = _seconds(zero_allowed=False)
_non_negative_float = _seconds(zero_allowed=True)


def _encodings(text: str) -> tuple[str, ...]:
    from zcserve.server.precompressed import parse_encodings

    try:
        return parse_encodings(text)
    except ConfigError as exc:
        message = str(exc).removeprefix(f"--precompressed {text!r}: ")
        raise argparse.ArgumentTypeError(message) from None


def _workers(text: str) -> int:
    from zcserve.server.workers import worker_count

    try:
        return worker_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        _size,
    ),
    _Option("--sendfile-chunk", "sendfile_chunk", "largest sendfile call, bytes", _size),
    _Option(
        "--readall-max",
        "readall_max",
        "largest range --strategy readall reads into memory (64k, 2G: binary units); 503 past it",
        _size,
        "SIZE",
    ),
    _Option(
        "--readall-budget",
        "readall_budget",
        "bytes all --strategy readall bodies may hold at once, per worker; 503 and "
        "Retry-After past it (default: a quarter of RAM, at most 4G)",
        _size,
        "SIZE",
    ),
    _Option(
        "--memory-cache",
        "memory_cache",
        "bytes of small files' heads and bodies kept in memory, each answered with one send "
        "(--strategy memory; auto uses it only when this is given; default: off, or 64M "
        "with --strategy memory)",
        _size,
        "SIZE",
    ),
    _Option(
        "--memory-file-max",
        "memory_file_max",
        "largest file the memory cache keeps; larger ones go by sendfile",
        _size,
        "SIZE",
    ),
    _Option(
        "--cache-valid",
        "cache_valid",
        "seconds a cached file is served without a stat to check it is unchanged (as nginx's "
        "open_file_cache_valid); a file changed meanwhile is served stale that long",
        _non_negative_float,
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
        _positive_float,
    ),
    _Option(
        "--keepalive-timeout", "keepalive_timeout", "idle seconds between requests", _positive_float
    ),
    _Option(
        "--send-timeout",
        "send_timeout",
        "seconds a client may read nothing before it is cut off",
        _positive_float,
    ),
    _Option(
        "--max-connections",
        "max_connections",
        "open connections cap; past it new ones wait in the listen backlog",
        int,
    ),
    _Option("--max-request-line", "max_request_line", "414 past this", _size),
    _Option("--max-header-bytes", "max_header_bytes", "431 past this", _size),
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
    _Option("--grace", "grace", "shutdown drain, seconds", _non_negative_float),
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


def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a folder over HTTP/1.1",
        description="Serve ROOT over HTTP/1.1 with a chosen copy strategy.",
        formatter_class=DefaultsFormatter,
        epilog=(
            f"Every flag can also be set by an environment variable {ENV_PREFIX}<FLAG>, "
            f"for example {ENV_PREFIX}PORT=8080, {ENV_PREFIX}ACCESS_LOG=-, "
            f"{ENV_PREFIX}LISTING=1 (booleans: 1/0, true/false, yes/no); a flag given "
            "on the command line wins."
        ),
    )
    assert isinstance(p, _Parser)
    p.env_prefix = ENV_PREFIX
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
        action=_AppendOverDefault,
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
        type=_encodings,
        default=default["precompressed"],
        metavar="br,gzip,zstd",
        help="serve x.css.br, .gz or .zst beside x.css, when no older and the client's "
        "Accept-Encoding takes it, in this order (default: off)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="error log verbosity on stderr (default: warning)",
    )
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
    p.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="on a terminal, do not log each request to stderr (without --access-log, "
        "a terminal gets one line per request, as python -m http.server prints)",
    )
    p.set_defaults(run=_run_serve)


TERMINAL_LOG = "/dev/stderr"
"""Where requests are logged by default when stderr is a terminal: each worker
process opens its own (inherited) standard error."""


def _run_serve(args: argparse.Namespace) -> int:
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
    parser.set_defaults(commands=sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # say which command refused them, as its own errors do
        parser_of_command: argparse.ArgumentParser = args.commands.get(args.command, parser)
        options = [extra for extra in extras if extra.startswith("-")]
        if options:  # an unknown option, not the operand it pushed out of place
            parser_of_command.error(
                f"unknown option {options[0]}; see zcserve {args.command} --help"
            )
        parser_of_command.error(f"unrecognized arguments: {' '.join(extras)}")
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
