"""The nightly flow: one day's run of every stage, as Prefect tasks.

    validate -> embeddings & frames (in parallel; the data stages a Dask runner spreads out)
             -> train retriever (+ index + two-tower lists) -> train ranker -> funnel (candidates, scores)
             -> publish -> report -> commit runs/dt=D (the marker of a complete day)

Tasks are thin: they receive paths, the run date, their own sub-config and the run info (never DataFrames),
call one stage in `pipelines/`, and return its small summary. Stages write whole partitions through
`pipelines.io`, so a retried or repeated task replaces its output atomically. A backfill is this flow over
each date.

Resuming. The stage tasks are cached (`INPUTS + TASK_SOURCE`, minus the run info whose run id changes every
run, plus a cache-key function) with persisted results: the cache keys live in `<out>/.prefect/cache-keys/`,
the result values in Prefect's local result storage (`PREFECT_LOCAL_STORAGE_PATH`, default
`~/.prefect/storage`). The cache-key function hashes the run date, the code revision and what the stage
reads, as `pipelines.stage_inputs` declares it (the input files' sizes and mtimes, the `_manifest.json` of
each upstream partition, the previous day's model partition it may warm-start from), so the key changes
whenever its inputs do. Before a cached task runs, the flow checks its output partitions: when one is missing or was
committed under another config hash, the task runs with `refresh_cache=True`. So a rerun after a crash
skips the stages whose outputs are intact and reruns the rest. Publish, report and the run marker are cheap
and idempotent and always run.

One run per (output folder, date): the flow holds `pipelines.lock.run_lock(out, D)` from before validation
to the end, so a second run of the same day refuses (`RunLockedError`) or, with `wait`, starts when the
first ends. Tasks are retried only for errors that can be transient (`pipelines.errors.is_transient`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from prefect import Flow, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.runtime import flow_run

from features.config import ColumnsConfig, EmbeddingsConfig, FeaturesConfig, SamplingConfig
from models.config import CrossModalConfig, RankerConfig, RetrieverConfig
from pipelines import io, stage_inputs
from pipelines.config import (
    Config,
    DataConfig,
    PublishConfig,
    RuntimeConfig,
    config_hash,
    config_to_dict,
    load_config,
    parse_date,
)
from pipelines.embedding import embed_items
from pipelines.errors import is_transient
from pipelines.frames import build_frames
from pipelines.funnel import funnel_stage
from pipelines.funnel.inputs import lookback_days
from pipelines.lock import run_lock
from pipelines.names import CANDIDATES, EMBEDDINGS, FRAMES, FUNNEL, RANKER, RETRIEVER, RUNS, SCORES, TWO_TOWER
from pipelines.publish import publish
from pipelines.ranking import train_ranker_stage
from pipelines.ranking.ddp import ddp_ranker_stage
from pipelines.report import write_report
from pipelines.retriever import train_retriever_stage
from pipelines.validation import InputValidationError, validate_data
from retrieval.config import IndexConfig

FAULT_ENV = "RECSYS_FAULT_AT"  # test hook: "<task name>" or "publish:<step>" kills the process there


def _retry_on_io_only(task_, task_run, state) -> bool:  # noqa: ANN001 (Prefect's callback signature)
    """Retry transient IO failures only. A contract violation, a bug, or an IO error that stays (permission,
    missing file, read-only or full disk: `pipelines.errors.PERMANENT_ERRNOS`) fails the task at once."""
    try:
        state.result()
    except Exception as err:  # noqa: BLE001  (classified, not handled)
        return is_transient(err)
    return False


def _io_task(fn, name: str, cfg: Config):  # noqa: ANN001, ANN202
    return fn.with_options(
        name=name,
        retries=cfg.runtime.task_retries,
        retry_delay_seconds=cfg.runtime.task_retry_delay_s,
        retry_condition_fn=_retry_on_io_only,
    )


def _fault_point(name: str) -> None:
    """Crash tests: SIGKILL this process when RECSYS_FAULT_AT names this point (no effect otherwise)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- cache keys


Declared = Callable[[dict[str, Any]], str]  # a task's parameters -> fingerprint of what its stage reads


