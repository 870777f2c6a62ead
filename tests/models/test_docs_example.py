"""The library example of docs/ranking.md runs as written and learns its planted signal."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "ranking.md"


def test_the_ranker_library_example_runs_and_learns() -> None:
    text = DOC.read_text()
    section = text[text.index("## The ranker as a library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    printed = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 (our own documentation)
    auc = float(re.search(r"valid AUC ([0-9.]+)", printed.getvalue()).group(1))
    assert auc > 0.75, printed.getvalue()  # the label is a function of the inputs: a working model learns it
    assert scope["probs"].shape == (1000,)
