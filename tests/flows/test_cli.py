"""The command line: --help of every command, config errors, and validate on good and bad data."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
COMMANDS = [
    "generate",
    "validate",
    "nightly",
    "backfill",
    "report",
    "demo",
    "serve",
    "import",
    "config",
    "search",
]


def test_help_lists_every_command():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in res.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_has_help(cmd: str):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_unknown_override_is_a_clear_error():
    res = runner.invoke(app, ["config", "--ranker.expertz=3"])
    assert res.exit_code == 2
    assert "ranker.expertz" in res.output and "fix: remove it" in res.output


def test_generate_small_then_validate_passes(tmp_path: Path):
    data = tmp_path / "data"
    res = runner.invoke(
        app,
        [
            "generate",
            "--preset",
            "small",
            "--data",
            str(data),
            "--users",
            "300",
            "--items",
            "200",
            "--days",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["validate", "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert "OK (0 errors" in res.output
    assert "item_categorical:" in res.output  # the inferred columns section is printed


def test_validate_broken_data_exits_nonzero(tmp_path: Path):
    data = tmp_path / "data"
    runner.invoke(
        app,
        [
            "generate",
            "--preset",
            "small",
            "--data",
            str(data),
            "--users",
            "100",
            "--items",
            "80",
            "--days",
            "2",
        ],
    )
    (data / "users.parquet").unlink()
    res = runner.invoke(app, ["validate", "--data", str(data)])
    assert res.exit_code == 1
    assert "users.parquet" in res.output and "INVALID" in res.output