def stage_cache_policy(out: Path, declared: Declared) -> CachePolicy:
    """INPUTS + TASK_SOURCE without the run info (its run id is new every run), plus a key of the run date,
    the requested config's hash, the code revision and `declared(parameters)`, the fingerprint of what the stage reads
    (`pipelines.stage_inputs`); keys kept under <out>."""

    def inputs_key(context: Any, parameters: dict[str, Any]) -> str:  # noqa: ARG001 (Prefect's signature)
        run: io.RunInfo = parameters["run"]
        parts = [parameters["dt"].isoformat(), run.config_hash, run.code_revision, declared(parameters)]
        return stage_inputs.digest(parts)

    keys = Path(out) / ".prefect" / "cache-keys"
    keys.mkdir(parents=True, exist_ok=True)
    policy = (INPUTS + TASK_SOURCE) - "run" + CacheKeyFnPolicy(cache_key_fn=inputs_key)
    return policy.configure(key_storage=str(keys))


def outputs_ok(out: Path, datasets: tuple[str, ...], dt: date, requested_hash: str) -> bool:
    """True when every output partition of a stage is committed and was made with this config."""
    for ds in datasets:
        if not io.is_committed(out, ds, dt):
            return False
        if io.read_manifest(out, ds, dt).get("config_hash") != requested_hash:
            return False
    return True


# ---------------------------------------------------------------- tasks


@task(cache_policy=NO_CACHE)
def validate_task(cfg: Config, dt: date) -> dict[str, Any]:
    """Check the data contract (and that day D has events); raise InputValidationError listing every error, or
    return the resolved columns."""
    report = validate_data(
        cfg.data.dir, cfg.columns, max_image_bytes=cfg.embeddings.max_image_bytes, run_date=dt
    )
    logger = get_run_logger()
    for p in report.warnings:
        logger.warning(p.line())
    if not report.ok:
        raise InputValidationError("\n".join(p.line() for p in report.errors))
    return {
        "warnings": len(report.warnings),
        "columns": report.inferred.model_dump(),
        "stats": report.stats,
    }


@task(persist_result=True)
def embeddings_task(
    data_dir: Path, out: Path, dt: date, cfg: EmbeddingsConfig, crossmodal: CrossModalConfig, run: io.RunInfo
) -> dict[str, Any]:
    """Text and image embeddings of the catalogue (incremental; the cross-modal image encoder trained when
    the catalogue changed) -> embeddings/dt=D/."""
    _fault_point("embeddings")
    return embed_items(data_dir, out, dt, cfg, run, crossmodal_cfg=crossmodal, progress=False)


@task(persist_result=True)
def frames_task(
    data_dir: Path,
    out: Path,
    dt: date,
    data: DataConfig,
    columns: ColumnsConfig,
    features: FeaturesConfig,
    sampling: SamplingConfig,
    seed: int,
    run: io.RunInfo,
) -> dict[str, Any]:
    """Hash bucketing, negative sampling, history features -> frames/dt=D/."""
    _fault_point("frames")
    return build_frames(data_dir, out, dt, data, columns, features, sampling, seed, run)


@task(persist_result=True)
def train_retriever_task(
    out: Path,
    dt: date,
    cfg: RetrieverConfig,
    index_cfg: IndexConfig,
    seed: int,
    device: str,
    run: io.RunInfo,
) -> dict[str, Any]:
    """Two-tower training, FAISS index, top-K candidates -> retriever/dt=D/, candidates/dt=D/."""
    _fault_point("train-retriever")
    return train_retriever_stage(out, dt, cfg, index_cfg, seed, device, run)


@task(persist_result=True)
def train_ranker_task(
    out: Path, dt: date, cfg: RankerConfig, seed: int, device: str, run: io.RunInfo
) -> dict[str, Any]:
    """Ranker training and evaluation -> ranker/dt=D/ (under torchrun when cfg.ddp:
    `pipelines.ranking.ddp`)."""
    _fault_point("train-ranker")
    if cfg.ddp:
        return ddp_ranker_stage(out, dt, cfg, seed, device, run)
    return train_ranker_stage(out, dt, cfg, seed, device, run)


@task(persist_result=True)
def funnel_task(cfg: Config, dt: date, device: str, run: io.RunInfo) -> dict[str, Any]:
    """Multi-source candidates, the ranker trained on them, the publish guard -> candidates/, scores/,
    funnel/ of dt=D."""
    _fault_point("funnel")
    data = cfg.data
    return funnel_stage(
        data.dir, data.out, dt, cfg.funnel, cfg.ranker, list(cfg.sampling.positive_events),
        lookback_days(data), cfg.retriever.exclude_purchased,
        cfg.runtime.seed, device, run,
    )  # fmt: skip


