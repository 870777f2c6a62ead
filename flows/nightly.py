"""The nightly flow: one day's run of every stage, as Prefect tasks.

Tasks are thin: they receive the resolved config, the run date and the run info (paths, dates, config; never
DataFrames), call one stage in `pipelines/`, and return its small summary. Stages write whole partitions through
`pipelines.io`, so a retried or repeated task replaces its output atomically. A backfill is this flow over
each date.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipelines import io
from pipelines.config import Config, config_hash, config_to_dict, load_config, parse_date
from pipelines.embedding import embed_items
from pipelines.frames import build_frames
from pipelines.validation import validate_data


class InputError(ValueError):
    """The inputs break the data contract; the message has one line per problem (file, column, fix)."""


def _retry_on_io_only(task_, task_run, state) -> bool:  # noqa: ANN001 (Prefect's callback signature)
    """Retry transient IO failures only; a contract violation or a bug fails the task at once."""
    try:
        state.result()
    except OSError:
        return True
    except BaseException:  # noqa: BLE001
        return False
    return False


def _io_task(fn, name: str, cfg: Config):  # noqa: ANN001, ANN202
    return fn.with_options(
        name=name,
        retries=cfg.runtime.task_retries,
        retry_delay_seconds=cfg.runtime.task_retry_delay_s,
        retry_condition_fn=_retry_on_io_only,
    )


@task(cache_policy=NO_CACHE)
def validate_task(cfg: Config, dt: date) -> dict[str, Any]:
    """Check the data contract; raise InputError listing every problem, or return the resolved columns."""
    report = validate_data(cfg.data.dir, cfg.columns)
    logger = get_run_logger()
    for p in report.warnings:
        logger.warning(p.line())
    if not report.ok:
        raise InputError("\n".join(p.line() for p in report.errors))
    return {
        "warnings": len(report.warnings),
        "columns": report.inferred.model_dump(),
        "stats": report.stats,
    }


@task(cache_policy=NO_CACHE)
def frames_task(cfg: Config, dt: date, run: io.RunInfo) -> dict[str, Any]:
    """Hash bucketing, negative sampling, history features -> frames/dt=D/."""
    return build_frames(
        cfg.data.dir, cfg.data.out, dt, cfg.data, cfg.columns, cfg.features, cfg.sampling,
        cfg.runtime.seed, run,
    )


@task(cache_policy=NO_CACHE)
def embeddings_task(cfg: Config, dt: date, run: io.RunInfo) -> dict[str, Any]:
    """Text and image embeddings of the catalogue (incremental) -> embeddings/dt=D/."""
    return embed_items(cfg.data.dir, cfg.data.out, dt, cfg.embeddings, run)


RUNS_DATASET = "runs"  # runs/dt=D/ is committed last: its manifest marks day D complete


@task(cache_policy=NO_CACHE)
def commit_run_task(cfg: Config, dt: date, run: io.RunInfo, summary: dict[str, Any]) -> None:
    """Commit runs/dt=D/summary.json last, so a complete day is one whose runs partition exists."""
    with io.staged_partition(cfg.data.out, RUNS_DATASET, dt, run) as stage:
        stage.write_json("summary.json", summary)
    io.write_latest(cfg.data.out, RUNS_DATASET, max(dt, io.read_latest(cfg.data.out, RUNS_DATASET) or dt))


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
        raise ValueError("nightly needs --date when it is not started by a schedule")
    from zoneinfo import ZoneInfo

    return scheduled.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


@flow(name="nightly", log_prints=False)
def nightly(
    date: str | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run every stage for day D (YYYY-MM-DD; a scheduled run takes the day before its scheduled start) and
    return a summary of what was written."""
    logger = get_run_logger()
    cfg = load_config(config_path, overrides or [])
    dt = date_to_run(date, cfg.runtime.timezone)
    requested_hash = config_hash(cfg)
    logger.info("nightly %s: data=%s out=%s config=%s", dt, cfg.data.dir, cfg.data.out, requested_hash)

    checked = _io_task(validate_task, "validate", cfg)(cfg, dt)
    cfg = resolve_columns(cfg, checked["columns"])
    run = run_info(cfg, requested_hash)

    emb = _io_task(embeddings_task, "embeddings", cfg).submit(cfg, dt, run)
    frames = _io_task(frames_task, "frames", cfg).submit(cfg, dt, run)
    stages = {"embeddings": emb.result(), "frames": frames.result()}

    summary: dict[str, Any] = {
        "date": dt.isoformat(),
        "run_id": run.run_id,
        "config_hash": run.config_hash,
        "out": str(cfg.data.out),
        "validation": {"warnings": checked["warnings"], **checked["stats"]},
        "stages": {name: _brief(result) for name, result in stages.items()},
    }
    _io_task(commit_run_task, "commit-run", cfg)(cfg, dt, run, summary)
    logger.info("nightly %s done: %s", dt, summary)
    return summary
