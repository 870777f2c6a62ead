"""Deployments served by `recsys serve`: the nightly flow on a cron, and a parameterised backfill.

`recsys serve` registers both with the Prefect API (PREFECT_API_URL; a `prefect server start` for the UI)
and runs their flow runs in its own process until interrupted. Users with a work pool deploy the same two
flows from prefect.yaml instead (`prefect deploy --all`, docs/operations.md).
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from flows.backfill import backfill
from flows.nightly import flow_for
from pipelines.config import Config


def build_deployments(cfg: Config, config_path: Path | None, overrides: list[str]) -> list:
    """The nightly deployment (cron from runtime.cron, one run at a time, date from the scheduled start) and
    the backfill deployment (parameters given when it is triggered)."""
    params = {"config_path": str(config_path) if config_path else None, "overrides": overrides}
    return [
        flow_for(cfg.runtime).to_deployment(
            name="nightly",
            schedule=Cron(cfg.runtime.cron, timezone=cfg.runtime.timezone),
            concurrency_limit=1,
            parameters=params,
            description="Nightly recommendation run for the day before the scheduled start.",
            tags=["recsys", "nightly"],
        ),
        backfill.to_deployment(
            name="backfill",
            parameters=params,
            description="Nightly flow over [start, end]; pass start and end when triggering.",
            tags=["recsys", "backfill"],
        ),
    ]


def serve_all(cfg: Config, config_path: Path | None, overrides: list[str]) -> None:  # pragma: no cover
    """Register the deployments with the Prefect API and run them from this process until interrupted."""
    serve(*build_deployments(cfg, config_path, overrides))
