"""README's results table is what `make readme-table` (`zcserve report --markdown`)
writes from the committed results.json: run again, it changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from zcserve import cli
from zcserve.bench.report import MARKDOWN_BEGIN, MARKDOWN_END
from zcserve.bench.results import CLIENT_BOUND_MARK, CLIENT_BOUND_NOTE, load_results

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = "benchmarks/results/default/results.json"
SIZE, CONNECTIONS = 1 << 20, 8
CELL = "1MiB,8"
COMMAND = f"zcserve report {RESULTS} --cell {CELL} --markdown README.md"


def generated_block(text: str) -> list[str]:
    """The lines between README's two marker lines."""
    lines = text.splitlines()
    return lines[lines.index(MARKDOWN_BEGIN) + 1 : lines.index(MARKDOWN_END)]


def test_the_readme_table_is_what_the_command_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = README.read_text(encoding="utf-8")
    copy = tmp_path / "README.md"
    copy.write_text(readme, encoding="utf-8")
    argv = ["report", str(ROOT / RESULTS), "--cell", CELL, "--markdown", str(copy)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert generated_block(copy.read_text(encoding="utf-8")) == generated_block(readme), (
        "README's results table is not the committed results.json's: run make readme-table"
    )
    assert copy.read_text(encoding="utf-8") == readme  # and nothing else moved


def test_the_command_is_named_beside_the_table_and_in_the_makefile() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    after = [line for line in lines[lines.index(MARKDOWN_END) + 1 :] if line.strip()]
    assert "make readme-table" in after[0] and COMMAND in after[0], after[0]
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8").split("\nreadme-table:")[1]
    assert f"\t$(BIN)/{COMMAND}" in recipe.split("\n\n")[0].splitlines()


def test_the_readme_table_shows_the_committed_figures() -> None:
    """Each strategy's MB/s and CPU-s per GiB at 1 MiB and 8 connections, marked when
    client-bound: read from results.json here, not through the command."""
    rows, _ = load_results(str(ROOT / RESULTS))
    cell = [row for row in rows if (row.size, row.connections) == (SIZE, CONNECTIONS)]
    block = generated_block(README.read_text(encoding="utf-8"))
    assert block[0] == "| 1 MiB file, 8 connections | MB/s | server CPU-s per GiB |"
    shown = {}
    for line in block[2:]:
        if not line.startswith("|"):
            break
        strategy, megabytes, cpu = (part.strip() for part in line.strip("|").split("|"))
        name = strategy.removesuffix(CLIENT_BOUND_MARK).strip()
        shown[name] = (strategy.endswith(CLIENT_BOUND_MARK), megabytes, cpu)
    assert len(cell) == 3 and any(row.client_bound for row in cell)  # what the README says
    assert shown == {
        row.strategy: (
            row.client_bound,
            f"{row.megabytes_per_second:,.0f}",
            f"{row.cpu_per_gib:.2f}" if row.cpu_per_gib is not None else "n/a",
        )
        for row in cell
    }
    assert CLIENT_BOUND_NOTE in block
