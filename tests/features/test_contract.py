"""The input contract: a corpus of broken inputs, each giving exactly one expected line, and inference.

Every case starts from the valid tiny data set of `_write_valid` and breaks one thing; the expected
line is written out by hand from the contract (file, column, message with the hand-counted numbers, fix).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import ColumnsConfig
from features.contract import Problem, ValidationReport, infer_columns, validate_inputs
from pipelines import io

D1, D2 = date(2024, 3, 1), date(2024, 3, 2)


def _ts(day: int, h: int, m: int = 0, s: int = 0) -> datetime:
    return datetime(2024, 3, day, h, m, s, tzinfo=UTC)


def _users() -> pl.DataFrame:
    return pl.DataFrame({"user_id": ["u1", "u2", "u3"], "gender": ["f", "m", "f"], "age": [30, 41, 25]})


def _items() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": ["i1", "i2"],
            "title": ["Red shoe", None],
            "image_path": ["img/i1.jpg", None],
            "price": [9.5, 20.0],
            "brand": ["a", "b"],
        }
    )


def _events_d1() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i1"],
            "event": ["view", "click", "purchase"],
            "ts": [_ts(1, 8), _ts(1, 9, 30), _ts(1, 23, 59, 59)],
        }
    )


def _events_d2() -> pl.DataFrame:
    return pl.DataFrame({"user_id": ["u1"], "item_id": ["i2"], "event": ["cart"], "ts": [_ts(2, 0)]})


@dataclass
class Data:
    """A tiny data set written in tmp_path, with explicit paths (the contract never knows the layout)."""

    root: Path

    @property
    def users(self) -> Path:
        return self.root / "users.parquet"

    @property
    def items(self) -> Path:
        return self.root / "items.parquet"

    @property
    def events_dir(self) -> Path:
        return self.root / "ev"

    def part(self, day: date, name: str = "p0") -> Path:
        return self.events_dir / day.isoformat() / f"{name}.parquet"

    def write_events(self, day: date, df: pl.DataFrame, name: str = "p0") -> Path:
        path = self.part(day, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path)
        return path

    def event_files(self) -> dict[date, list[Path]]:
        out: dict[date, list[Path]] = {}
        if self.events_dir.is_dir():
            for sub in sorted(self.events_dir.iterdir()):
                out[date.fromisoformat(sub.name)] = sorted(sub.glob("*.parquet"))
        return out

    def validate(self, columns: ColumnsConfig | None = None) -> ValidationReport:
        return validate_inputs(
            self.users,
            self.items,
            self.event_files(),
            self.root,
            columns or ColumnsConfig(),
            events_dir=self.events_dir,
            image_check=partial(io.input_path_rejections, self.root),
        )


def _write_valid(root: Path) -> Data:
    data = Data(root)
    _users().write_parquet(data.users)
    _items().write_parquet(data.items)
    (root / "img").mkdir()
    (root / "img" / "i1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data.write_events(D1, _events_d1())
    data.write_events(D2, _events_d2())
    return data


@pytest.fixture
def data(tmp_path: Path) -> Data:
    return _write_valid(tmp_path)


def _only_error(report: ValidationReport) -> str:
    lines = [p.line() for p in report.errors]
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- the valid set and the report type


def test_valid_data_set_passes(data: Data) -> None:
    report = data.validate()
    assert report.ok
    assert report.problems == ()
    # 3 events on 03-01 (view, click, purchase) and 1 on 03-02 (cart)
    assert report.stats["events"] == 4
    assert report.stats["events_by_partition"] == {"2024-03-01": 3, "2024-03-02": 1}
    assert report.stats["events_by_type"] == {"view": 1, "click": 1, "cart": 1, "purchase": 1}
    assert (report.stats["users"], report.stats["items"]) == (3, 2)
    # one non-null image path (img/i1.jpg), which exists
    assert (report.stats["images_checked"], report.stats["images_rejected"]) == (1, 0)
    assert report.inferred == ColumnsConfig(
        user_categorical=["gender"], user_numeric=["age"], item_categorical=["brand"], item_numeric=["price"]
    )


def test_problem_line_and_report_properties() -> None:
    e = Problem("error", "a.parquet", "ts", "bad", "fix it")
    w = Problem("warning", "b", None, "odd", "look")
    report = ValidationReport((w, e), ColumnsConfig(), {})
    assert e.line() == "error: a.parquet: column ts: bad; fix: fix it"
    assert w.line() == "warning: b: odd; fix: look"
    assert report.errors == (e,) and report.warnings == (w,) and not report.ok
    assert report.lines() == [e.line(), w.line()]  # errors first
    assert ValidationReport((w,), ColumnsConfig(), {}).ok


# ---------------------------------------------------------------- missing files


def test_missing_users_file(data: Data) -> None:
    data.users.unlink()
    report = data.validate()
    assert _only_error(report) == (
        f"error: {data.users}: users file is missing; "
        "fix: write users.parquet (see docs/data-contract.md for its columns)"
    )
    assert report.inferred.user_categorical is None  # nothing to infer from
    assert report.inferred.item_categorical == ["brand"]


def test_missing_events_folder(data: Data) -> None:
    for f in data.events_dir.rglob("*.parquet"):
        f.unlink()
    for d in sorted(data.events_dir.iterdir()):
        d.rmdir()
    data.events_dir.rmdir()
    assert _only_error(data.validate()) == (
        f"error: {data.events_dir}: events folder is missing; "
        "fix: write events as <data>/events/dt=YYYY-MM-DD/*.parquet"
    )


def test_no_event_partitions(data: Data) -> None:
    report = validate_inputs(
        data.users, data.items, {}, data.root, ColumnsConfig(), events_dir=data.events_dir
    )  # the folder exists, but holds no partition
    assert _only_error(report) == (
        f"error: {data.events_dir}: no event partitions; "
        "fix: write events as <data>/events/dt=YYYY-MM-DD/*.parquet (one folder per UTC day)"
    )


def test_empty_partition_is_a_warning(data: Data) -> None:
    files = data.event_files()
    files[date(2024, 3, 3)] = []
    report = validate_inputs(
        data.users, data.items, files, data.root, ColumnsConfig(), events_dir=data.events_dir
    )
    assert report.ok
    assert [p.line() for p in report.warnings] == [
        f"warning: {data.events_dir}: partitions without a Parquet file: 1 (2024-03-03); "
        "fix: write the events of those days or remove the empty folders"
    ]


# ---------------------------------------------------------------- missing columns and wrong types


def test_missing_event_column(data: Data) -> None:
    path = data.write_events(D2, _events_d2().drop("item_id"))
    report = data.validate()
    assert _only_error(report) == (
        f"error: {path}: column item_id: missing column (expected string or integer ids); "
        "fix: add the column item_id (see docs/data-contract.md)"
    )
    assert report.stats["events"] == 3  # the broken file is left out of the row checks


def test_missing_title_column(data: Data) -> None:
    _items().drop("title").write_parquet(data.items)
    assert _only_error(data.validate()) == (
        f"error: {data.items}: column title: missing column (expected nullable string); "
        "fix: add the column title (see docs/data-contract.md)"
    )


def test_ts_as_string(data: Data) -> None:
    path = data.write_events(D2, _events_d2().with_columns(pl.lit("2024-03-02T00:00:00Z").alias("ts")))
    line = _only_error(data.validate())
    assert line.startswith(f"error: {path}: column ts: has type String, expected timestamp[us, UTC]; fix: ")
    assert "str.to_datetime(time_zone='UTC')" in line


def test_ts_naive(data: Data) -> None:
    path = data.write_events(D2, _events_d2().with_columns(pl.col("ts").dt.replace_time_zone(None)))
    line = _only_error(data.validate())
    assert line.startswith(
        f"error: {path}: column ts: is a naive timestamp (timestamp[us]), expected timestamp[us, UTC]; fix: "
    )
    assert "replace_time_zone('UTC')" in line


def test_ts_not_utc(data: Data) -> None:
    # 00:00 UTC is 01:00 in Paris: same instant, wrong zone label for the contract
    path = data.write_events(D2, _events_d2().with_columns(pl.col("ts").dt.convert_time_zone("Europe/Paris")))
    assert _only_error(data.validate()) == (
        f"error: {path}: column ts: is in time zone Europe/Paris (timestamp[us, Europe/Paris]), "
        "expected timestamp[us, UTC]; fix: convert it: pl.col('ts').dt.convert_time_zone('UTC')"
    )


def test_ts_in_milliseconds_utc_is_accepted(data: Data) -> None:
    data.write_events(D2, _events_d2().with_columns(pl.col("ts").dt.cast_time_unit("ms")))
    assert data.validate().problems == ()


def test_event_not_a_string(data: Data) -> None:
    path = data.write_events(D2, _events_d2().with_columns(pl.lit(3).alias("event")))
    assert _only_error(data.validate()) == (
        f"error: {path}: column event: has type Int32, expected a string in {{view, click, cart, purchase}}; "
        "fix: map event codes to the names view, click, cart, purchase"
    )


def test_float_ids_are_rejected(data: Data) -> None:
    _users().with_columns(pl.Series("user_id", [1.0, 2.0, 3.0])).write_parquet(data.users)
    line = _only_error(data.validate())
    assert line == (
        f"error: {data.users}: column user_id: has type Float64, expected string (or integer) ids; "
        "fix: cast user_id to string, e.g. pl.col('user_id').cast(pl.String)"
    )


def test_declared_numeric_column_that_is_a_string(data: Data) -> None:
    cols = ColumnsConfig(user_categorical=["age"], user_numeric=["gender"])
    report = data.validate(cols)
    assert _only_error(report) == (
        f"error: {data.users}: column gender: declared in columns.user_numeric but has type String, "
        "expected an integer, float, decimal or boolean; "
        "fix: cast the column to an integer, float, decimal or boolean or move it to columns.user_categorical"
    )
    # age is an integer: allowed as a categorical (hashed from its text)
    assert report.inferred.user_categorical == ["age"] and report.inferred.user_numeric == []


# ---------------------------------------------------------------- declared, extra and inferred columns


def test_declared_column_absent(data: Data) -> None:
    cols = ColumnsConfig(item_categorical=["brand", "colour"])
    report = data.validate(cols)
    assert _only_error(report) == (
        f"error: {data.items}: column colour: declared in columns.item_categorical but absent from the file; "
        "fix: add the column to the file or remove it from columns.item_categorical"
    )
    # item_numeric is None: inferred from the columns not declared categorical
    assert report.inferred.item_categorical == ["brand"] and report.inferred.item_numeric == ["price"]


def test_extra_column_is_a_warning(data: Data) -> None:
    cols = ColumnsConfig(user_categorical=["gender"], user_numeric=[])
    report = data.validate(cols)
    assert report.ok
    assert [p.line() for p in report.warnings] == [
        f"warning: {data.users}: column age: extra column (Int64) not declared in columns.user_categorical "
        "or columns.user_numeric; ignored; fix: declare it in columns.user_categorical or columns.user_numeric "
        "to use it"
    ]


def test_date_and_list_columns_are_ignored_with_warnings(data: Data) -> None:
    _users().with_columns(
        signup=pl.lit(date(2020, 1, 1)), tags=pl.lit(["a", "b"], dtype=pl.List(pl.String))
    ).write_parquet(data.users)
    report = data.validate()
    assert report.ok
    assert [(p.column, p.level) for p in report.warnings] == [("signup", "warning"), ("tags", "warning")]
    assert "declare it in columns.user_categorical" in report.warnings[0].fix  # a date may be declared
    assert report.inferred.user_categorical == ["gender"] and report.inferred.user_numeric == ["age"]


def test_extra_event_column_is_a_warning(data: Data) -> None:
    path = data.write_events(D2, _events_d2().with_columns(pl.lit("web").alias("channel")))
    report = data.validate()
    assert report.ok and report.stats["events"] == 4
    assert [p.line() for p in report.warnings] == [
        f"warning: {path}: column channel: extra column (String) is not part of the event contract; ignored; "
        "fix: drop it from the event files (or leave it: it is never read)"
    ]


def test_infer_columns_of_a_tiny_schema() -> None:
    users = {
        "user_id": pl.Int64,
        "gender": pl.String,
        "vip": pl.Boolean,
        "tier": pl.Categorical(),
        "age": pl.Int16,
        "spend": pl.Float32,
        "signup": pl.Date,
        "last_seen": pl.Datetime("us", "UTC"),
    }
    items = {
        "item_id": pl.String,
        "title": pl.String,
        "image_path": pl.String,
        "price": pl.Decimal(10, 2),
        "tags": pl.List(pl.String),
        "brand": pl.Enum(["a", "b"]),
    }
    # strings/bool/categorical -> categorical; ints/floats/decimals -> numeric; dates, lists -> neither;
    # ids, title and image_path are never attributes
    assert infer_columns(users, items) == ColumnsConfig(
        user_categorical=["gender", "vip", "tier"],
        user_numeric=["age", "spend"],
        item_categorical=["brand"],
        item_numeric=["price"],
    )


# ---------------------------------------------------------------- null and duplicate ids


def test_null_user_ids(data: Data) -> None:
    pl.DataFrame(
        {"user_id": ["u1", None, "u2", "u3", None], "gender": ["f"] * 5, "age": [1] * 5}
    ).write_parquet(data.users)
    assert _only_error(data.validate()) == (
        f"error: {data.users}: column user_id: 2 null ids out of 5 rows; "
        "fix: drop the rows with a null user_id or give them an id"
    )


def test_null_item_ids(data: Data) -> None:
    pl.concat(
        [_items(), _items().head(1).with_columns(pl.lit(None, pl.String).alias("item_id"))]
    ).write_parquet(data.items)
    assert _only_error(data.validate()) == (
        f"error: {data.items}: column item_id: 1 null ids out of 3 rows; "
        "fix: drop the rows with a null item_id or give them an id"
    )


def test_null_ids_in_events(data: Data) -> None:
    path = data.write_events(D1, _events_d1().with_columns(pl.Series("user_id", ["u1", None, None])))
    assert _only_error(data.validate()) == (
        f"error: {path}: column user_id: 2 null values out of 4 events; "
        "fix: drop the events with a null user_id or fill it"
    )


def test_duplicate_user_ids(data: Data) -> None:
    # u2 twice, u3 three times: 2 duplicated ids over 5 rows
    pl.DataFrame(
        {"user_id": ["u1", "u2", "u3", "u2", "u3", "u3"], "gender": ["f"] * 6, "age": [1] * 6}
    ).write_parquet(data.users)
    assert _only_error(data.validate()) == (
        f"error: {data.users}: column user_id: 2 duplicate ids over 5 rows, e.g. ['u2', 'u3']; "
        "fix: keep one row per user_id (e.g. .unique('user_id', keep='last'))"
    )


# ---------------------------------------------------------------- unknown ids, ts, event names


def test_unknown_users_in_events(data: Data) -> None:
    path = data.write_events(D1, _events_d1().with_columns(pl.Series("user_id", ["u1", "u9", "u8"])))
    data.write_events(D2, _events_d2().with_columns(pl.Series("user_id", ["u9"])), name="p1")
    data.part(D2).unlink()
    # 03-01: u9, u8 unknown (2 events); 03-02: u9 (1 event) -> 3 events in 2 partitions
    report = data.validate()
    assert _only_error(report) == (
        f"error: {data.events_dir}: column user_id: 3 events in 2 partitions (2024-03-01, 2024-03-02) have "
        "user_id values absent from users.parquet, e.g. ['u8', 'u9']; "
        "fix: add the users to users.parquet or drop their events"
    )
    assert path.is_file()


def test_unknown_items_in_one_file(data: Data) -> None:
    path = data.write_events(D1, _events_d1().with_columns(pl.Series("item_id", ["i1", "i7", "i7"])))
    assert _only_error(data.validate()) == (
        f"error: {path}: column item_id: 2 events have item_id values absent from items.parquet, e.g. ['i7']; "
        "fix: add the items to items.parquet or drop their events"
    )


def test_ts_outside_its_partition(data: Data) -> None:
    # 03-02 00:00 UTC belongs to dt=2024-03-02, 02-29 23:00 UTC to dt=2024-02-29: 2 of 3 rows are outside
    path = data.write_events(
        D1,
        _events_d1().with_columns(
            pl.Series("ts", [_ts(1, 8), _ts(2, 0), datetime(2024, 2, 29, 23, tzinfo=UTC)])
        ),
    )
    assert _only_error(data.validate()) == (
        f"error: {path}: column ts: 2 events have a ts whose UTC date is not their dt= partition, "
        "e.g. ['2024-02-29T23:00:00+00:00', '2024-03-02T00:00:00+00:00']; "
        "fix: write each event to the partition of its UTC date (dt = ts.dt.date() in UTC)"
    )


def test_unknown_event_names(data: Data) -> None:
    path = data.write_events(D1, _events_d1().with_columns(pl.Series("event", ["like", "Purchase", "like"])))
    assert _only_error(data.validate()) == (
        f"error: {path}: column event: 3 events have an unknown event name: 'like' (2), 'Purchase' (1); "
        "fix: map them to view, click, cart, purchase (lower case) or drop them"
    )


# ---------------------------------------------------------------- corrupt files, images, strays


def test_truncated_event_file(data: Data) -> None:
    path = data.part(D2)
    path.write_bytes(path.read_bytes()[:40])  # header and first bytes only: no footer
    report = data.validate()
    line = _only_error(report)
    assert line.startswith(f"error: {path}: unreadable or corrupt Parquet (ComputeError: ")
    assert line.endswith("fix: re-export the file with a Parquet writer (polars, pyarrow, Spark)")
    assert report.stats["events"] == 3  # the other partition is still checked


def test_corrupt_pages_behind_a_valid_footer(data: Data) -> None:
    # footer (and so the schema) intact, string data overwritten: only reading the rows fails
    n = 1000
    big = pl.DataFrame(
        {
            "user_id": [f"user-{i:06d}" for i in range(n)],
            "item_id": ["i1"] * n,
            "event": ["view"] * n,
            "ts": [_ts(2, 1)] * n,
        }
    )
    path = data.part(D2)
    big.write_parquet(path, compression="uncompressed", statistics=False)
    raw = bytearray(path.read_bytes())
    raw[100 : len(raw) // 3] = b"\xff" * (len(raw) // 3 - 100)  # inside the user_id pages
    path.write_bytes(bytes(raw))
    pl.read_parquet_schema(path)  # still readable: the corruption is in the pages
    good = data.write_events(D2, _events_d2(), name="p1")
    report = data.validate()
    line = _only_error(report)
    assert line.startswith(f"error: {path}: unreadable or corrupt Parquet (")
    # the good file of the same partition is still checked: 3 + 1 events
    assert report.stats["events"] == 4 and good.is_file()


def test_corrupt_items_file(data: Data) -> None:
    data.items.write_bytes(b"PAR1 this is not parquet PAR1")
    report = data.validate()
    assert _only_error(report).startswith(f"error: {data.items}: unreadable or corrupt Parquet (")
    # with no item ids to compare with, unknown-item checks are skipped; users are still checked
    assert report.inferred.item_numeric is None and report.inferred.user_numeric == ["age"]


def test_missing_images_are_a_warning(data: Data) -> None:
    items = pl.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4"],
            "title": ["a", "b", "c", "d"],
            "image_path": ["img/i1.jpg", "img/i2.jpg", "other/i3.jpg", "img"],  # "img" is a folder
            "price": [1.0, 2.0, 3.0, 4.0],
            "brand": ["a"] * 4,
        }
    )
    items.write_parquet(data.items)
    report = data.validate()
    assert report.ok
    # i2.jpg and other/i3.jpg do not exist; "img" is a folder, not a file: two kinds, two lines
    assert [p.line() for p in report.warnings] == [
        f"warning: {data.items}: column image_path: 2 of 4 image paths name no file, "
        "e.g. ['img/i2.jpg', 'other/i3.jpg'] (those items get no image embedding; the files are never "
        "opened); fix: copy the images under the data folder or set image_path to null",
        f"warning: {data.items}: column image_path: 1 of 4 image paths name something other than a "
        "regular file (a folder, a named pipe, a device or a socket), e.g. ['img'] (those items get no "
        "image embedding; the files are never opened); fix: point image_path at image files or set it to "
        "null",
    ]
    assert report.stats["images_rejected"] == 3


def test_stray_event_dirs_are_a_warning(data: Data) -> None:
    stray = data.events_dir / "backup"
    report = validate_inputs(
        data.users, data.items, data.event_files(), data.root, ColumnsConfig(), [stray], data.events_dir
    )
    assert report.ok
    assert [p.line() for p in report.warnings] == [
        f"warning: {data.events_dir}: ignored 1 entries that are not dt=YYYY-MM-DD partitions: backup; "
        "fix: move them out of the events folder or rename them dt=YYYY-MM-DD"
    ]


def test_one_schema_problem_over_several_files_is_one_line(data: Data) -> None:
    for day, df in ((D1, _events_d1()), (D2, _events_d2())):
        data.write_events(day, df.with_columns(pl.col("ts").dt.replace_time_zone(None)))
    errors = data.validate().errors
    assert len(errors) == 1
    assert errors[0].file == str(data.events_dir) and errors[0].column == "ts"
    assert errors[0].message.endswith(f"in 2 files ({data.part(D1)}, {data.part(D2)})")


# ---------------------------------------------------------------- integer ids, no modification


def test_integer_ids_are_accepted(data: Data) -> None:
    pl.DataFrame({"user_id": [1, 2, 3], "gender": ["f", "m", "f"], "age": [30, 41, 25]}).write_parquet(
        data.users
    )
    _items().with_columns(pl.Series("item_id", [10, 20], dtype=pl.Int32)).write_parquet(data.items)
    # events keep string ids "1".."3" on 03-01 and integer ids on 03-02: both match after the cast
    data.write_events(
        D1,
        _events_d1().with_columns(
            pl.Series("user_id", ["1", "2", "3"]), pl.Series("item_id", ["10", "20", "10"])
        ),
    )
    data.write_events(D2, _events_d2().with_columns(pl.Series("user_id", [1]), pl.Series("item_id", [20])))
    report = data.validate()
    assert report.problems == ()
    # an integer id unknown to users is still caught: 4 is not a user
    data.write_events(D2, _events_d2().with_columns(pl.Series("user_id", [4]), pl.Series("item_id", [20])))
    assert "e.g. ['4']" in _only_error(data.validate())


def test_validation_never_modifies_inputs(data: Data) -> None:
    data.write_events(D1, _events_d1().with_columns(pl.Series("event", ["like", "view", "view"])))
    files = sorted(p for p in data.root.rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    report = data.validate()
    assert not report.ok  # it did look at the rows
    after_files = sorted(p for p in data.root.rglob("*") if p.is_file())
    assert after_files == files  # nothing written beside the inputs
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


# ---------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=12))
def test_duplicate_count_matches_a_hand_count(ids: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_valid(Path(tmp))
        pl.DataFrame({"user_id": ids, "gender": ["f"] * len(ids), "age": [1] * len(ids)}).write_parquet(
            data.users
        )
        dup_ids = sorted({u for u in ids if ids.count(u) > 1})
        dup_rows = sum(ids.count(u) for u in dup_ids)
        report = data.validate()
        dups = [p for p in report.errors if p.file == str(data.users)]
        if dup_ids:
            assert len(dups) == 1
            assert dups[0].message == f"{len(dup_ids)} duplicate ids over {dup_rows} rows, e.g. {dup_ids}"
        else:
            assert dups == []


_HOURS = st.integers(min_value=-30, max_value=54)  # hours from 2024-03-01 00:00 UTC


@settings(max_examples=25, deadline=None)
@given(st.lists(_HOURS, min_size=1, max_size=10), st.lists(_HOURS, min_size=1, max_size=10))
def test_outside_count_matches_utc_dates(h1: list[int], h2: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_valid(Path(tmp))
        base = datetime(2024, 3, 1, tzinfo=UTC)

        def frame(hours: list[int]) -> pl.DataFrame:
            n = len(hours)
            ts = [base + timedelta(hours=h) for h in hours]
            return pl.DataFrame(
                {"user_id": ["u1"] * n, "item_id": ["i1"] * n, "event": ["view"] * n, "ts": ts}
            )

        data.write_events(D1, frame(h1))
        data.write_events(D2, frame(h2))
        # hour h lies on 03-01 iff 0 <= h < 24, on 03-02 iff 24 <= h < 48
        outside = sum(not 0 <= h < 24 for h in h1) + sum(not 24 <= h < 48 for h in h2)
        report = data.validate()
        ts_errors = [p for p in report.errors if p.column == "ts"]
        assert [p.message.split(" ")[0] for p in ts_errors] == ([str(outside)] if outside else [])
        assert len(report.errors) == len(ts_errors)


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="abcxyz", min_size=1, max_size=4).filter(lambda c: c != "user_id"),
        st.sampled_from(
            [pl.String, pl.Boolean, pl.Int8, pl.Int64, pl.UInt32, pl.Float64, pl.Date, pl.Binary]
        ),
        max_size=6,
    )
)
def test_inference_splits_columns_by_type(attrs: dict[str, pl.DataType]) -> None:
    cfg = infer_columns({"user_id": pl.String, **attrs}, {"item_id": pl.String})
    assert cfg.user_categorical == [c for c, t in attrs.items() if t in (pl.String, pl.Boolean)]
    assert cfg.user_numeric == [
        c for c, t in attrs.items() if t in (pl.Int8, pl.Int64, pl.UInt32, pl.Float64)
    ]


# ---------------------------------------------------------------- real catalogue (../shared/data)


@pytest.mark.shared_data
def test_real_fashion_catalogue(shared_data: Path, tmp_path: Path) -> None:
    """44,446 real Myntra items with integer ids; 5,000 of them have an image under images/<id>.jpg."""
    src = shared_data / "fashion_product_images_small"
    styles = pl.read_csv(src / "styles_merged.csv")
    items = styles.select(
        pl.col("id").alias("item_id"),  # Int64 ids: accepted, compared as strings
        pl.col("productDisplayName").alias("title"),
        pl.format("images/{}.jpg", pl.col("id")).alias("image_path"),
        pl.exclude("id", "productDisplayName"),
    )
    data = Data(tmp_path)
    items.write_parquet(data.items)
    _users().write_parquet(data.users)
    first = [str(i) for i in styles["id"].head(3).to_list()]
    data.write_events(D1, _events_d1().with_columns(pl.Series("item_id", first)))
    # images present: the ids listed in images_subset_ids.txt that are also catalogue ids
    with_image = set((src / "images_subset_ids.txt").read_text().split()) & {str(i) for i in styles["id"]}
    missing = styles.height - len(with_image)

    report = validate_inputs(
        data.users,
        data.items,
        data.event_files(),
        src,
        ColumnsConfig(),
        events_dir=data.events_dir,
        image_check=partial(io.input_path_rejections, src),
    )

    assert report.ok, report.lines()
    assert report.stats["images_checked"] == styles.height
    assert report.stats["images_rejected"] == missing
    assert [p.column for p in report.warnings] == ["image_path"]
    assert report.warnings[0].message.startswith(f"{missing} of {styles.height} image paths name no file")
    # every CSV text column is categorical; year (integer) is numeric
    text_cols = [c for c, t in styles.schema.items() if t == pl.String and c != "productDisplayName"]
    assert report.inferred.item_categorical == text_cols
    assert report.inferred.item_numeric == ["year"]


# ---------------------------------------------------------------- values: finiteness, UTF-8, duplicates


def _with_bad_utf8(df: pl.DataFrame, column: str, bad: dict[int, bytes]) -> pa.Table:
    """df as an Arrow table whose string `column` holds the raw bytes `bad` at the given rows (what a writer
    that does not check its text produces: a Parquet string column that is not UTF-8)."""
    values = [v.encode() if v is not None else None for v in df[column].to_list()]
    for row, raw in bad.items():
        values[row] = raw
    table = df.to_arrow()
    raw_col = pa.array(values, type=pa.binary()).view(pa.string())  # no validation
    return table.set_column(table.schema.get_field_index(column), column, raw_col)


def test_nan_and_inf_in_numeric_attributes(data: Data) -> None:
    _items().with_columns(price=pl.Series([float("nan"), 20.0])).write_parquet(data.items)
    _users().with_columns(score=pl.Series([1.0, float("inf"), -float("inf")])).write_parquet(data.users)
    report = data.validate()
    # i1's price is NaN; u2 and u3 have an infinite score (the column is inferred numeric)
    assert sorted(p.line() for p in report.errors) == [
        f"error: {data.items}: column price: 1 NaN or infinite values out of 2 rows, e.g. item_id ['i1']; "
        "fix: replace them with null (missing) or a finite number, e.g. "
        "pl.when(pl.col('price').is_finite()).then(pl.col('price'))",
        f"error: {data.users}: column score: 2 NaN or infinite values out of 3 rows, e.g. user_id "
        "['u2', 'u3']; fix: replace them with null (missing) or a finite number, e.g. "
        "pl.when(pl.col('score').is_finite()).then(pl.col('score'))",
    ]
    # a null is a missing value, and a negative number is a number: neither is an error
    _items().with_columns(price=pl.Series([None, -3.0])).write_parquet(data.items)
    _users().write_parquet(data.users)
    assert data.validate().ok


def test_invalid_utf8_in_title_and_attributes(data: Data) -> None:
    table = _with_bad_utf8(_items(), "title", {0: b"caf\xe9 shoe"})  # latin-1 bytes, not UTF-8
    pq.write_table(_with_bad_utf8(pl.from_arrow(table), "brand", {1: b"\xff\xfe"}), data.items)
    report = data.validate()
    assert sorted(p.line() for p in report.errors) == [
        f"error: {data.items}: column brand: 1 values are not valid UTF-8, e.g. [b'\\xff\\xfe']; fix: write "
        "the text as UTF-8 (decode it from its real encoding, e.g. latin-1, before writing) or set those "
        "values to null",
        f"error: {data.items}: column title: 1 values are not valid UTF-8, e.g. [b'caf\\xe9 shoe']; fix: "
        "write the text as UTF-8 (decode it from its real encoding, e.g. latin-1, before writing) or set "
        "those values to null",
    ]


def test_invalid_utf8_counted_over_many_rows(tmp_path: Path) -> None:
    # 1,000 titles, rows 3, 500 and 999 are not UTF-8: all three are found, the smallest quoted first
    df = pl.DataFrame({"item_id": [f"i{k}" for k in range(1000)], "title": [f"t{k}" for k in range(1000)]})
    path = tmp_path / "items.parquet"
    pq.write_table(_with_bad_utf8(df, "title", {3: b"\xe9a", 500: b"\xe9b", 999: b"\xc3"}), path)
    from features.contract import _utf8_problems

    (problem,) = _utf8_problems(path, ["item_id", "title"])
    assert problem.column == "title"
    assert problem.message == "3 values are not valid UTF-8, e.g. [b'\\xc3', b'\\xe9a', b'\\xe9b']"


def test_invalid_utf8_in_an_event_file(data: Data) -> None:
    pq.write_table(_with_bad_utf8(_events_d2(), "item_id", {0: b"i\xff"}), data.part(D2))
    report = data.validate()
    assert _only_error(report).startswith(
        f"error: {data.part(D2)}: column item_id: 1 values are not valid UTF-8, e.g. [b'i\\xff']; fix: "
    )


def test_binary_title_is_a_type_error(data: Data) -> None:
    table = _items().to_arrow()
    titles = pa.array([b"Red shoe", None], type=pa.large_binary())
    pq.write_table(table.set_column(table.schema.get_field_index("title"), "title", titles), data.items)
    assert _only_error(data.validate()) == (
        f"error: {data.items}: column title: has type Binary, expected a nullable string; "
        "fix: cast title to string, e.g. pl.col('title').cast(pl.String)"
    )


def test_exact_duplicate_events_are_a_warning(data: Data) -> None:
    # d1 holds its 3 events, the first of them twice more, in a second file: 2 extra rows
    data.write_events(D1, _events_d1().head(1).vstack(_events_d1().head(1)), name="p1")
    report = data.validate()
    assert report.ok
    assert [p.line() for p in report.warnings] == [
        f"warning: {data.events_dir}: 2 exact duplicate events in partition 2024-03-01 (same user_id, "
        "item_id, event and ts), e.g. ['(u1, i1, view, 2024-03-01T08:00:00Z)']; the pipeline keeps one of "
        "each; fix: drop them where the events are exported (e.g. .unique())"
    ]
    assert report.stats["duplicate_events"] == 2


def test_zero_row_event_file_is_a_warning(data: Data) -> None:
    empty = data.write_events(D1, _events_d1().clear(), name="p1")
    report = data.validate()
    assert report.ok
    assert [p.line() for p in report.warnings] == [
        f"warning: {empty}: no rows; fix: remove the empty event files, or write the events they should hold"
    ]


def test_users_file_without_rows(data: Data) -> None:
    _users().clear().write_parquet(data.users)
    # one line: the unknown-user check of the events is skipped, since every user would be unknown
    assert _only_error(data.validate()) == (
        f"error: {data.users}: no rows (0 users): every event would name an unknown user; "
        "fix: write one row per user (see docs/data-contract.md)"
    )


def test_run_date_must_have_events(data: Data) -> None:
    def check(run_date: date) -> ValidationReport:
        return validate_inputs(
            data.users,
            data.items,
            data.event_files(),
            data.root,
            ColumnsConfig(),
            events_dir=data.events_dir,
            run_date=run_date,
        )

    assert check(D1).ok and check(D2).ok
    assert _only_error(check(date(2024, 3, 5))) == (
        f"error: {data.events_dir}: no events for the run date 2024-03-05 (there is no partition of that "
        "day; events span 2024-03-01 to 2024-03-02); fix: pass a run date that has events, or add the "
        "events of that day"
    )
    data.part(D2).unlink()
    data.write_events(D2, _events_d2().clear())  # the partition of D2 holds one file without rows
    report = check(D2)
    assert _only_error(report).startswith(
        f"error: {data.events_dir}: no events for the run date 2024-03-02 (its partition holds no rows; "
    )
    assert [p.message for p in report.warnings] == ["no rows"]


def test_blank_image_path_means_no_image(data: Data) -> None:
    _items().with_columns(image_path=pl.Series(["img/i1.jpg", "  "])).write_parquet(data.items)
    report = data.validate()
    assert report.problems == () and report.stats["images_checked"] == 1
