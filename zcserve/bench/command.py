"""`zcserve bench` and `zcserve report`: their flags, and which mode runs.

The bench has four modes, chosen by `--mode` (sweep by default, so a plain
`zcserve bench` is the sweep); `--seed-experiment`, `--ceiling` and `--syscalls`
are kept as their aliases. A mode's own default strategies and sizes apply when
--strategies or --sizes is not given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from zcserve import cliargs
from zcserve.bench.ceiling import (
    CEILING_SIZES,
    CEILING_STRATEGIES,
    ceiling_table,
    run_ceiling_sizes,
)
from zcserve.bench.report import MARKDOWN_BEGIN, MARKDOWN_END, run_report
from zcserve.bench.seed import SEED_DOWNLOADS, SEED_SIZE, run_seed_experiment, seed_strategies
from zcserve.bench.sweep import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DURATION,
    DEFAULT_SIZES,
    DEFAULT_STRATEGIES,
    DEFAULT_WARMUP,
    BenchOptions,
    check_sizes,
    check_strategies,
    run_bench,
)
from zcserve.bench.syscalls import SYSCALL_SIZES, SYSCALL_STRATEGIES, run_syscalls
from zcserve.bench.workspace import output_folder
from zcserve.errors import ConfigError
from zcserve.runtime import LOOP_NAMES
from zcserve.server.strategies import STRATEGY_NAMES
from zcserve.units import format_size


def add_command(sub: cliargs.Subcommands) -> None:
    """Add `zcserve bench` and `zcserve report` to the `zcserve` command's subparsers."""
    _add_bench(sub)
    _add_report(sub)


# the bench's modes --------------------------------------------------------------------


def _run_sweep(args: argparse.Namespace, console: Console) -> int:
    options = BenchOptions(
        strategies=DEFAULT_STRATEGIES if args.strategies is None else args.strategies,
        sizes=DEFAULT_SIZES if args.sizes is None else args.sizes,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        loop=args.loop,
        url=args.url,
        out=args.out,
        load_processes=args.load_processes,
    )
    return run_bench(options, console)


def _run_seed(args: argparse.Namespace, console: Console) -> int:
    strategies = seed_strategies(args.strategies or ())
    check_strategies(strategies)
    out = output_folder(args.out)
    run_seed_experiment(
        strategies, args.seed_size, args.seed_downloads, args.loop, console, out=out
    )
    return 0


def _run_ceiling(args: argparse.Namespace, console: Console) -> int:
    strategies = CEILING_STRATEGIES
    if args.strategies is not None:
        check_strategies(args.strategies)
        strategies = tuple(name for name in args.strategies if name in CEILING_STRATEGIES)
        if not strategies:
            raise ConfigError(f"the ceiling measures only {','.join(CEILING_STRATEGIES)}")
    sizes = CEILING_SIZES if args.sizes is None else args.sizes
    check_sizes(sizes)
    for line in ceiling_table(run_ceiling_sizes(sizes, strategies, args.repeat, args.loop)):
        console.print(line)
    return 0


def _run_syscalls(args: argparse.Namespace, console: Console) -> int:
    strategies = SYSCALL_STRATEGIES if args.strategies is None else args.strategies
    check_strategies(strategies)
    sizes = SYSCALL_SIZES if args.sizes is None else args.sizes
    check_sizes(sizes)
    run_syscalls(strategies, sizes, args.loop, output_folder(args.out), console)
    return 0


MODES: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "sweep": _run_sweep,
    "seed": _run_seed,
    "ceiling": _run_ceiling,
    "syscalls": _run_syscalls,
}
MODE_ALIASES = {"--seed-experiment": "seed", "--ceiling": "ceiling", "--syscalls": "syscalls"}
"""The flags that chose a mode before --mode did; each still does."""


def run_bench_command(args: argparse.Namespace) -> int:
    """`zcserve bench`: run the chosen mode."""
    # A pipe or a CI log gets the whole table rather than 80 squeezed columns.
    console = Console(width=None if sys.stdout.isatty() else 180)
    return MODES[args.mode](args, console)


