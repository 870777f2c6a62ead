"""Backfills: the nightly flow over a date range, one subflow per date."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.nightly import day_is_current, flow_for
from pipelines.config import RuntimeConfig, config_hash, load_config, parse_date
from pipelines.errors import failure_lines


def date_range(start: date, end: date) -> list[date]:
    """Inclusive list of days.

    >>> [d.day for d in date_range(date(2024, 3, 30), date(2024, 4, 1))]
    [30, 31, 1]
    """
    if end < start:
        raise ValueError(f"backfill end {end} is before start {start}; fix: pass --start <= --end")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _run_day(
    dt: date,
    config_path: str | None,
    overrides: list[str],
    force: bool,
    runtime: RuntimeConfig,
    wait: bool = False,
) -> dict[str, Any]:
    """One nightly subflow (with the task runner of runtime.runner); a failure is returned, not raised."""
    state = flow_for(runtime)(
        date=dt.isoformat(),
        config_path=config_path,
        overrides=overrides,
        force=force,
        wait=wait,
        return_state=True,
    )
    if state.is_completed():
        return {"date": dt.isoformat(), "status": "completed", "summary": state.result()}
    try:
        state.result()
        reason = state.message or state.name
    except Exception as err:  # noqa: BLE001  (a failed day is recorded, the others go on)
        reason = failure_lines(err)[0].removeprefix("error: ")  # the first problem, with its fix
    return {"date": dt.isoformat(), "status": "failed", "reason": reason}


@task(cache_policy=NO_CACHE, persist_result=True)
def day_task(
    dt: date,
    config_path: str | None,
    overrides: list[str],
    force: bool,
    runtime: RuntimeConfig,
    wait: bool = False,
) -> dict[str, Any]:
    """One independent day (used with --independent, in parallel up to the runner's limit)."""
    return _run_day(dt, config_path, overrides, force, runtime, wait)


@flow(name="backfill", log_prints=False)
def backfill(
    start: str,
    end: str,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    independent: bool = False,
    force: bool = False,
    max_concurrency: int = 2,
    wait: bool = False,
) -> dict[str, Any]:
    """Run `nightly` for every date in [start, end].

    Sequential by default (warm starts chain days); with `independent`, days run in parallel, at most
    `max_concurrency` at once. Days whose complete run used the same config are skipped unless `force`.
    A failed day does not stop the others; the summary lists failures and why. With `force`, every stage
    of every day reruns (the nightly stage caches are refreshed too). A day that another run is writing
    to the same output folder fails (its lock is held), or with `wait` runs when that run ends.
    """
    logger = get_run_logger()
    overrides = list(overrides or [])
    cfg = load_config(config_path, overrides)
    wanted = config_hash(cfg)
    days = date_range(parse_date(start), parse_date(end))
    todo = [d for d in days if force or not day_is_current(cfg.data.out, d, wanted)]
    skipped = [d.isoformat() for d in days if d not in todo]
    if skipped:
        logger.info("skipping %d up-to-date days: %s", len(skipped), skipped)
    if independent and len(todo) > 1:
        runner = ThreadPoolTaskRunner(max_workers=max_concurrency)
        with runner:
            params = {
                "config_path": config_path,
                "overrides": overrides,
                "force": force,
                "runtime": cfg.runtime,
                "wait": wait,
            }
            futures = [runner.submit(day_task, parameters={"dt": d, **params}) for d in todo]
            results = [f.result() for f in futures]
    else:
        results = [_run_day(d, config_path, overrides, force, cfg.runtime, wait) for d in todo]
    failed = [{"date": r["date"], "reason": r["reason"]} for r in results if r["status"] == "failed"]
    for f in failed:
        logger.error("backfill day %s failed: %s", f["date"], f["reason"])
    return {
        "completed": [r["date"] for r in results if r["status"] == "completed"],
        "skipped": skipped,
        "failed": failed,
    }
