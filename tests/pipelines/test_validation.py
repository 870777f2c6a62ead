"""The validation stage on the real folder layout (written with pipelines.io), and the columns YAML."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import ColumnsConfig
from pipelines import io
from pipelines.config import load_config
from pipelines.validation import InputValidationError, columns_yaml, require_valid, validate_data

D1, D2 = date(2024, 3, 1), date(2024, 3, 2)


def _write(root: Path, int_ids: bool = False) -> Path:
    uid = [1, 2] if int_ids else ["u1", "u2"]
    iid = [10, 20] if int_ids else ["i1", "i2"]
    io.write_input_table(root, "users", pl.DataFrame({"user_id": uid, "city": ["x", "y"]}))
    io.write_input_table(
        root,
        "items",
        pl.DataFrame(
            {"item_id": iid, "title": ["a", "b"], "image_path": ["img/1.jpg", None], "price": [1.0, 2.0]}
        ),
    )
    io.write_input_file(root, "img/1.jpg", b"jpeg")
    io.write_input_events(
        root,
        D1,
        pl.DataFrame(
            {
                "user_id": uid,
                "item_id": iid,
                "event": ["view", "click"],
                "ts": [datetime(2024, 3, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, 2, tzinfo=UTC)],
            }
        ),
    )
    io.write_input_events(
        root,
        D2,
        pl.DataFrame(
            {
                "user_id": uid[:1],
                "item_id": iid[1:],
                "event": ["purchase"],
                "ts": [datetime(2024, 3, 2, 5, tzinfo=UTC)],
            }
        ),
    )
    return root


def test_valid_layout_passes(tmp_path: Path) -> None:
    report = validate_data(_write(tmp_path), ColumnsConfig())
    assert report.problems == ()
    assert report.stats["events_by_partition"] == {"2024-03-01": 2, "2024-03-02": 1}  # 2 + 1 written above
    assert report.inferred == ColumnsConfig(
        user_categorical=["city"], user_numeric=[], item_categorical=[], item_numeric=["price"]
    )


def test_integer_ids_in_every_file_are_accepted(tmp_path: Path) -> None:
    report = validate_data(_write(tmp_path, int_ids=True), ColumnsConfig())
    assert report.problems == ()
    assert report.stats["events"] == 3


def test_stray_entries_under_events(tmp_path: Path) -> None:
    root = _write(tmp_path)
    (io.events_root(root) / "backup").mkdir()
    (io.events_root(root) / "dt=2024-13-01").mkdir()  # not a date
    (io.events_root(root) / "notes.txt").write_text("x")
    (io.events_root(root) / "_SUCCESS").write_text("")  # hidden by convention: not reported
    report = validate_data(root, ColumnsConfig())
    assert report.ok
    # io.stray_event_dirs lists them sorted by name
    assert [p.line() for p in report.warnings] == [
        f"warning: {io.events_root(root)}: ignored 3 entries that are not dt=YYYY-MM-DD partitions: "
        "backup, dt=2024-13-01, notes.txt; fix: move them out of the events folder or rename them dt=YYYY-MM-DD"
    ]


def test_missing_events_folder_and_no_partitions(tmp_path: Path) -> None:
    root = tmp_path / "d"
    io.write_input_table(root, "users", pl.DataFrame({"user_id": ["u1"]}))
    io.write_input_table(
        root,
        "items",
        pl.DataFrame({"item_id": ["i1"], "title": ["t"], "image_path": pl.Series([None], dtype=pl.String)}),
    )
    missing = validate_data(root, ColumnsConfig())
    assert [p.line() for p in missing.errors] == [
        f"error: {io.events_root(root)}: events folder is missing; "
        "fix: write events as <data>/events/dt=YYYY-MM-DD/*.parquet"
    ]
    (io.events_root(root) / "tmp").mkdir(parents=True)
    empty = validate_data(root, ColumnsConfig())
    assert [p.line() for p in empty.errors] == [
        f"error: {io.events_root(root)}: no event partitions; "
        "fix: write events as <data>/events/dt=YYYY-MM-DD/*.parquet (one folder per UTC day)"
    ]
    assert [p.column for p in empty.warnings] == [None]  # the stray 'tmp' folder


def test_errors_are_logged_and_require_valid_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write(tmp_path)
    io.users_path(root).unlink()
    with caplog.at_level(logging.DEBUG, logger="pipelines.validation"):
        report = validate_data(root, ColumnsConfig())
    # one summary at INFO, then each problem at DEBUG (the caller prints the lines)
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pipelines.validation"] == [
        (logging.INFO, f"validated {root}: 1 errors, 0 warnings"),
        (logging.DEBUG, report.errors[0].line()),
    ]
    with pytest.raises(InputValidationError, match="users file is missing"):
        require_valid(root, ColumnsConfig())
    assert require_valid(_write(tmp_path / "ok"), ColumnsConfig()).ok


def test_validation_leaves_the_data_folder_untouched(tmp_path: Path) -> None:
    root = _write(tmp_path)
    (io.events_root(root) / "stray").mkdir()
    before = {
        p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))
    }
    validate_data(root, ColumnsConfig(user_numeric=["nope"]))  # an error too
    after = {
        p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))
    }
    assert after == before


def test_inferred_columns_yaml_loads_as_config(tmp_path: Path) -> None:
    report = validate_data(_write(tmp_path), ColumnsConfig())
    text = columns_yaml(report.inferred)
    assert text.startswith("columns:\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert load_config(path).columns == report.inferred


_NAMES = st.lists(st.text(alphabet="abcdef_", min_size=1, max_size=5), max_size=4, unique=True)


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.none(), _NAMES), _NAMES, st.one_of(st.none(), _NAMES))
def test_columns_yaml_round_trips(ucat: list[str] | None, inum: list[str], icat: list[str] | None) -> None:
    icat = None if icat is None else [c for c in icat if c not in inum]  # the lists must be disjoint
    cfg = ColumnsConfig(user_categorical=ucat, item_numeric=inum, item_categorical=icat)
    assert ColumnsConfig(**yaml.safe_load(columns_yaml(cfg))["columns"]) == cfg