@task(cache_policy=NO_CACHE)
def publish_task(out: Path, dt: date, run: io.RunInfo, cfg: PublishConfig) -> dict[str, Any]:
    """Validate and stamp the manifests of candidates/scores dt=D, then move their `_latest.json`."""
    logger = get_run_logger()

    def step(name: str) -> None:
        logger.info("publish %s: %s done", dt, name)
        _fault_point(f"publish:{name}")

    _fault_point("publish")
    return publish(out, dt, run, cfg, on_step=step)


@task(cache_policy=NO_CACHE)
def report_task(out: Path, dt: date, validation: dict[str, Any]) -> dict[str, Any]:
    """HTML report + metrics.json -> reports/dt=D/, also published as Prefect artifacts."""
    _fault_point("report")
    result = write_report(out, dt, validation=validation)
    create_markdown_artifact(
        key="recsys-report", markdown=result["markdown"], description=f"recsys evaluation report {dt}"
    )
    create_table_artifact(key="recsys-metrics", table=result["table"], description=f"headline metrics {dt}")
    return {"html": result["html"], "metrics": result["metrics_path"], "headline": result["headline"]}


RUNS_DATASET = RUNS  # runs/dt=D/ is committed last: its manifest marks day D complete


@task(cache_policy=NO_CACHE)
def commit_run_task(out: Path, dt: date, run: io.RunInfo, summary: dict[str, Any]) -> None:
    """Commit runs/dt=D/summary.json last, so a complete day is one whose runs partition exists."""
    with io.staged_partition(out, RUNS_DATASET, dt, run) as stage:
        stage.write_json("summary.json", summary)
    io.write_latest(out, RUNS_DATASET, max(dt, io.read_latest(out, RUNS_DATASET) or dt))


# ---------------------------------------------------------------- flow helpers


def day_is_current(out, dt: date, requested_hash: str) -> bool:  # noqa: ANN001
    """True when day D has a complete run made with the same requested config."""
    if not io.is_committed(out, RUNS_DATASET, dt):
        return False
    return io.read_manifest(out, RUNS_DATASET, dt).get("config_hash") == requested_hash