def _add_bench(sub: cliargs.Subcommands) -> None:
    p = sub.add_parser(
        "bench",
        help="compare copy strategies across sizes and concurrency",
        description="`zcserve bench`: every strategy, several file sizes, several "
        "concurrency levels.",
        formatter_class=cliargs.DefaultsFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--mode",
        choices=tuple(MODES),
        default="sweep",
        help="what to measure: sweep, each strategy x size x concurrency (table, JSON, CSV, "
        "plots); seed, the lab's experiment: 10 sequential raw downloads of a 1 GiB file, "
        "readall (the lab's naive server), readwrite and sendfile; ceiling, each path's "
        "plain blocking loop beside the server (64MiB and 1GiB files); syscalls, each "
        "strategy's syscalls, file bytes read and context switches per request, under strace",
    )
    for flag, name in MODE_ALIASES.items():
        mode.add_argument(
            flag,
            dest="mode",
            action="store_const",
            const=name,
            default=argparse.SUPPRESS,
            help=f"the same as --mode {name}",
        )
    p.add_argument(
        "--strategies",
        type=cliargs.comma_separated(str, "strategy"),
        default=None,
        help=f"comma-separated, from {','.join(STRATEGY_NAMES)} (default: "
        f"{','.join(DEFAULT_STRATEGIES)}; seed: {','.join(seed_strategies())} and those "
        f"given; ceiling: {','.join(CEILING_STRATEGIES)}; syscalls: "
        f"{','.join(SYSCALL_STRATEGIES)})",
    )
    p.add_argument(
        "--sizes",
        type=cliargs.comma_separated(cliargs.size, "size"),
        default=None,
        help=f"comma-separated file sizes (default: {_sizes(DEFAULT_SIZES)}; ceiling: "
        f"{_sizes(CEILING_SIZES)})",
    )
    p.add_argument(
        "--concurrency",
        type=cliargs.comma_separated(int, "concurrency"),
        default=",".join(str(c) for c in DEFAULT_CONCURRENCY),
        help="comma-separated connection counts",
    )
    p.add_argument(
        "--duration", type=cliargs.duration, default=DEFAULT_DURATION, help="seconds per cell"
    )
    p.add_argument(
        "--warmup", type=cliargs.duration, default=DEFAULT_WARMUP, help="seconds per cell"
    )
    p.add_argument("--loop", choices=LOOP_NAMES, default="uvloop", help="server and client loop")
    p.add_argument("--url", default=None, help="bench this existing server URL instead")
    p.add_argument("--out", default=None, help="output folder (default: bench-results/DATE)")
    p.add_argument(
        "--load-processes",
        type=int,
        default=None,
        metavar="P",
        help="load generator processes, all on the load CPUs (default: one per load CPU; "
        "on 2 CPUs one, in-process, on CPU 1)",
    )
    p.add_argument(
        "--seed-size",
        type=cliargs.size,
        default=format_size(SEED_SIZE),
        help="file size for --mode seed",
    )
    p.add_argument(
        "--seed-downloads",
        type=cliargs.count,
        default=SEED_DOWNLOADS,
        help="sequential downloads for --mode seed",
    )
    p.add_argument(
        "--repeat", type=cliargs.count, default=3, help="runs per ceiling figure (median)"
    )
    p.set_defaults(run=run_bench_command)


def _sizes(sizes: tuple[int, ...]) -> str:
    return ",".join(format_size(size) for size in sizes)


# zcserve report -----------------------------------------------------------------------


def run_report_command(args: argparse.Namespace) -> int:
    """`zcserve report`: 0 once rendered; bad input raises `ConfigError` (exit 2)."""
    return run_report(
        args.results,
        plots=args.plots,
        json_out=args.json,
        markdown=args.markdown,
        cell=args.cell,
        force=args.force,
    )


def _add_report(sub: cliargs.Subcommands) -> None:
    p = sub.add_parser(
        "report",
        help="render saved bench or load results again; merge load results of several clients",
        description=(
            "Render saved results again. A bench results.json is shown as the bench table "
            "(--plots DIR draws its plots again, --markdown FILE writes it into FILE). Several "
            "`zcserve load --json` results are merged as clients that ran at the same time: "
            "exact histogram merge, requests/s and MB/s added up (each client's rate over "
            "its own window). Exit code 2 on unreadable or mixed input, or on clients with "
            "different URLs or window lengths (unless --force)."
        ),
    )
    p.add_argument("results", nargs="+", metavar="RESULTS.json", help="files to render")
    p.add_argument(
        "--plots", metavar="DIR", default=None, help="bench: draw the plots into DIR again"
    )
    p.add_argument(
        "--json", metavar="OUT", default=None, help="load: write the merged result as JSON"
    )
    p.add_argument(
        "--markdown",
        metavar="FILE",
        default=None,
        help=f"bench: write the table as Markdown into FILE, between its {MARKDOWN_BEGIN} "
        f"and {MARKDOWN_END} lines (a new FILE gets both)",
    )
    p.add_argument(
        "--cell",
        metavar="SIZE,CONNS",
        type=cliargs.size_and_connections,
        default=None,
        help="bench: with --markdown, only this cell: each strategy's MB/s and server "
        "CPU-s per GiB (the README's table), e.g. 1MiB,8",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="load: merge clients that loaded different URLs or for windows of different "
        "lengths (refused otherwise), with a warning",
    )
    p.set_defaults(run=run_report_command)
