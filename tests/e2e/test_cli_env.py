"""`zcserve serve` conventions: short forms, ZCSERVE_<FLAG> variables, honest --help."""

from __future__ import annotations

import argparse
import os
import re
import subprocess

import pytest

from tests.support.httpclient import get
from tests.support.servers import start_child, zcserve_command
from tests.support.site import Site
from zcserve.cli import build_parser, main
from zcserve.cliargs import env_name


def serve_parser() -> argparse.ArgumentParser:
    commands: dict[str, argparse.ArgumentParser] = build_parser().get_default("commands")
    return commands["serve"]


def parse_serve(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *argv: str
) -> dict[str, object]:
    for name in [name for name in os.environ if name.startswith("ZCSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return vars(build_parser().parse_args(["serve", *argv]))


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        zcserve_command(*args),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )


def test_every_flag_has_its_own_variable() -> None:
    names = [
        env_name(action)
        for action in serve_parser()._actions
        if not isinstance(action, argparse._HelpAction)
    ]
    assert len(names) == len(set(names)), names
    for expected in ("ZCSERVE_PORT", "ZCSERVE_HOST", "ZCSERVE_STRATEGY", "ZCSERVE_ACCESS_LOG",
                     "ZCSERVE_ROOT", "ZCSERVE_CORK", "ZCSERVE_RAW", "ZCSERVE_WORKERS"):  # fmt: skip
        assert expected in names


@pytest.mark.parametrize(
    ("env", "argv", "field", "expected"),
    [
        ({"ZCSERVE_PORT": "9123"}, [], "port", 9123),
        ({"ZCSERVE_PORT": "9123"}, ["-p", "9124"], "port", 9124),  # the flag wins
        ({"ZCSERVE_PORT": "9123"}, ["--port", "9124"], "port", 9124),
        ({"ZCSERVE_HOST": "::1"}, [], "host", "::1"),
        ({}, ["-b", "0.0.0.0"], "host", "0.0.0.0"),
        ({}, ["--bind", "0.0.0.0"], "host", "0.0.0.0"),
        ({"ZCSERVE_STRATEGY": "splice"}, [], "strategy", "splice"),
        ({"ZCSERVE_STRATEGY": "splice"}, ["--strategy", "mmap"], "strategy", "mmap"),
        ({"ZCSERVE_ACCESS_LOG": "-"}, [], "access_log", "-"),
        ({"ZCSERVE_CHUNK_SIZE": "64KiB"}, [], "chunk_size", 65536),
        ({"ZCSERVE_SEND_TIMEOUT": "2.5"}, [], "send_timeout", 2.5),
        ({"ZCSERVE_ROOT": "/srv"}, [], "root", "/srv"),
        ({"ZCSERVE_ROOT": "/srv"}, ["/data"], "root", "/data"),
        ({"ZCSERVE_RAW": "/f"}, [], "raw_file", "/f"),
        ({"ZCSERVE_LOG_LEVEL": "info"}, [], "log_level", "info"),
        ({"ZCSERVE_WORKERS": "3"}, [], "workers", 3),
        ({"ZCSERVE_PORT": ""}, [], "port", 8000),  # empty means unset
        # booleans, in every spelling, both ways
        ({"ZCSERVE_LISTING": "1"}, [], "listing", True),
        ({"ZCSERVE_LISTING": "yes"}, [], "listing", True),
        ({"ZCSERVE_LISTING": "TRUE"}, [], "listing", True),
        ({"ZCSERVE_LISTING": "0"}, [], "listing", False),
        ({"ZCSERVE_LISTING": "no"}, ["--listing"], "listing", True),
        ({"ZCSERVE_HIDDEN": "true"}, [], "hidden", True),
        ({"ZCSERVE_READY_JSON": "1"}, [], "ready_json", True),
        ({"ZCSERVE_CORK": "false"}, [], "cork", False),
        ({"ZCSERVE_CORK": "0"}, ["--cork"], "cork", True),
        ({"ZCSERVE_CORK": "1"}, ["--no-cork"], "cork", False),
        # the flags that can repeat: the command line replaces the variable, too
        ({"ZCSERVE_HEADER": "X-Env: 1"}, [], "headers", ["X-Env: 1"]),
        ({"ZCSERVE_HEADER": "X-Env: 1"}, ["--header", "X-Cli: 2"], "headers", ["X-Cli: 2"]),
        (
            {"ZCSERVE_HEADER": "X-Env: 1"},
            ["--header", "X-A: 1", "--header", "X-B: 2"],
            "headers",
            ["X-A: 1", "X-B: 2"],
        ),
        ({"ZCSERVE_PRECOMPRESSED": "br"}, ["--precompressed", "gzip"], "precompressed", ("gzip",)),
    ],
)
def test_variables_set_defaults_and_flags_win(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    argv: list[str],
    field: str,
    expected: object,
) -> None:
    assert parse_serve(monkeypatch, env, *argv)[field] == expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ZCSERVE_PORT", "eighty", "invalid int value"),
        ("ZCSERVE_STRATEGY", "teleport", "expected one of auto, sendfile"),
        ("ZCSERVE_LOOP", "trio", "expected one of uvloop, asyncio"),
        ("ZCSERVE_LISTING", "maybe", "expected one of 1/true/yes/on/0/false/no/off"),
        ("ZCSERVE_CHUNK_SIZE", "lots", "is not a size"),
        ("ZCSERVE_GRACE", "nan", "must be a finite number"),
        ("ZCSERVE_WORKERS", "many", "many"),
    ],
)
def test_bad_variable_is_one_line_naming_it(name: str, value: str, message: str) -> None:
    result = run_cli({name: value}, "serve", ".")
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"zcserve serve: error: environment variable {name}={value!r}: ")
    assert message in lines[0]


