"""The nightly flow: one day's run of every stage, as Prefect tasks.

Tasks are thin: they receive the resolved config, the run date and the run info (paths, dates, config; never
DataFrames), call one stage in `pipelines/`, and return its small summary. Stages write whole partitions through
`pipelines.io`, so a retried or repeated task replaces its output atomically. A backfill is this flow over
each date.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipelines import io
from pipelines.config import Config, config_hash, config_to_dict, load_config, parse_date
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


def resolve_columns(cfg: Config, inferred: dict[str, Any]) -> Config:
    """Fill undeclared column lists with the inferred ones, so every later stage sees the same columns."""
    declared = cfg.columns.model_dump()
    merged = {k: (v if v is not None else inferred.get(k)) for k, v in declared.items()}
    return cfg.model_copy(update={"columns": type(cfg.columns).model_validate(merged)})


def run_info(cfg: Config) -> io.RunInfo:
    run_id = str(flow_run.get_id() or "")[:12] or None
    return io.RunInfo.new(config_to_dict(cfg), config_hash(cfg), run_id=run_id)


@flow(name="nightly", log_prints=False)
def nightly(
    date: str,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run every stage for one day D (YYYY-MM-DD) and return a summary of what was written."""
    logger = get_run_logger()
    dt = parse_date(date)
    cfg = load_config(config_path, overrides or [])
    logger.info("nightly %s: data=%s out=%s config=%s", dt, cfg.data.dir, cfg.data.out, config_hash(cfg))

    checked = _io_task(validate_task, "validate", cfg)(cfg, dt)
    cfg = resolve_columns(cfg, checked["columns"])
    run = run_info(cfg)

    summary: dict[str, Any] = {
        "date": dt.isoformat(),
        "run_id": run.run_id,
        "config_hash": run.config_hash,
        "out": str(cfg.data.out),
        "validation": {"warnings": checked["warnings"], **checked["stats"]},
    }
    logger.info("nightly %s done: %s", dt, summary)
    return summary
