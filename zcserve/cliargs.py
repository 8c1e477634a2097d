"""The command line's conventions, written once for every command.

One parser class (a bad flag is one line and exit code 2; no prefix matching), one
help formatter, the ZCSERVE_<FLAG> environment variables, and the argparse
converters the commands share: each turns a bad value into that one line.
Each package's `command` module builds its own subcommand from these.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeAlias, TypeVar

from zcserve.units import parse_duration, parse_size

EXIT_USAGE = 2
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_PREFIX = "ZCSERVE_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
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
            defaults_from_env(self, self.env_prefix, os.environ)
        return super().parse_known_args(args, namespace)


Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"
"""What each package's `add_command` adds its subcommand to."""


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when it says something: never "None" or "[]", never twice
    when the help text states it already; a flag says "on" or "off" in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if default is None or default is argparse.SUPPRESS or default == []:
            return help_text
        if "default" in help_text:
            return help_text
        if default is True:
            return help_text + " (default: on)"
        if default is False:
            return help_text + " (default: off)"
        return super()._get_help_string(action)


def root_parser(
    *, prog: str, description: str, version: str, commands: Sequence[Callable[[Subcommands], None]]
) -> Parser:
    """The `zcserve` parser: --version, --log-level, and one subcommand from each of
    `commands`. The default `commands` maps each name to its parser (for errors)."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="warning", help="error log verbosity (stderr)"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add_command in commands:
        add_command(sub)
    parser.set_defaults(commands=sub.choices)
    return parser


# ZCSERVE_<FLAG> variables -------------------------------------------------------------


def env_name(action: argparse.Action, prefix: str = ENV_PREFIX) -> str:
    """`--access-log` is read from ZCSERVE_ACCESS_LOG: the first long flag's name,
    or the positional's (ZCSERVE_ROOT)."""
    longs = [flag for flag in action.option_strings if flag.startswith("--")]
    name = longs[0][2:] if longs else action.dest
    return prefix + name.replace("-", "_").upper()


def _env_value(action: argparse.Action, text: str) -> Any:
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


class AppendOverDefault(argparse._AppendAction):
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


def defaults_from_env(
    parser: argparse.ArgumentParser, prefix: str, environ: Mapping[str, str]
) -> None:
    """Make ZCSERVE_<FLAG> the default of each flag, so a flag given still wins. An
    empty variable counts as unset; a bad one ends the run on one line naming it; an
    unknown one (a typo that would silently do nothing) gets a warning."""
    actions = [
        action
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
    ]
    known = {env_name(action, prefix) for action in actions}
    for unknown in sorted(name for name in environ if name.startswith(prefix)):
        if unknown not in known:
            close = difflib.get_close_matches(unknown, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            print(
                f"{parser.prog}: warning: unknown environment variable {unknown}{hint}",
                file=sys.stderr,
            )
    for action in actions:
        name = env_name(action, prefix)
        text = environ.get(name, "")
        if not text:
            continue
        try:
            action.default = _env_value(action, text)
        except ValueError as exc:
            parser.error(f"environment variable {name}={text!r}: {exc}")
        action.required = False


# converters ---------------------------------------------------------------------------


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse` as an argparse type: the ValueError it raises becomes the one-line
    usage error, worded by `parse` itself."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


size = argument_type(parse_size)
"""Bytes: 4096, 64KiB, 1M, 1GiB."""
duration = argument_type(parse_duration)
"""Seconds, 0 or more: 10, 10s, 500ms, 2m."""


def positive_duration(text: str) -> float:
    """Seconds, more than 0: 10s, 500ms, 2m."""
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


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


positive_seconds = _seconds(zero_allowed=False)
"""A plain number of seconds (no unit), finite and more than 0."""
non_negative_seconds = _seconds(zero_allowed=True)
"""A plain number of seconds (no unit), finite and 0 or more."""


def count(text: str) -> int:
    """A whole number, 1 or more; 10_000 and 10,000 are read as 10000."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def rate(text: str) -> float:
    """Requests per second: a finite number more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests/s") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 requests/s")
    return value


def comma_separated(parse: Callable[[str], T], what: str) -> Callable[[str], tuple[T, ...]]:
    """A converter for `a,b,c`, each item read by `parse`; empty items are skipped."""

    def convert(text: str) -> tuple[T, ...]:
        try:
            return tuple(parse(part) for part in text.split(",") if part.strip())
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"bad {what} list {text!r}: {exc}") from None

    return convert


def size_and_connections(text: str) -> tuple[int, int]:
    """`SIZE,CONNECTIONS`, such as 1MiB,8: one cell of the bench's table."""
    given_size, _, connections = text.partition(",")
    try:
        return parse_size(given_size.strip()), int(connections)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad cell {text!r}; expected SIZE,CONNECTIONS such as 1MiB,8"
        ) from None