def test_a_bad_variable_of_serve_does_not_break_other_commands() -> None:
    result = run_cli({"ZCSERVE_PORT": "eighty"}, "report", "--help")
    assert result.returncode == 0, result.stderr


def test_server_started_from_the_environment(site: Site) -> None:
    env = {"ZCSERVE_LISTING": "yes", "ZCSERVE_STRATEGY": "readwrite"}
    with start_child(site.root, "-p", "0", "-b", "127.0.0.1", port=None, env=env) as child:
        assert "strategy=readwrite" in child.announce
        assert get(child.port, "/plain/").status == 200  # the listing is on
        assert get(child.port, "/hello.txt").body == b"hello\n"


def _option_blocks(help_text: str) -> list[str]:
    """The help of each option, joined onto one line."""
    options = help_text.split("options:", 1)[1].split("\n\n", 1)[0]
    return [" ".join(block.split()) for block in re.split(r"\n(?=  -)", options)]


def test_help_shows_real_defaults_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "(default: None)" not in flat and "(default: False)" not in flat
    assert "default: True" not in flat
    for block in _option_blocks(out):
        assert block.count("default") <= 1, block
    assert "-p PORT, --port PORT" in flat and "-b HOST, --host HOST, --bind HOST" in flat
    assert "port; 0 picks a free one (default: 8000)" in flat
    assert "error log verbosity on stderr (default: warning)" in flat
    assert "ZCSERVE_<FLAG>" in flat
    for flag in ("--listing", "--hidden", "--cors"):  # off by default, and says so
        block = next(b for b in _option_blocks(out) if b.startswith(flag + " "))
        assert block.endswith("(default: off)"), block


@pytest.mark.parametrize("command", ["load", "bench", "report"])
def test_every_command_s_help_shows_no_empty_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in flat and "(default: False)" not in flat, command
    assert "(default: [])" not in flat and "default: True" not in flat, command


def test_an_unknown_variable_is_named_with_the_closest_real_one(site: Site) -> None:
    result = run_cli({"ZCSERVE_LISTNG": "1"}, "serve", "/no/such/folder")
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "zcserve serve: warning: unknown environment variable ZCSERVE_LISTNG; "
        "did you mean ZCSERVE_LISTING?"
    ), result.stderr
    assert result.returncode == 2 and "is not a directory" in lines[1]
