"""`zcserve load`: its flags, and the run they ask for, printed and saved.

The run itself, and the Python API, are `zcserve.load.run`'s.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from zcserve import cliargs
from zcserve.errors import ConfigError, ZcserveError
from zcserve.load import raw as loadraw
from zcserve.load.http import METHODS, parse_statuses
from zcserve.load.options import DEFAULT_CONNECTIONS, DEFAULT_DURATION, LoadOptions
from zcserve.load.report import STDOUT, LiveProgress, check_output, print_summary, write_json
from zcserve.load.run import CLI_STOP_SIGNALS, run_load
from zcserve.load.schedule import LATE_GRACE
from zcserve.runtime import LOOP_NAMES


def add_command(sub: cliargs.Subcommands) -> None:
    """Add `zcserve load` to the `zcserve` command's subparsers."""
    p = sub.add_parser(
        "load",
        help="load an HTTP server and measure latency and throughput",
        description=(
            "Load http:// or https:// URLs over keep-alive HTTP/1.1 connections and report "
            "requests/s, MB/s (10^6 bytes of body; response heads counted apart), latency "
            "percentiles, mean and stdev (HDR histogram), statuses, TLS handshakes (timed "
            "apart, never in the latency) and errors, per URL too when several are given. "
            f"Give -d or -n; with neither, the run lasts {DEFAULT_DURATION:g}s. Exit code 1 "
            "when any request failed or got an unexpected status, 2 on bad input or when the "
            "first connect (or TLS handshake) fails."
        ),
        formatter_class=cliargs.DefaultsFormatter,
    )
    p.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="http[s]://host[:port]/path; several are taken in turn on each connection (one "
        "host's URLs share its connections) and reported one row each",
    )
    p.add_argument(
        "-H",
        "--header",
        metavar="'NAME: VALUE'",
        action="append",
        dest="headers",
        default=None,
        help="add a request header, e.g. 'Range: bytes=0-99', 'If-None-Match: \"abc\"' or "
        "'Accept-Encoding: gzip'; repeatable; replaces the default Host, User-Agent or Accept",
    )
    p.add_argument(
        "-m",
        "--method",
        choices=METHODS,
        default="GET",
        help="request method; HEAD responses have no body, whatever their Content-Length",
    )
    p.add_argument(
        "--expect-status",
        metavar="LIST",
        default=None,
        help="statuses that count as success, e.g. 200,206 or 2xx; any other is an error "
        "(default: 2xx and 3xx, 304 and redirects included, as wrk counts)",
    )
    p.add_argument(
        "-c",
        "--connections",
        metavar="C",
        type=cliargs.count,
        default=DEFAULT_CONNECTIONS,
        help="keep-alive connections, spread over the processes (https: one TLS handshake "
        "each, plus one per reconnect)",
    )
    bound = p.add_mutually_exclusive_group()
    bound.add_argument(
        "-d",
        "-z",
        "--duration",
        metavar="DURATION",
        type=cliargs.positive_duration,
        default=None,
        help=f"how long to measure: 10s, 500ms, 2m (default without -n: {DEFAULT_DURATION:g}s)",
    )
    bound.add_argument(
        "-n",
        "--requests",
        metavar="N",
        type=cliargs.count,
        default=None,
        help="total requests, split exactly between the processes",
    )
    p.add_argument(
        "--rate",
        metavar="R",
        type=cliargs.rate,
        default=None,
        help="open model: R requests/s in all, on a fixed schedule; latency counts from "
        "each request's intended send time; slots not sent by the end of -d (plus "
        f"{LATE_GRACE:g}s) are counted as unsent, and a run that falls short of R says so "
        "(default: closed model)",
    )
    p.add_argument(
        "--warmup",
        metavar="SECONDS",
        type=cliargs.duration,
        default=0.0,
        help="run this long first, then reset every counter",
    )
    p.add_argument(
        "--processes",
        metavar="P",
        type=cliargs.count,
        default=None,
        help="worker processes, each with its own event loop (default: one per CPU, "
        "at most one per connection)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=cliargs.positive_duration,
        default=10.0,
        help="per request, connect included (the connection is then reopened); also "
        "bounds the opening of the connections, and how long a run may go on past -d; "
        "with --raw, per whole download",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare each body's SHA-256 with the first response for its URL",
    )
    p.add_argument(
        "--expect",
        metavar="FILE",
        default=None,
        help="compare each body's SHA-256 with FILE's (one URL; implies --verify)",
    )
    trust = p.add_mutually_exclusive_group()
    trust.add_argument(
        "--insecure",
        action="store_true",
        help="https: do not verify the certificate or host name (self-signed certificates)",
    )
    trust.add_argument(
        "--cacert",
        metavar="FILE",
        default=None,
        help="https: trust the CA certificates in FILE (PEM) instead of the system's",
    )
    p.add_argument("--loop", choices=LOOP_NAMES, default="uvloop", help="event loop")
    p.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="write every figure as JSON to FILE (checked before the run), or to stdout "
        "with - (the report then goes to stderr)",
    )
    p.add_argument(
        "--raw",
        metavar="HOST:PORT",
        default=None,
        help="no HTTP: connect, read until EOF, close; -n times (default 10) in sequence; "
        "the client of `zcserve serve --raw FILE`",
    )
    p.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    """`zcserve load`: 0 when every request succeeded, 1 when any failed."""
    if args.json is not None:
        check_output(args.json)
    # With --json -, stdout carries the JSON alone; the report and the progress go to stderr.
    console = Console(highlight=False, stderr=args.json == STDOUT)
    if args.raw is not None:
        return _run_raw(args, console)
    expect_status = None if args.expect_status is None else parse_statuses(args.expect_status)
    options = LoadOptions(
        urls=tuple(args.urls),
        connections=args.connections,
        duration=args.duration,
        requests=args.requests,
        rate=args.rate,
        warmup=args.warmup,
        processes=args.processes,
        timeout=args.timeout,
        verify=args.verify,
        expect=args.expect,
        loop=args.loop,
        insecure=args.insecure,
        cacert=args.cacert,
        method=args.method,
        headers=tuple(args.headers or ()),
        expect_status=expect_status,
    )
    seconds = options.warmup + (options.duration or 0.0)
    try:
        with LiveProgress(console, total_requests=options.requests, seconds=seconds) as live:
            result = run_load(options, on_progress=live.update, stop_signals=CLI_STOP_SIGNALS)
    except ConfigError:
        raise
    except ZcserveError as exc:
        print(f"zcserve load: error: {exc}", file=sys.stderr)
        return 1
    print_summary(console, result)
    if args.json is not None:
        write_json(args.json, result.to_json())
    return 1 if result.error_total else 0


def _run_raw(args: argparse.Namespace, console: Console) -> int:
    """`zcserve load --raw`: 0 when every download completed, 1 otherwise."""
    if args.urls:
        raise ConfigError("--raw takes HOST:PORT and no URLs")
    if args.duration is not None:
        raise ConfigError("--raw counts downloads with -n, not a duration")
    if args.headers or args.method != "GET" or args.expect_status is not None:
        raise ConfigError("--raw sends no HTTP request: -H, -m and --expect-status do not apply")
    options = loadraw.RawOptions(
        address=args.raw,
        downloads=args.requests if args.requests is not None else loadraw.DEFAULT_DOWNLOADS,
        timeout=args.timeout,
    )
    result = loadraw.run_raw(options)
    for line in loadraw.summary_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    if args.json is not None:
        write_json(args.json, result.to_json())
    return 1 if result.errors else 0
