"""Smoke tests of the nightly flow under the session's Prefect harness (real flow runs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipelines import io
from pipelines.datasets.synthetic import PRESETS, generate

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
        overrides=[
            f"--data.dir={tiny_data}",
            f"--data.out={out}",
            "--data.train_window_days=3",
            "--crossmodal.min_items=50",
            "--crossmodal.epochs=1",
        ],
        return_state=True,
    )
    assert state.is_completed(), state
    summary = state.result()
    assert summary["date"] == run_date.isoformat()
    emb = io.read_manifest(out, "embeddings", run_date)  # ~190 of 200 items have a photo and a title
    assert emb["image_encoder"] == "crossmodal" and emb["image_dim"] == 64 and emb["crossmodal"]["trained"]
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


def test_nightly_refuses_a_date_that_another_run_holds(prefect_harness, tiny_data: Path, tmp_path: Path):
    """API users get the lock too: a nightly flow of a date whose lock is held fails at once, writing nothing."""
    from flows.nightly import nightly
    from pipelines.lock import RunLockedError, run_lock

    out, dt = tmp_path / "out", io.event_dates(tiny_data)[-2]
    with run_lock(out, dt):  # this process stands for a first run still going
        state = nightly(
            date=dt.isoformat(), overrides=[f"--data.dir={tiny_data}", f"--data.out={out}"], return_state=True
        )
    assert state.is_failed()
    with pytest.raises(RunLockedError, match=f"another run of {dt}"):
        state.result()
    assert [p.name for p in out.iterdir()] == [".locks"]  # no stage ran


def test_nightly_with_no_events_on_its_date_commits_nothing(prefect_harness, tiny_data: Path, tmp_path: Path):
    from flows.nightly import nightly
    from pipelines.validation import InputValidationError

    out = tmp_path / "out"
    state = nightly(
        date="2030-01-01", overrides=[f"--data.dir={tiny_data}", f"--data.out={out}"], return_state=True
    )
    with pytest.raises(InputValidationError, match="no events for the run date 2030-01-01"):
        state.result()
    assert not (out / "embeddings").exists() and not (out / "frames").exists()


def test_permanent_error_in_a_task_is_not_retried(
    prefect_harness, tiny_data: Path, tmp_path: Path, read_only_dir: Path
):
    """A stage that cannot write (here: the frames dataset folder is read-only) fails at once, without the
    retries meant for transient errors: its task ran once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.nightly import nightly

    out = read_only_dir.parent / "out"
    out.mkdir()
    (out / "frames").symlink_to(
        read_only_dir
    )  # committing frames/dt=D means a rename into a read-only folder
    state = nightly(
        date=io.event_dates(tiny_data)[-2].isoformat(),
        overrides=[
            f"--data.dir={tiny_data}",
            f"--data.out={out}",
            "--runtime.task_retries=2",
            "--runtime.task_retry_delay_s=0",
            "--data.train_window_days=2",
        ],
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(PermissionError):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    (frames,) = [r for r in runs if r.name.startswith("frames")]
    assert frames.state.is_failed() and frames.run_count == 1  # 3 with the retries of a transient error
