"""Publishing: validation of committed partitions, manifest stamping, the latest pointer, hive readers."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.dataset as pads
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import io
from pipelines.config import PublishConfig
from pipelines.publish import PublishError, check_partition, publish, published_dates, scalar_metrics

D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)


def _run(tag: str = "r1", hash_: str = "cafe") -> io.RunInfo:
    return io.RunInfo(run_id=tag, config_hash=hash_, code_revision="test", config={"k": 1})


def _table(users: list[str], items: list[str], scores: list[float]) -> pl.DataFrame:
    df = pl.DataFrame({"user_id": users, "item_id": items, "score": scores})
    return df.with_columns(
        pl.col("score").rank("ordinal", descending=True).over("user_id").cast(pl.Int32).alias("rank"),
        pl.lit("covis").alias("source"),
    )


def _stage(
    out: Path, dt: date, df: pl.DataFrame, run: io.RunInfo | None = None, datasets=("candidates", "scores")
):
    run = run or _run()
    for ds in datasets:
        with io.staged_partition(out, ds, dt, run) as stage:
            stage.write_table(df)
    with io.staged_partition(out, "ranker", dt, run) as stage:
        stage.write_json("metrics.json", {"valid": {"auc": 0.75, "calibration": {"predicted": [0.1]}}})


# two users, three rows: u1 ranks b (0.9) over a (0.5); u2 has c only
TINY = _table(["u1", "u1", "u2"], ["a", "b", "c"], [0.5, 0.9, 0.3])


def test_publish_stamps_manifests_and_moves_latest(tmp_path: Path):
    _stage(tmp_path, D1, TINY)
    result = publish(tmp_path, D1, _run("pub"), PublishConfig())
    assert result["published"] == {
        "candidates": {"dt": "2024-03-01", "rows": 3},
        "scores": {"dt": "2024-03-01", "rows": 3},
    }
    for ds in ("candidates", "scores"):
        stamp = io.read_manifest(tmp_path, ds, D1)["published"]
        assert stamp["run_id"] == "pub" and stamp["config_hash"] == "cafe" and stamp["rows"] == 3
        assert stamp["models"]["ranker"]["id"] == "ranker/dt=2024-03-01@r1"
        assert stamp["metrics"] == {"ranker.valid.auc": 0.75}  # the lists are not scalars
        assert io.read_latest(tmp_path, ds) == D1
        latest = json.loads((io.dataset_dir(tmp_path, ds) / io.LATEST).read_text())
        assert latest["rows"] == 3 and latest["run_id"] == "pub"


def test_rerun_of_an_older_day_keeps_latest_and_replaces_that_day(tmp_path: Path):
    _stage(tmp_path, D1, TINY)
    publish(tmp_path, D1, _run(), PublishConfig())
    _stage(tmp_path, D2, TINY)
    publish(tmp_path, D2, _run(), PublishConfig())
    # D1 rerun with one row less: D1 is replaced whole, latest stays on D2
    _stage(tmp_path, D1, TINY.head(2))
    publish(tmp_path, D1, _run(), PublishConfig())
    assert io.read_latest(tmp_path, "scores") == D2
    assert io.read_table(tmp_path, "scores", D1).height == 2
    assert published_dates(tmp_path, "scores") == [D1, D2]


def test_unpublished_day_does_not_move_latest(tmp_path: Path):
    _stage(tmp_path, D1, TINY)
    publish(tmp_path, D1, _run(), PublishConfig())
    _stage(tmp_path, D2, TINY)  # committed by the stages, but the run crashed before publishing
    assert io.read_latest(tmp_path, "scores") == D1
    assert published_dates(tmp_path, "scores") == [D1]


def test_config_hash_mismatch_is_refused(tmp_path: Path):
    _stage(tmp_path, D1, TINY, run=_run(hash_="other"))
    with pytest.raises(PublishError, match="written with config other.*fix: rerun"):
        publish(tmp_path, D1, _run(hash_="cafe"), PublishConfig())
    assert io.read_latest(tmp_path, "scores") is None  # nothing moved


def test_missing_partition_and_bad_columns_are_refused(tmp_path: Path):
    with pytest.raises(PublishError, match="not committed"):
        check_partition(tmp_path, "scores", D1, "cafe")
    _stage(tmp_path, D1, TINY.drop("rank"), datasets=("scores",))
    with pytest.raises(PublishError, match="column 'rank' is missing"):
        check_partition(tmp_path, "scores", D1, "cafe")
    _stage(tmp_path, D2, TINY.with_columns(pl.col("rank") - 1), datasets=("scores",))
    with pytest.raises(PublishError, match="'rank' has 0 < 1"):
        check_partition(tmp_path, "scores", D2, "cafe")


def test_row_count_must_match_the_manifest(tmp_path: Path):
    _stage(tmp_path, D1, TINY)
    path = io.partition_dir(tmp_path, "scores", D1) / io.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["rows"]["part-0"] = 4  # the file has 3
    path.write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="3 rows but the manifest says 4"):
        publish(tmp_path, D1, _run(), PublishConfig())


def test_only_enabled_datasets_are_published(tmp_path: Path):
    _stage(tmp_path, D1, TINY, datasets=("scores",))  # no candidates at all
    result = publish(tmp_path, D1, _run(), PublishConfig(candidates=False))
    assert list(result["published"]) == ["scores"]
    assert io.read_latest(tmp_path, "candidates") is None


def test_keep_days_prunes_older_partitions(tmp_path: Path):
    for d in (D1, D2, D3):
        _stage(tmp_path, d, TINY)
        result = publish(tmp_path, d, _run(), PublishConfig(keep_days=2))
    # keep 2 days up to latest D3: D2 and D3 stay, D1 goes from both datasets
    assert sorted(result["pruned"]) == ["candidates/dt=2024-03-01", "scores/dt=2024-03-01"]
    assert io.committed_dates(tmp_path, "scores") == [D2, D3]
    assert not io.partition_dir(tmp_path, "scores", D1).exists()


def test_hive_dataset_reads_with_polars_and_pyarrow(tmp_path: Path):
    _stage(tmp_path, D1, TINY)
    _stage(tmp_path, D2, TINY.head(1))
    for d in (D1, D2):
        publish(tmp_path, d, _run(), PublishConfig())
    root = io.dataset_dir(tmp_path, "scores")
    # polars: a glob of the partitions; `dt` comes from the folder names; 3 + 1 rows
    df = pl.scan_parquet(root / "**/*.parquet", hive_partitioning=True).collect()
    assert df.height == 4
    assert df.group_by("dt").len().sort("dt").rows() == [(D1, 3), (D2, 1)]  # dt parsed as a Date
    assert df.filter((pl.col("dt") == D1) & (pl.col("user_id") == "u1")).sort("rank")[
        "item_id"
    ].to_list() == [
        "b",
        "a",
    ]
    # pyarrow: the folder itself; the _manifest/_config/_latest JSON files are skipped (leading "_")
    table = pads.dataset(root, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 4
    assert sorted(table.column("dt").to_pylist()) == ["2024-03-01"] * 3 + ["2024-03-02"]


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.one_of(st.floats(allow_nan=False), st.integers(-5, 5), st.text(max_size=3), st.booleans()),
        lambda kids: st.dictionaries(st.text("abc", min_size=1, max_size=2), kids, max_size=3),
        max_leaves=12,
    )
)
def test_scalar_metrics_keeps_exactly_the_numeric_leaves(tree):
    def count(t) -> int:  # numbers (not bools) reachable through dicts only
        if isinstance(t, dict):
            return sum(count(v) for v in t.values())
        return int(isinstance(t, int | float) and not isinstance(t, bool))

    flat = scalar_metrics(tree) if isinstance(tree, dict) else {}
    assert len(flat) == (count(tree) if isinstance(tree, dict) else 0)
    assert all(isinstance(v, float) for v in flat.values())