def resolve_columns(cfg: Config, inferred: dict[str, Any]) -> Config:
    """Fill undeclared column lists with the inferred ones, so every later stage sees the same columns."""
    declared = cfg.columns.model_dump()
    merged = {k: (v if v is not None else inferred.get(k)) for k, v in declared.items()}
    return cfg.model_copy(update={"columns": type(cfg.columns).model_validate(merged)})


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of a stage summary (what the flow logs and returns)."""
    return {k: v for k, v in result.items() if isinstance(v, int | float | str | bool)}


def run_info(resolved: Config, requested_hash: str) -> io.RunInfo:
    """Run metadata for every output: the flow run id, the hash of the config AS REQUESTED (what a backfill
    compares to decide whether a date is up to date) and the resolved config (written beside the outputs)."""
    run_id = str(flow_run.id or "").replace("-", "")[:12] or None
    return io.RunInfo.new(config_to_dict(resolved), requested_hash, run_id=run_id)


def date_to_run(date_text: str | None, timezone: str) -> date:
    """The run date D: the given date, or (a scheduled run) the day before the scheduled start time."""
    if date_text:
        return parse_date(date_text)
    scheduled = flow_run.scheduled_start_time
    if scheduled is None:
        raise ValueError(
            "nightly needs a date when it is not started by a schedule; fix: pass --date YYYY-MM-DD (or date=)"
        )
    from zoneinfo import ZoneInfo

    return scheduled.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


def _cached(
    fn: Any,
    name: str,
    cfg: Config,
    outputs: tuple[str, ...],
    declared: Declared,
    dt: date,
    requested_hash: str,
    force: bool,
):  # noqa: ANN202
    """An IO task with the stage cache policy; refreshes its cache when an output is missing or stale."""
    refresh = force or not outputs_ok(cfg.data.out, outputs, dt, requested_hash)
    return _io_task(fn, name, cfg).with_options(
        cache_policy=stage_cache_policy(cfg.data.out, declared), refresh_cache=refresh
    )


# persist_result: a caller (backfill) reads the summary from the returned state; when that state comes back
# from the API (e.g. after a "database is locked" retry of the ephemeral SQLite server under concurrent
# days) its data must be in result storage, or .result() raises MissingResult (seen once in CI)
@flow(name="nightly", log_prints=False, persist_result=True)
def nightly(
    date: str | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """Run every stage for day D (YYYY-MM-DD; a scheduled run takes the day before its scheduled start) and
    return a summary of what was written. `force` reruns every stage even when its cached result is valid.
    Another run of D on the same output folder makes this one fail at once (RunLockedError), or with
    `wait` start when that one ends."""
    cfg = load_config(config_path, overrides or [])
    dt = date_to_run(date, cfg.runtime.timezone)
    with run_lock(cfg.data.out, dt, wait=wait):
        return _run_stages(cfg, dt, force)


def _run_stages(cfg: Config, dt: date, force: bool) -> dict[str, Any]:
    """The body of `nightly` for day `dt`, under its lock."""
    logger = get_run_logger()
    requested_hash = config_hash(cfg)
    out, data_dir = cfg.data.out, cfg.data.dir
    logger.info("nightly %s: data=%s out=%s config=%s", dt, data_dir, out, requested_hash)

    checked = _io_task(validate_task, "validate", cfg)(cfg, dt)
    cfg = resolve_columns(cfg, checked["columns"])
    run = run_info(cfg, requested_hash)
    seed, device = cfg.runtime.seed, cfg.runtime.device

    def cached(fn, name: str, outputs: tuple[str, ...], declared: Declared):  # noqa: ANN001, ANN202
        return _cached(fn, name, cfg, outputs, declared, dt, requested_hash, force)

    emb = cached(
        embeddings_task, "embeddings", (EMBEDDINGS,),
        lambda p: stage_inputs.embeddings(p["data_dir"], p["out"], p["dt"]),
    ).submit(data_dir, out, dt, cfg.embeddings, cfg.crossmodal, run)  # fmt: skip
    frames = cached(
        frames_task, "frames", (FRAMES,), lambda p: stage_inputs.frames(p["data"], p["dt"])
    ).submit(data_dir, out, dt, cfg.data, cfg.columns, cfg.features, cfg.sampling, seed, run)
    stages: dict[str, dict[str, Any]] = {"embeddings": emb.result(), "frames": frames.result()}
    stages["retriever"] = cached(
        train_retriever_task, "train-retriever", (RETRIEVER, TWO_TOWER),
        lambda p: stage_inputs.retriever(p["out"], p["dt"]),
    )(out, dt, cfg.retriever, cfg.index, seed, device, run)  # fmt: skip
    stages["ranker"] = cached(
        train_ranker_task, "train-ranker", (RANKER,), lambda p: stage_inputs.ranker(p["out"], p["dt"])
    )(out, dt, cfg.ranker, seed, device, run)
    stages["funnel"] = cached(
        funnel_task, "funnel", (FUNNEL, CANDIDATES, SCORES), lambda p: stage_inputs.funnel(p["cfg"], p["dt"])
    )(cfg, dt, device, run)

    published = _io_task(publish_task, "publish", cfg)(out, dt, run, cfg.publish)
    validation = {"warnings": checked["warnings"], **checked["stats"]}
    report = _io_task(report_task, "report", cfg)(out, dt, validation)

    summary: dict[str, Any] = {
        "date": dt.isoformat(),
        "run_id": run.run_id,
        "config_hash": run.config_hash,
        "out": str(out),
        "validation": validation,
        "stages": {name: _brief(result) for name, result in stages.items()},
        "published": published["published"],
        "latest": published["latest"],
        "report": report["html"],
        "metrics": report["headline"],
    }
    _io_task(commit_run_task, "commit-run", cfg)(out, dt, run, summary)
    logger.info(
        "nightly %s done: published %s, latest %s, metrics %s",
        dt, published["published"], published["latest"], report["headline"],
    )  # fmt: skip
    return summary


def flow_for(runtime: RuntimeConfig) -> Flow:
    """The nightly flow with the task runner of `runtime.runner`.

    "local": Prefect's thread pool in this process. "dask": prefect-dask's DaskTaskRunner against the cluster
    at `runtime.dask_address` (a temporary local cluster when it is None); the submitted data stages
    (embeddings, frames) run on its workers, which need this package installed and `data.dir`/`data.out`
    on a file system they share. Training and scoring are called in the flow's process (the GPU box).
    """
    if runtime.runner == "local":
        return nightly
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise RuntimeError(
            "runtime.runner=dask needs prefect-dask; fix: pip install 'recsys-pipeline[dask]'"
        ) from err
    kwargs = {"address": runtime.dask_address} if runtime.dask_address else {}
    return nightly.with_options(task_runner=DaskTaskRunner(**kwargs))
