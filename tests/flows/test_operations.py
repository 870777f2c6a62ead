"""Operations, end to end under the session's Prefect harness: crash and resume, backfills, the demo,
deployments and the Dask runner. Tiny data and tiny models: these check orchestration, not model quality."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from pipelines import io

pytestmark = pytest.mark.slow

OUTPUTS = ("candidates", "scores")


def _content(out: Path, dt: date) -> dict[str, pl.DataFrame]:
    return {ds: io.read_table(out, ds, dt) for ds in OUTPUTS}


def _assert_same(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    for ds in OUTPUTS:
        assert a[ds].height > 0
        assert a[ds].equals(b[ds]), ds  # same columns, dtypes, rows and order (the Parquet content)


def _no_half_written_partition(out: Path) -> None:
    """Every dt= folder of every dataset is committed (has its manifest) and its files are readable."""
    for ds_dir in (p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if ds_dir.name == "reports":  # no manifest: each file is replaced atomically (io.write_report_file)
            assert not list(ds_dir.glob("dt=*/.*.tmp"))
            continue
        for part in ds_dir.glob("dt=*"):
            assert (part / io.MANIFEST).is_file(), f"{part} has no manifest"
            for f in part.glob("*.parquet"):
                pl.read_parquet(f)


def _run_killed(out_overrides: list[str], dt: date, fault: str) -> subprocess.CompletedProcess:
    """Run the nightly flow in a child process that SIGKILLs itself at `fault`, against this harness."""
    from prefect.settings import get_current_settings

    code = textwrap.dedent(
        f"""
        from flows.nightly import nightly
        nightly(date={dt.isoformat()!r}, overrides={out_overrides!r})
        """
    )
    env = {**os.environ, "RECSYS_FAULT_AT": fault, "PREFECT_API_URL": str(get_current_settings().api.url)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=Path.cwd()
    )


def test_sigkill_in_training_and_in_publishing_then_resume(
    prefect_harness, tiny_flow_data: Path, tiny_overrides, tmp_path: Path
):
    from flows.nightly import nightly

    dates = io.event_dates(tiny_flow_data)
    d1, d2 = dates[1], dates[2]
    out, clean = tmp_path / "out", tmp_path / "clean"
    assert (
        nightly(date=d1.isoformat(), overrides=tiny_overrides(tiny_flow_data, out))["date"] == d1.isoformat()
    )
    shutil.copytree(out, clean)  # the same state, for an uninterrupted run of d2
    before = _content(out, d1)

    # 1) killed at the start of ranker training: frames, embeddings, retriever and candidates of d2 are done
    proc = _run_killed(tiny_overrides(tiny_flow_data, out), d2, "train-ranker")
    assert proc.returncode == -9, proc.stderr[-3000:]
    _no_half_written_partition(out)
    assert io.is_committed(out, "retriever", d2) and not io.is_committed(out, "ranker", d2)
    assert io.read_latest(out, "scores") == d1
    _assert_same(_content(out, d1), before)  # the previous published day is intact and readable
    first_attempt = io.read_manifest(out, "retriever", d2)["run_id"]

    # 2) rerun, killed in publishing: scores manifest stamped? no: killed right after the candidates' one
    proc = _run_killed(tiny_overrides(tiny_flow_data, out), d2, "publish:manifest:candidates")
    assert proc.returncode == -9, proc.stderr[-3000:]
    _no_half_written_partition(out)
    assert io.read_manifest(out, "retriever", d2)["run_id"] == first_attempt  # cached, not retrained
    assert io.is_committed(out, "scores", d2)
    assert "published" not in io.read_manifest(out, "scores", d2)
    assert io.read_latest(out, "scores") == d1 and io.read_latest(out, "candidates") == d1
    _assert_same(_content(out, d1), before)

    # 3) rerun to the end: only publish/report/commit are left; the outputs equal an uninterrupted run's
    summary = nightly(date=d2.isoformat(), overrides=tiny_overrides(tiny_flow_data, out))
    assert summary["latest"] == {"candidates": d2.isoformat(), "scores": d2.isoformat()}
    assert io.read_manifest(out, "frames", d2)["run_id"] == first_attempt
    assert (io.partition_dir(out, "reports", d2) / "report.html").is_file()
    nightly(date=d2.isoformat(), overrides=tiny_overrides(tiny_flow_data, clean))
    _assert_same(_content(out, d2), _content(clean, d2))


def test_deleted_output_partition_reruns_its_stage(
    prefect_harness, tiny_flow_data: Path, tiny_overrides, tmp_path
):
    from flows.nightly import nightly

    dt = io.event_dates(tiny_flow_data)[2]
    out = tmp_path / "out"
    nightly(date=dt.isoformat(), overrides=tiny_overrides(tiny_flow_data, out))
    runs = {ds: io.read_manifest(out, ds, dt)["run_id"] for ds in ("frames", "ranker", "scores")}
    shutil.rmtree(io.partition_dir(out, "scores", dt))
    summary = nightly(date=dt.isoformat(), overrides=tiny_overrides(tiny_flow_data, out))
    assert io.read_manifest(out, "frames", dt)["run_id"] == runs["frames"]  # cached
    assert io.read_manifest(out, "ranker", dt)["run_id"] == runs["ranker"]  # cached
    assert io.read_manifest(out, "scores", dt)["run_id"] == summary["run_id"] != runs["scores"]  # rerun
    # the report task published its summary and table as Prefect artifacts of this run
    from prefect.artifacts import Artifact

    report, table = Artifact.get("recsys-report"), Artifact.get("recsys-metrics")
    assert summary["report"] in report.data and "funnel.published.ndcg@10" in report.data
    assert "ranking.auc" in str(table.data)


def test_backfill_twice_skips_and_force_is_byte_identical(
    prefect_harness, tiny_flow_data: Path, tiny_overrides, tmp_path: Path
):
    from flows.backfill import backfill

    dates = io.event_dates(tiny_flow_data)[1:4]
    out = tmp_path / "out"
    args = {
        "start": dates[0].isoformat(),
        "end": dates[-1].isoformat(),
        "overrides": tiny_overrides(tiny_flow_data, out),
    }
    first = backfill(**args)
    assert first["completed"] == [d.isoformat() for d in dates] and first["failed"] == []
    snapshot = {d: _content(out, d) for d in dates}
    runs = {d: io.read_manifest(out, "scores", d)["run_id"] for d in dates}

    second = backfill(**args)
    assert second == {"completed": [], "skipped": [d.isoformat() for d in dates], "failed": []}

    forced = backfill(**args, force=True)
    assert forced["completed"] == [d.isoformat() for d in dates]
    for d in dates:
        assert io.read_manifest(out, "scores", d)["run_id"] != runs[d]  # really rerun
        _assert_same(_content(out, d), snapshot[d])
    assert io.read_latest(out, "scores") == dates[-1]


def test_backfill_failed_day_does_not_stop_the_others(
    prefect_harness, tiny_flow_data: Path, tiny_overrides, tmp_path: Path
):
    from flows.backfill import backfill

    data = tmp_path / "data"
    shutil.copytree(tiny_flow_data, data)
    dates = io.event_dates(data)
    shutil.rmtree(io.event_partition_dir(data, dates[2]))  # day 2 has no events: its run fails
    result = backfill(
        start=dates[1].isoformat(),
        end=dates[2].isoformat(),
        overrides=tiny_overrides(data, tmp_path / "out"),
        independent=True,
        max_concurrency=2,
    )
    assert result["completed"] == [dates[1].isoformat()]
    assert [f["date"] for f in result["failed"]] == [dates[2].isoformat()]
    assert "no events for the run date" in result["failed"][0]["reason"]


def test_demo_prints_where_the_outputs_are(prefect_harness, tiny_overrides, tmp_path: Path):
    from typer.testing import CliRunner

    from flows.cli import app

    models = tiny_overrides("unused", "unused")[2:]  # the tiny model settings, without data/out
    res = CliRunner().invoke(
        app, ["demo", "--dir", str(tmp_path), "--users", "300", "--items", "200", "--days", "4", *models]
    )
    assert res.exit_code == 0, res.output[-3000:]
    where = dict(
        line.split(None, 1) for line in res.output.split("== where to look")[1].strip().splitlines()[:3]
    )
    assert set(where) == {"candidates", "scores", "report"}
    for path in where.values():
        assert Path(path).is_file(), path
    assert pl.read_parquet(where["scores"]).height > 0


def test_deployments_apply_and_read_back(prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.deployments import build_deployments
    from pipelines.config import load_config

    cfg = load_config(overrides=["--runtime.cron=30 3 * * *", "--runtime.timezone=Europe/Berlin"])
    deployments = build_deployments(cfg, None, ["--data.out=/tmp/x"])
    ids = [d.apply() for d in deployments]

    async def read() -> list:
        async with get_client() as client:
            return [await client.read_deployment(i) for i in ids]

    nightly_dep, backfill_dep = asyncio.run(read())
    assert nightly_dep.name == "nightly" and backfill_dep.name == "backfill"
    (schedule,) = nightly_dep.schedules
    assert schedule.schedule.cron == "30 3 * * *" and schedule.schedule.timezone == "Europe/Berlin"
    assert nightly_dep.global_concurrency_limit.limit == 1  # one nightly run at a time
    assert nightly_dep.parameters == {"config_path": None, "overrides": ["--data.out=/tmp/x"]}
    assert backfill_dep.schedules == []


def test_dask_runner_with_a_local_two_worker_cluster(
    prefect_harness, tiny_flow_data: Path, tiny_overrides, tmp_path: Path
):
    pytest.importorskip("prefect_dask", reason="prefect-dask is not installed (pip install '.[dask]')")
    from distributed import LocalCluster

    from flows.nightly import flow_for
    from pipelines.config import load_config

    dt = io.event_dates(tiny_flow_data)[2]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        overrides = [
            *tiny_overrides(tiny_flow_data, tmp_path / "out"),
            "--runtime.runner=dask",
            f"--runtime.dask_address={cluster.scheduler_address}",
        ]
        cfg = load_config(overrides=overrides)
        summary = flow_for(cfg.runtime)(date=dt.isoformat(), overrides=overrides)
        on_dask = set(cluster.scheduler.task_prefixes)  # task names the scheduler has seen
    assert summary["published"]["scores"]["rows"] > 0
    assert {"embeddings_task", "frames_task"} <= on_dask  # the data stages ran on the cluster
    assert not on_dask & {"train_retriever_task", "train_ranker_task", "score_task"}  # training stays local


def test_ddp_ranker_through_torchrun(
    prefect_harness, tiny_flow_data: Path, tiny_overrides, tmp_path: Path, monkeypatch
):
    from flows.nightly import nightly

    monkeypatch.setenv("RECSYS_DDP_NPROC", "2")  # two CPU processes (gloo)
    dt = io.event_dates(tiny_flow_data)[2]
    out = tmp_path / "out"
    summary = nightly(
        date=dt.isoformat(), overrides=[*tiny_overrides(tiny_flow_data, out), "--ranker.ddp=true"]
    )
    manifest = io.read_manifest(out, "ranker", dt)
    assert manifest["run_id"] == summary["run_id"]  # committed once, by rank 0, for this run
    assert summary["stages"]["ranker"]["epochs_run"] == 1
    assert io.read_table(out, "scores", dt).height > 0
    staging = io.staging_dir(out, "ranker")
    assert not staging.exists() or not any(staging.iterdir())  # only rank 0 staged, and it committed
