"""Publishing: validate the committed candidates/scores of a day, stamp their manifests, move `_latest.json`.

The stages commit `candidates/dt=D/` and `scores/dt=D/` whole (``io.staged_partition``, `_manifest.json`
written last). Publishing a day then

1. checks each partition: committed, written with this run's config hash, its Parquet file has the columns
   of the output contract and exactly the rows its manifest names, no null ids, ranks >= 1;
2. adds a ``published`` section to its manifest (run id, config hash, code revision, the model partitions
   that made it, row counts, the scalar metrics of the models), replacing `_manifest.json` atomically;
3. points ``<dataset>/_latest.json`` at the newest published date (a rerun of an older day leaves it alone);
4. with ``publish.keep_days``, deletes partitions older than ``latest - keep_days + 1``.

A partition is "complete" when its manifest has the ``published`` section. A crash anywhere leaves every
partition either as it was or fully replaced, and ``_latest.json`` naming a complete day: it is only moved
after the manifests it points at are written. The datasets are hive-partitioned Parquet
(``<out>/scores/dt=YYYY-MM-DD/part-0.parquet``); the `_`-prefixed JSON files beside them are skipped by
Parquet dataset readers.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipelines import io
from pipelines.config import PublishConfig
from pipelines.names import CANDIDATES, FUNNEL, METRICS_FILE, RANKER, RETRIEVER, SCORES

log = logging.getLogger(__name__)

TABLE = "part-0"
# output contract of the published datasets: column -> accepted polars type classes
CONTRACT: dict[str, dict[str, tuple[type[pl.DataType], ...]]] = {
    CANDIDATES: {
        "user_id": (pl.String,),
        "item_id": (pl.String,),
        "rank": (pl.Int16, pl.Int32, pl.Int64, pl.UInt16, pl.UInt32, pl.UInt64),
        "score": (pl.Float32, pl.Float64),
        "source": (pl.String,),
    },
    SCORES: {
        "user_id": (pl.String,),
        "item_id": (pl.String,),
        "score": (pl.Float32, pl.Float64),
        "rank": (pl.Int16, pl.Int32, pl.Int64, pl.UInt16, pl.UInt32, pl.UInt64),
        "source": (pl.String,),
    },
}
MODEL_DATASETS = (RETRIEVER, RANKER, FUNNEL)  # the model partitions a published day names


class PublishError(ValueError):
    """A partition that cannot be published; the message names the file and the fix."""


def scalar_metrics(tree: Any, prefix: str = "", limit: int = 400) -> dict[str, float]:
    """Numbers of a nested metrics dict flattened to ``a.b.c`` keys (lists and strings are skipped).

    >>> scalar_metrics({"valid": {"auc": 0.7, "calibration": [1, 2]}, "n": 3})
    {'valid.auc': 0.7, 'n': 3.0}
    """
    out: dict[str, float] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                out[name] = float(value)
            elif isinstance(value, Mapping):
                out.update(scalar_metrics(value, name, limit))
            if len(out) >= limit:
                break
    return dict(list(out.items())[:limit])


def read_stage_metrics(out: Any, dataset: str, dt: date) -> dict[str, Any] | None:
    """metrics.json of a committed model partition, or None when it has none."""
    import json

    if not io.is_committed(out, dataset, dt):
        return None
    path = io.partition_dir(out, dataset, dt) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _model_ids(out: Any, dt: date) -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for ds in MODEL_DATASETS:
        if not io.is_committed(out, ds, dt):
            continue
        m = io.read_manifest(out, ds, dt)
        models[ds] = {
            "id": f"{ds}/dt={dt.isoformat()}@{m.get('run_id')}",
            "run_id": m.get("run_id"),
            "config_hash": m.get("config_hash"),
            "code_revision": m.get("code_revision"),
        }
    return models


def check_partition(out: Any, dataset: str, dt: date, config_hash: str) -> dict[str, Any]:
    """Validate a committed output partition against its manifest and the output contract.

    Returns its manifest; raises PublishError naming the file and the fix.
    """
    if not io.is_committed(out, dataset, dt):
        raise PublishError(
            f"{io.partition_dir(out, dataset, dt)}: not committed (no {io.MANIFEST}); "
            f"fix: rerun the stage that writes {dataset} for {dt}"
        )
    manifest = io.read_manifest(out, dataset, dt)
    where = io.partition_dir(out, dataset, dt)
    if manifest.get("config_hash") != config_hash:
        raise PublishError(
            f"{where}/{io.MANIFEST}: written with config {manifest.get('config_hash')}, this run's config is "
            f"{config_hash}; fix: rerun the {dataset} stage for {dt} with this config"
        )
    path = where / f"{TABLE}.parquet"
    if not path.is_file():
        raise PublishError(f"{path}: missing from a committed partition; fix: rerun the {dataset} stage")
    expected_rows = (manifest.get("rows") or {}).get(TABLE)
    actual_rows = pq.read_metadata(path).num_rows
    if expected_rows is not None and expected_rows != actual_rows:
        raise PublishError(
            f"{path}: {actual_rows} rows but the manifest says {expected_rows}; fix: rerun the {dataset} stage"
        )
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    for col, types in CONTRACT[dataset].items():
        if col not in schema:
            raise PublishError(f"{path}: column {col!r} is missing; fix: the {dataset} stage must write it")
        if not isinstance(schema[col], types):
            raise PublishError(
                f"{path}: column {col!r} is {schema[col]}, expected one of {[t.__name__ for t in types]}; "
                f"fix: cast it in the {dataset} stage"
            )
    checks = lf.select(
        pl.col("user_id").null_count().alias("null_user"),
        pl.col("item_id").null_count().alias("null_item"),
        pl.col("rank").min().alias("min_rank"),
    ).collect()
    if checks["null_user"][0] or checks["null_item"][0]:
        raise PublishError(f"{path}: null user_id or item_id; fix: the {dataset} stage must drop them")
    min_rank = checks["min_rank"][0]
    if min_rank is not None and min_rank < 1:
        raise PublishError(f"{path}: column 'rank' has {min_rank} < 1; ranks start at 1")
    return manifest


def published_dates(out: Any, dataset: str) -> list[date]:
    """Committed dates of a dataset whose manifest carries the ``published`` section, sorted."""
    return [d for d in io.committed_dates(out, dataset) if "published" in io.read_manifest(out, dataset, d)]


def _prune(out: Any, dataset: str, latest: date, keep_days: int) -> list[str]:
    """Delete the partitions older than latest - keep_days + 1 (each moved out of the dataset, then deleted)."""
    cutoff = latest - timedelta(days=keep_days - 1)
    removed = []
    for d in io.committed_dates(out, dataset):
        if d >= cutoff:
            continue
        scratch = io.staging_dir(out, dataset)
        scratch.mkdir(parents=True, exist_ok=True)
        doomed = scratch / f"deleted-dt={d.isoformat()}-{uuid.uuid4().hex[:6]}"
        os.rename(io.partition_dir(out, dataset, d), doomed)  # readers never see a half-deleted partition
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(f"{dataset}/dt={d.isoformat()}")
    return removed


def publish(
    out: Any,
    dt: date,
    run: io.RunInfo,
    cfg: PublishConfig,
    *,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Publish day `dt` of candidates and/or scores (see the module docstring); returns what was published.

    `on_step(name)` is called after each step ("manifest:<dataset>", "latest:<dataset>"): the flow uses it
    for progress logs and the crash tests for fault injection.
    """
    step = on_step or (lambda _name: None)
    datasets = [ds for ds, on in ((CANDIDATES, cfg.candidates), (SCORES, cfg.scores)) if on]
    manifests = {
        ds: check_partition(out, ds, dt, run.config_hash) for ds in datasets
    }  # all, before any write
    models = _model_ids(out, dt)
    metrics: dict[str, float] = {}
    for ds in MODEL_DATASETS:
        stage_metrics = read_stage_metrics(out, ds, dt)
        if stage_metrics is not None:
            metrics.update(scalar_metrics(stage_metrics, ds))
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    published: dict[str, Any] = {}
    for ds, manifest in manifests.items():
        rows = int((manifest.get("rows") or {}).get(TABLE, 0))
        manifest["published"] = {
            "run_id": run.run_id,
            "config_hash": run.config_hash,
            "code_revision": run.code_revision,
            "models": models,
            "rows": rows,
            "metrics": metrics,
            "published_at": stamp,
        }
        io.write_json_atomic(io.partition_dir(out, ds, dt) / io.MANIFEST, manifest)
        published[ds] = {"dt": dt.isoformat(), "rows": rows}
        step(f"manifest:{ds}")
    latest: dict[str, str] = {}
    pruned: list[str] = []
    for ds in datasets:
        newest = max(published_dates(out, ds))
        info = io.read_manifest(out, ds, newest)["published"]
        io.write_latest(out, ds, newest, {"run_id": info["run_id"], "rows": info["rows"]})
        latest[ds] = newest.isoformat()
        step(f"latest:{ds}")
        if cfg.keep_days is not None:
            pruned += _prune(out, ds, newest, cfg.keep_days)
    log.info("published %s for %s; latest %s; pruned %s", sorted(published), dt, latest, pruned)
    return {"published": published, "latest": latest, "models": models, "pruned": pruned}
