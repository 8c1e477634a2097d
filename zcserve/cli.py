"""The `zcserve` command: `serve`, `load`, `bench` and `report`.

Each package builds its own subcommand (`server/command.py`, `load/command.py`,
`bench/command.py`) from the shared conventions in `cliargs`; this module only
puts them under one parser and dispatches. Every bad flag ends in one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from zcserve import __version__, cliargs
from zcserve.bench import command as bench_command
from zcserve.errors import ConfigError, RunError
from zcserve.load import command as load_command
from zcserve.server import command as serve_command

EXIT_USAGE = cliargs.EXIT_USAGE
EXIT_FAILURE = 1


def build_parser() -> cliargs.Parser:
    return cliargs.root_parser(
        prog="zcserve",
        description="A file server that makes zero-copy I/O measurable.",
        version=__version__,
        commands=(
            serve_command.add_command,
            load_command.add_command,
            bench_command.add_command,
        ),
    )


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
