from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import io

D = date(2024, 3, 1)


def _run(tag: str = "r1") -> io.RunInfo:
    return io.RunInfo(run_id=tag, config_hash="cafe", code_revision="test", config={"k": 1})


def _write(out: Path, values: list[int], tag: str = "r1") -> None:
    with io.staged_partition(out, "scores", D, _run(tag)) as stage:
        stage.write_table(pl.DataFrame({"v": values}))
        stage.extra["note"] = tag


def test_write_then_read_with_manifest(tmp_path: Path):
    _write(tmp_path, [1, 2, 3])
    assert io.read_table(tmp_path, "scores", D)["v"].to_list() == [1, 2, 3]
    m = io.read_manifest(tmp_path, "scores", D)
    assert m["rows"] == {"part-0": 3} and m["run_id"] == "r1" and m["config_hash"] == "cafe"
    assert m["note"] == "r1" and m["dt"] == "2024-03-01"
    assert (io.partition_dir(tmp_path, "scores", D) / io.CONFIG_FILE).is_file()
    assert io.committed_dates(tmp_path, "scores") == [D]


def test_rerun_replaces_partition_whole(tmp_path: Path):
    _write(tmp_path, [1, 2, 3])
    with io.staged_partition(tmp_path, "scores", D, _run("r2")) as stage:
        stage.write_table(pl.DataFrame({"v": [9]}), name="other")
    files = sorted(p.name for p in io.partition_dir(tmp_path, "scores", D).iterdir())
    assert files == ["_config.json", "_manifest.json", "other.parquet"]  # part-0 of the old run is gone
    assert not list(io.staging_dir(tmp_path, "scores").iterdir())


def test_exception_inside_block_commits_nothing(tmp_path: Path):
    _write(tmp_path, [1, 2, 3])
    with pytest.raises(RuntimeError):
        with io.staged_partition(tmp_path, "scores", D, _run("r2")) as stage:
            stage.write_table(pl.DataFrame({"v": [7]}))
            raise RuntimeError("stage failed")
    assert io.read_table(tmp_path, "scores", D)["v"].to_list() == [1, 2, 3]
    assert io.read_manifest(tmp_path, "scores", D)["run_id"] == "r1"


def test_crash_between_renames_is_recovered(tmp_path: Path):
    # Simulate a kill after `final -> .replaced-*` and before `staging -> final`.
    _write(tmp_path, [1, 2, 3])
    final = io.partition_dir(tmp_path, "scores", D)
    os.rename(final, io.staging_dir(tmp_path, "scores") / f"replaced-{final.name}-dead")
    assert io.read_table(tmp_path, "scores", D)["v"].to_list() == [1, 2, 3]


def test_hive_readers_skip_staging_folders(tmp_path: Path):
    _write(tmp_path, [1, 2])
    staging = io.staging_dir(tmp_path, "scores") / "dt=2024-03-02-x"
    staging.mkdir()
    (tmp_path / "scores" / "_latest.json").write_text("{}")
    pl.DataFrame({"v": [99]}).write_parquet(staging / "part-0.parquet")
    import pyarrow.dataset as ds

    table = ds.dataset(tmp_path / "scores", format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("v").to_pylist()) == [1, 2]
    lf = pl.scan_parquet(tmp_path / "scores" / "**" / "*.parquet", hive_partitioning=True)
    assert sorted(lf.collect()["v"].to_list()) == [1, 2]


