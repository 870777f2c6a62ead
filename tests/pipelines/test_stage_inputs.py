"""The fingerprints of what each stage reads: they change with an input the stage reads, and only then."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import polars as pl

from pipelines import io, stage_inputs
from pipelines.config import Config, DataConfig, FunnelConfig

D = date(2024, 3, 10)


def _data(root: Path) -> Path:
    io.write_input_table(root, "users", pl.DataFrame({"user_id": ["u1"]}))
    io.write_input_table(root, "items", pl.DataFrame({"item_id": ["i1"]}))
    for day in range(1, 20):
        part = io.event_partition_dir(root, date(2024, 3, day))
        part.mkdir(parents=True)
        (part / "part-0.parquet").write_bytes(b"x")
    return root


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_frames_fingerprint_follows_the_window_only(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    cfg = DataConfig(dir=data, train_window_days=3, history_lookback_days=2)  # reads 03-06 .. 03-11
    before = stage_inputs.frames(cfg, D)
    _touch(io.event_partition_dir(data, date(2024, 3, 5)) / "part-0.parquet")  # before the window
    _touch(io.event_partition_dir(data, date(2024, 3, 12)) / "part-0.parquet")  # after D+1
    assert stage_inputs.frames(cfg, D) == before
    _touch(io.event_partition_dir(data, date(2024, 3, 6)) / "part-0.parquet")
    assert stage_inputs.frames(cfg, D) != before


def test_funnel_fingerprint_covers_its_horizon(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    cfg = Config(
        data=DataConfig(dir=data, out=tmp_path / "out", train_window_days=3, history_lookback_days=2),
        funnel=FunnelConfig(train_days=2, horizon_days=7),
    )  # lookback 5 days: reads 03-04 .. 03-17
    before = stage_inputs.funnel(cfg, D)
    _touch(io.event_partition_dir(data, date(2024, 3, 18)) / "part-0.parquet")
    assert stage_inputs.funnel(cfg, D) == before
    _touch(io.event_partition_dir(data, date(2024, 3, 17)) / "part-0.parquet")
    assert stage_inputs.funnel(cfg, D) != before


def test_embeddings_fingerprint_ignores_events(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    before = stage_inputs.embeddings(data, tmp_path / "out", D)
    _touch(io.event_partition_dir(data, D) / "part-0.parquet")
    assert stage_inputs.embeddings(data, tmp_path / "out", D) == before
    _touch(io.items_path(data))
    assert stage_inputs.embeddings(data, tmp_path / "out", D) != before
