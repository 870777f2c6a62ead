"""`recsys report --date D` rebuilds the report from whatever is committed (here: nothing)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app


def test_report_command_on_an_empty_output_folder(tmp_path: Path):
    res = CliRunner().invoke(app, ["report", "--date", "2024-03-01", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    html = tmp_path / "reports" / "dt=2024-03-01" / "report.html"
    assert f"report: {html}" in res.output
    assert "retrieval metrics: not available" in html.read_text()
    assert (html.parent / "metrics.json").is_file()


def test_report_command_needs_a_date():
    res = CliRunner().invoke(app, ["report"])
    assert res.exit_code == 2 and "--date" in res.output