KILLER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, date, datetime
    from pathlib import Path
    import polars as pl
    from pipelines import io
    run = io.RunInfo(run_id="killed", config_hash="x", code_revision="t", config={})
    with io.staged_partition(Path(sys.argv[1]), "scores", date(2024, 3, 1), run) as stage:
        stage.write_table(pl.DataFrame({"v": list(range(1000))}))
        print("staged", flush=True)
        time.sleep(60)  # killed here, mid-write
    """
)


def test_sigkill_midway_leaves_previous_partition(tmp_path: Path):
    _write(tmp_path, [1, 2, 3])
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "staged"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert io.read_table(tmp_path, "scores", D)["v"].to_list() == [1, 2, 3]
    assert io.read_manifest(tmp_path, "scores", D)["run_id"] == "r1"
    assert io.clean_staging(tmp_path, "scores") == 1  # the killed run's leftovers, invisible to readers
    _write(tmp_path, [4], tag="r3")  # and the next run commits normally
    assert io.read_table(tmp_path, "scores", D)["v"].to_list() == [4]


def test_latest_pointer(tmp_path: Path):
    assert io.read_latest(tmp_path, "scores") is None
    io.write_latest(tmp_path, "scores", D)
    io.write_latest(tmp_path, "scores", date(2024, 3, 2))
    assert io.read_latest(tmp_path, "scores") == date(2024, 3, 2)


def test_scan_events_window_and_id_cast(tmp_path: Path):
    for day, uid in [(date(2024, 3, 1), 7), (date(2024, 3, 2), 8), (date(2024, 3, 3), 9)]:
        ts = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        # integer ids are accepted and read back as strings
        df = pl.DataFrame({"user_id": [uid], "item_id": [100 + uid], "event": ["view"], "ts": [ts]})
        io.write_input_events(tmp_path, day, df.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))))
    got = io.scan_events(tmp_path, date(2024, 3, 2), date(2024, 3, 3)).collect()
    assert got["user_id"].to_list() == ["8", "9"]
    assert got.schema["item_id"] == pl.String
    assert got["dt"].to_list() == [date(2024, 3, 2), date(2024, 3, 3)]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), max_size=30), st.lists(st.text(max_size=8), max_size=30))
def test_write_read_round_trip(tmp_path_factory, ints: list[int], texts: list[str]):
    out = tmp_path_factory.mktemp("rt")
    n = min(len(ints), len(texts))
    df = pl.DataFrame({"i": ints[:n], "s": texts[:n]}, schema={"i": pl.Int64, "s": pl.String})
    with io.staged_partition(out, "t", D, _run()) as stage:
        stage.write_table(df)
    assert io.read_table(out, "t", D).equals(df)


def test_table_writer_appends_blocks_and_counts_rows(tmp_path):
    # two blocks of 2 and 1 rows -> one file with 3 rows in write order; manifest rows = 3
    run = io.RunInfo.new({"x": 1}, "h")
    with io.staged_partition(tmp_path, "scores", date(2024, 3, 1), run) as stage:
        with stage.table_writer() as w:
            w.write(pl.DataFrame({"user_id": ["a", "b"], "score": [0.5, 0.25]}))
            w.write(pl.DataFrame({"user_id": ["c"], "score": [1.0]}))
    got = io.read_table(tmp_path, "scores", date(2024, 3, 1))
    assert got["user_id"].to_list() == ["a", "b", "c"]
    assert io.read_manifest(tmp_path, "scores", date(2024, 3, 1))["rows"] == {"part-0": 3}


def test_table_writer_failure_commits_nothing(tmp_path):
    run = io.RunInfo.new({"x": 1}, "h")
    with pytest.raises(RuntimeError):
        with io.staged_partition(tmp_path, "scores", date(2024, 3, 1), run) as stage:
            with stage.table_writer() as w:
                w.write(pl.DataFrame({"user_id": ["a"]}))
                raise RuntimeError("boom")
    assert not io.is_committed(tmp_path, "scores", date(2024, 3, 1))


def test_scan_events_keeps_one_of_each_exact_duplicate(tmp_path: Path):
    ts = datetime(2024, 3, 1, 9, tzinfo=UTC)
    later = datetime(2024, 3, 1, 10, tzinfo=UTC)
    # file 1: (u1, i1, view, 9:00) twice, (u1, i1, click, 9:00) once; file 2: the view again with an integer-
    # free copy of the same values, and (u2, i1, view, 10:00). Exact duplicates: the view, 3 rows -> 1.
    first = pl.DataFrame(
        {"user_id": ["u1", "u1", "u1"], "item_id": ["i1", "i1", "i1"], "event": ["view", "view", "click"]}
    ).with_columns(ts=pl.lit(ts))
    second = pl.DataFrame(
        {"user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "event": ["view", "view"], "ts": [ts, later]}
    )
    io.write_input_events(tmp_path, D, first, part="part-0")
    io.write_input_events(tmp_path, D, second, part="part-1")
    got = io.scan_events(tmp_path, D, D).collect()
    # the first occurrence of each row, in file order: view u1, click u1, view u2
    assert got.select("user_id", "event").rows() == [("u1", "view"), ("u1", "click"), ("u2", "view")]


# ---------------------------------------------------------------- files named by the inputs (image_path)


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    """<tmp>/data with images/ok.png (10 bytes) and a folder; <tmp>/secret.png outside the data folder."""
    data = tmp_path / "data"
    io.write_input_file(data, "images/ok.png", b"0123456789")
    (data / "images" / "folder").mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"do not read")
    return data, secret


def test_input_path_rejections_confine_paths_to_the_data_folder(tmp_path: Path):
    data, secret = _inputs(tmp_path)
    (data / "images" / "out.png").symlink_to(secret)  # a link inside data to a file outside it
    (data / "images" / "in.png").symlink_to(data / "images" / "ok.png")  # a link that stays inside
    (data / "linked").symlink_to(tmp_path)  # a linked folder that leaves data
    (data / "images" / "dangling.png").symlink_to(data / "images" / "nowhere.png")
    os.mkfifo(data / "images" / "pipe.png")
    paths = {
        "images/ok.png": None,
        "images/in.png": None,
        str(secret): io.ABSOLUTE,
        "/etc/passwd": io.ABSOLUTE,
        "../secret.png": io.PARENT,
        "images/../../secret.png": io.PARENT,
        "images//ok.png": io.NOT_NORMALISED,
        "./images/ok.png": io.NOT_NORMALISED,
        "images\\ok.png": io.NOT_NORMALISED,
        "images/ok.png\n": io.NOT_NORMALISED,
        "images/out.png": io.OUTSIDE,
        "linked/secret.png": io.OUTSIDE,
        "images/gone.png": io.MISSING,
        "images/dangling.png": io.MISSING,
        "nofolder/x.png": io.MISSING,
        "images/folder": io.NOT_REGULAR,
        "images/pipe.png": io.NOT_REGULAR,
    }
    got = io.input_path_rejections(data, list(paths))
    assert {p: got.get(p) for p in paths} == paths
    # the size cap: ok.png has 10 bytes
    assert io.input_path_rejections(data, ["images/ok.png"], max_bytes=9) == {
        "images/ok.png": io.too_large(9)
    }
    assert io.input_path_rejections(data, ["images/ok.png"], max_bytes=10) == {}


def test_read_input_file_never_opens_what_it_rejects(tmp_path: Path):
    data, secret = _inputs(tmp_path)
    (data / "images" / "out.png").symlink_to(secret)
    os.mkfifo(data / "images" / "pipe.png")  # opening it for reading would block: it must not be opened
    assert io.read_input_file(data, "images/ok.png") == b"0123456789"
    for rel in [str(secret), "../secret.png", "images/out.png", "images/pipe.png", "images/folder", "x.png"]:
        assert io.read_input_file(data, rel) is None, rel
    assert io.read_input_file(data, "images/ok.png", max_bytes=9) is None


def test_image_file_and_write_input_file_refuse_escaping_paths(tmp_path: Path):
    data, secret = _inputs(tmp_path)
    assert io.image_file(data, "images/ok.png") == (data / "images" / "ok.png").resolve()
    for rel in ["../x.png", "/tmp/x.png", "a//b.png"]:
        with pytest.raises(ValueError, match=r"fix: "):
            io.image_file(data, rel)
        with pytest.raises(ValueError, match=r"cannot write"):
            io.write_input_file(data, rel, b"x")
    (data / "linked").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside the data folder"):
        io.write_input_file(data, "linked/new.png", b"x")
    assert not (tmp_path / "new.png").exists()
