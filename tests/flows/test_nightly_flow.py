"""Smoke tests of the nightly flow under the session's Prefect harness (real flow runs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipelines import io
from pipelines.synthetic import PRESETS, generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("flow") / "data"
    generate(data, replace(PRESETS["small"], users=300, items=200, days=5))
    return data


def test_nightly_runs_stages_and_commits_partitions(prefect_harness, tiny_data: Path, tmp_path: Path):
    from flows.nightly import nightly

    dates = io.event_dates(tiny_data)
    run_date = dates[-2]
    out = tmp_path / "out"
    state = nightly(
        date=run_date.isoformat(),
        overrides=[f"--data.dir={tiny_data}", f"--data.out={out}", "--data.train_window_days=3"],
        return_state=True,
    )
    assert state.is_completed(), state
    summary = state.result()
    assert summary["date"] == run_date.isoformat()
    for dataset in summary["stages"]:
        manifest = io.read_manifest(out, dataset, run_date)
        assert manifest["config_hash"] == summary["config_hash"]
    # 300 users x 5 days is too small to learn from: the flow publishes popularity and says why
    scores = io.read_manifest(out, "scores", run_date)
    assert scores["order"] == "popularity" and scores["reason"].startswith("not enough positives ("), scores
    assert set(io.read_table(out, "scores", run_date)["source"].unique()) == {"popular"}


def test_nightly_fails_on_contract_violation(prefect_harness, tiny_data: Path, tmp_path: Path):
    import shutil

    from flows.nightly import nightly

    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    (broken / "items.parquet").unlink()
    state = nightly(
        date=io.event_dates(broken)[-1].isoformat(),
        overrides=[f"--data.dir={broken}", f"--data.out={tmp_path / 'out'}"],
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="items.parquet"):
        state.result()
    assert not (tmp_path / "out" / "frames").exists()  # nothing was published
