"""A corpus of broken inputs, each run through the command line as a user would.

Every case starts from the small valid data set of `write_valid` (3 users, 3 items with two images, events
on three days; the run date is the middle one), breaks one thing, and runs `recsys` in-process (no Prefect
server: `nightly` checks config, dates, output folder, lock and inputs before it starts one). Each asserts
the exit status, that the problem is ONE line on stderr naming the file (and column) and the fix, that no
traceback is printed, and that no output partition was written. Problems that are warnings (the run goes
on without the bad value, e.g. an image path outside the data folder) are checked with `recsys validate`.
"""

from __future__ import annotations

import io as _io
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import EXIT_INVALID, EXIT_LOCKED, EXIT_USAGE, app
from pipelines import io

D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)
RUN = D2.isoformat()


# ---------------------------------------------------------------- the valid data set and its breakers


def _ts(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _png(rgb: tuple[int, int, int]) -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (8, 6), rgb).save(buf, format="PNG")
    return buf.getvalue()


USERS = pl.DataFrame(
    {"user_id": ["u1", "u2", "u3"], "gender": ["f", "m", "f"], "age": [30, 41, 25], "score": [1.0, 2.5, 0.5]}
)
ITEMS = pl.DataFrame(
    {
        "item_id": ["i1", "i2", "i3"],
        "title": ["Red shoe", "Blue bag", None],
        "image_path": ["images/i1.png", "images/i2.png", None],
        "price": [9.5, 20.0, 5.0],
        "brand": ["a", "b", "a"],
    }
)
EVENTS = {
    D1: [("u1", "i1", "view", 8), ("u2", "i2", "click", 9), ("u3", "i1", "purchase", 23)],
    D2: [("u1", "i2", "view", 10), ("u2", "i3", "cart", 11), ("u3", "i3", "view", 12)],
    D3: [("u1", "i3", "purchase", 1), ("u2", "i1", "view", 2)],
}


def events(day: date) -> pl.DataFrame:
    rows = EVENTS[day]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event": [r[2] for r in rows],
            "ts": [_ts(day, r[3]) for r in rows],
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def write_valid(root: Path) -> Path:
    data = root / "data"
    io.write_input_table(data, "users", USERS)
    io.write_input_table(data, "items", ITEMS)
    io.write_input_file(data, "images/i1.png", _png((200, 30, 30)))
    io.write_input_file(data, "images/i2.png", _png((30, 30, 200)))
    for day in EVENTS:
        io.write_input_events(data, day, events(day))
    return data


def part(data: Path, day: date = D2) -> Path:
    return io.event_partition_dir(data, day) / "part-0.parquet"


def not_utf8(df: pl.DataFrame, column: str, row: int, raw: bytes) -> pa.Table:
    """df with the raw bytes `raw` (not UTF-8) in its string column at `row`, as a writer that does not
    check its text would store it."""
    values = [v.encode() if v is not None else None for v in df[column].to_list()]
    values[row] = raw
    table = df.to_arrow()
    return table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, type=pa.binary()).view(pa.string())
    )


def with_binary(df: pl.DataFrame, column: str, kind: pa.DataType) -> pa.Table:
    table = df.to_arrow()
    values = pa.array([v.encode() if v is not None else None for v in df[column].to_list()], type=kind)
    return table.set_column(table.schema.get_field_index(column), column, values)


def _rm(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---------------------------------------------------------------- running the command


runner = CliRunner()


def cli(*args: str):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


def lines(text: str, level: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{level}: ")]


def assert_one_line(res, level: str, needles: tuple[str, ...]) -> str:  # noqa: ANN001
    """Exactly one `level:` line on stderr, holding every needle and a fix; no traceback anywhere."""
    found = lines(res.stderr, level)
    assert len(found) == 1, res.output
    line = found[0]
    for needle in needles:
        assert needle in line, (needle, line)
    assert "; fix: " in line, line
    assert "Traceback" not in res.output and "error: error:" not in res.output, res.output
    return line


def assert_nothing_written(out: Path) -> None:
    written = (
        [p for p in out.rglob("dt=*") if ".locks" not in p.relative_to(out).parts] if out.exists() else []
    )
    assert written == [], written


# ---------------------------------------------------------------- errors: nightly stops before writing


@dataclass(frozen=True)
class Case:
    """A way to break the valid data set and what the one error line must name."""

    breaks: Callable[[Path], object]
    needles: tuple[str, ...]
    extra: tuple[str, ...] = ()


ERRORS: dict[str, Case] = {
    "users file missing": Case(
        lambda d: _rm(d / "users.parquet"), ("users.parquet", "users file is missing")
    ),
    "items file not Parquet": Case(
        lambda d: (d / "items.parquet").write_bytes(b"PAR1 not parquet at all PAR1"),
        ("items.parquet", "unreadable or corrupt Parquet"),
    ),
    "events folder missing": Case(lambda d: _rm(d / "events"), ("events", "events folder is missing")),
    "event file corrupt": Case(
        lambda d: part(d, D1).write_bytes(b"garbage"), ("dt=2024-03-01/part-0.parquet", "corrupt Parquet")
    ),
    "run date without partition": Case(
        lambda d: _rm(io.event_partition_dir(d, D2)), ("events", "no events for the run date 2024-03-02")
    ),
    "run date holds only an empty file": Case(
        lambda d: events(D2).clear().write_parquet(part(d)),
        ("events", "no events for the run date 2024-03-02", "its partition holds no rows"),
    ),
    "NaN price": Case(
        lambda d: ITEMS.with_columns(price=pl.Series([float("nan"), 1.0, 2.0])).write_parquet(
            d / "items.parquet"
        ),
        ("items.parquet: column price:", "1 NaN or infinite values", "item_id ['i1']"),
    ),
    "infinite user score": Case(
        lambda d: USERS.with_columns(score=pl.Series([1.0, float("inf"), 0.0])).write_parquet(
            d / "users.parquet"
        ),
        ("users.parquet: column score:", "1 NaN or infinite values", "user_id ['u2']"),
    ),
    "title not UTF-8": Case(
        lambda d: pq.write_table(not_utf8(ITEMS, "title", 0, b"caf\xe9"), d / "items.parquet"),
        ("items.parquet: column title:", "1 values are not valid UTF-8", "b'caf\\xe9'"),
    ),
    "user attribute not UTF-8": Case(
        lambda d: pq.write_table(not_utf8(USERS, "gender", 1, b"\xff"), d / "users.parquet"),
        ("users.parquet: column gender:", "not valid UTF-8"),
    ),
    "event item_id not UTF-8": Case(
        lambda d: pq.write_table(not_utf8(events(D2), "item_id", 0, b"i\xc3"), part(d)),
        ("dt=2024-03-02/part-0.parquet: column item_id:", "not valid UTF-8"),
    ),
    "title stored as binary": Case(
        lambda d: pq.write_table(with_binary(ITEMS, "title", pa.binary()), d / "items.parquet"),
        ("items.parquet: column title:", "has type Binary"),
    ),
    "user_id stored as large_binary": Case(
        lambda d: pq.write_table(with_binary(USERS, "user_id", pa.large_binary()), d / "users.parquet"),
        ("users.parquet: column user_id:", "has type Binary"),
    ),
    "float ids in events": Case(
        lambda d: events(D2).with_columns(user_id=pl.Series([1.0, 2.0, 3.0])).write_parquet(part(d)),
        ("dt=2024-03-02/part-0.parquet: column user_id:", "has type Float64"),
    ),
    "naive timestamps": Case(
        lambda d: events(D2).with_columns(pl.col("ts").dt.replace_time_zone(None)).write_parquet(part(d)),
        ("column ts:", "naive timestamp"),
    ),
    "timestamps as text": Case(
        lambda d: events(D2).with_columns(pl.col("ts").cast(pl.String)).write_parquet(part(d)),
        ("column ts:", "has type String"),
    ),
    "timestamps in another zone": Case(
        lambda d: (
            events(D2).with_columns(pl.col("ts").dt.convert_time_zone("Europe/Berlin")).write_parquet(part(d))
        ),
        ("column ts:", "time zone Europe/Berlin"),
    ),
    "unknown event name": Case(
        lambda d: events(D2).with_columns(event=pl.Series(["view", "like", "view"])).write_parquet(part(d)),
        ("column event:", "unknown event name: 'like' (1)"),
    ),
    "timestamp outside its partition": Case(
        lambda d: (
            events(D2)
            .with_columns(ts=pl.Series([_ts(D3, 5)] * 3).cast(pl.Datetime("us", "UTC")))
            .write_parquet(part(d))
        ),
        ("column ts:", "3 events", "not their dt= partition"),
    ),
    "users file without rows": Case(
        lambda d: USERS.clear().write_parquet(d / "users.parquet"), ("users.parquet", "no rows (0 users)")
    ),
    "duplicate item ids": Case(
        lambda d: pl.concat([ITEMS, ITEMS.head(1)]).write_parquet(d / "items.parquet"),
        ("items.parquet: column item_id:", "1 duplicate ids over 2 rows", "['i1']"),
    ),
    "item_id column missing": Case(
        lambda d: ITEMS.drop("item_id").write_parquet(d / "items.parquet"),
        ("items.parquet: column item_id:", "missing column"),
    ),
    "title column missing": Case(
        lambda d: ITEMS.drop("title").write_parquet(d / "items.parquet"),
        ("items.parquet: column title:", "missing column"),
    ),
    "null user ids in events": Case(
        lambda d: events(D2).with_columns(user_id=pl.Series(["u1", None, "u3"])).write_parquet(part(d)),
        ("column user_id:", "1 null values"),
    ),
    "event column missing": Case(
        lambda d: events(D2).drop("event").write_parquet(part(d)), ("column event:", "missing column")
    ),
    "events of unknown users": Case(
        lambda d: events(D2).with_columns(user_id=pl.Series(["u1", "u9", "u3"])).write_parquet(part(d)),
        ("column user_id:", "1 events", "absent from users.parquet", "['u9']"),
    ),
    "declared numeric column absent": Case(
        lambda d: None,
        ("items.parquet: column weight:", "columns.item_numeric"),
        ("--columns.item_numeric=[weight]",),
    ),
    "declared categorical of a float column": Case(
        lambda d: None,
        ("users.parquet: column score:", "has type Float64"),
        ("--columns.user_categorical=[score]",),
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_broken_input_stops_nightly_with_one_line(name: str, tmp_path: Path) -> None:
    case = ERRORS[name]
    data, out = write_valid(tmp_path), tmp_path / "out"
    case.breaks(data)
    res = cli("nightly", "--date", RUN, "--data", data, "--out", out, *case.extra)
    assert res.exit_code == EXIT_INVALID, res.output
    assert_one_line(res, "error", case.needles)
    assert_nothing_written(out)


def test_missing_data_folder_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("nightly", "--date", RUN, "--data", tmp_path / "nope", "--out", out)
    assert res.exit_code == EXIT_INVALID
    assert_one_line(res, "error", (str(tmp_path / "nope"), "the data folder does not exist"))
    assert_nothing_written(out)


# ---------------------------------------------------------------- warnings: the bad value is left out


def _outside(data: Path) -> Path:
    target = data.parent / "outside.png"
    target.write_bytes(_png((1, 2, 3)))
    return target


def _items_with_path(data: Path, path: str) -> None:
    ITEMS.with_columns(image_path=pl.Series([path, "images/i2.png", None])).write_parquet(
        data / "items.parquet"
    )


def _replace_image(data: Path, make: Callable[[Path], object]) -> None:
    target = data / "images" / "i1.png"
    target.unlink()
    make(target)


WARNINGS: dict[str, Case] = {
    "exact duplicate events": Case(
        lambda d: pl.concat([events(D2), events(D2).head(1)]).write_parquet(part(d)),
        ("dt=2024-03-02/part-0.parquet", "1 exact duplicate events", "keeps one of each"),
    ),
    "event file without rows": Case(
        lambda d: events(D1).clear().write_parquet(io.event_partition_dir(d, D1) / "part-1.parquet"),
        ("dt=2024-03-01/part-1.parquet", "no rows"),
    ),
    "absolute image path": Case(
        lambda d: _items_with_path(d, str(_outside(d))),
        ("column image_path:", "1 of 2 image paths are absolute"),
    ),
    "/etc/passwd as image path": Case(
        lambda d: _items_with_path(d, "/etc/passwd"), ("column image_path:", "are absolute", "'/etc/passwd'")
    ),
    "image path with ..": Case(
        lambda d: (_outside(d), _items_with_path(d, "../outside.png")),
        ("column image_path:", "have '..' parts", "'../outside.png'"),
    ),
    "image path not normalised": Case(
        lambda d: _items_with_path(d, "images//i1.png"), ("column image_path:", "are not normalised")
    ),
    "image link escaping the data folder": Case(
        lambda d: _replace_image(d, lambda t: t.symlink_to(_outside(d))),
        ("column image_path:", "resolve outside the data folder through a symbolic link", "'images/i1.png'"),
    ),
    "image is a named pipe": Case(
        lambda d: _replace_image(d, os.mkfifo), ("column image_path:", "other than a regular file")
    ),
    "image is a folder": Case(
        lambda d: _replace_image(d, Path.mkdir), ("column image_path:", "other than a regular file")
    ),
    "image file missing": Case(
        lambda d: (d / "images" / "i2.png").unlink(),
        ("column image_path:", "1 of 2 image paths name no file"),
    ),
    "dangling image link": Case(
        lambda d: _replace_image(d, lambda t: t.symlink_to(d / "images" / "gone.png")),
        ("column image_path:", "name no file"),
    ),
    "images over the size cap": Case(
        lambda d: None,
        ("column image_path:", "2 of 2 image paths name files larger than embeddings.max_image_bytes=10"),
        ("--embeddings.max_image_bytes=10",),
    ),
    "stray folder among the partitions": Case(
        lambda d: (d / "events" / "backup").mkdir(), ("events", "ignored 1 entries", "backup")
    ),
    "extra column in an event file": Case(
        lambda d: events(D2).with_columns(session=pl.lit("s")).write_parquet(part(d)),
        ("dt=2024-03-02/part-0.parquet: column session:", "extra column"),
    ),
}


@pytest.mark.timeout(60)  # a named pipe that were opened would block here
@pytest.mark.parametrize("name", list(WARNINGS))
def test_questionable_input_is_one_warning_line(name: str, tmp_path: Path) -> None:
    case = WARNINGS[name]
    data = write_valid(tmp_path)
    case.breaks(data)
    res = cli("validate", "--data", data, *case.extra)
    assert res.exit_code == 0, res.output
    assert lines(res.stderr, "error") == []
    assert_one_line(res, "warning", case.needles)


def test_image_paths_outside_the_data_folder_are_never_read_by_the_stage(
    tmp_path: Path, tiny_text_model
) -> None:
    """The embedding stage gives items whose image path is refused no image (and does not block on a pipe)."""
    from features.config import EmbeddingsConfig
    from pipelines.embedding import embed_items

    data = write_valid(tmp_path)
    secret = _outside(data)
    os.mkfifo(data / "images" / "pipe.png")
    paths = [str(secret), "../outside.png", "images/pipe.png"]
    ITEMS.with_columns(image_path=pl.Series(paths)).write_parquet(data / "items.parquet")
    cfg = EmbeddingsConfig(text_model=str(tiny_text_model), device="cpu")
    run = io.RunInfo.new({}, "h", run_id="t")
    embed_items(data, tmp_path / "out", D2, cfg, run, progress=False)
    assert not io.read_table(tmp_path / "out", "embeddings", D2, "items")["has_image"].any()


# ---------------------------------------------------------------- the command line itself


USAGE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "a day that does not exist": (("nightly", "--date", "2024-02-30"), ("--date", "'2024-02-30'")),
    "not a date": (("nightly", "--date", "yesterday"), ("--date", "is not YYYY-MM-DD")),
    "a month that does not exist": (
        ("generate", "--start", "2024-99-01"),
        ("--start", "month must be in 1..12"),
    ),
    "backfill ending before it starts": (
        ("backfill", "--start", "2024-03-05", "--end", "2024-03-01"),
        ("end 2024-03-01 is before start 2024-03-05", "--start <= --end"),
    ),
    "backfill with a bad end": (("backfill", "--start", "2024-03-01", "--end", "2024-13-01"), ("--end",)),
    "report with a bad date": (("report", "--date", "2024-04-31"), ("--date",)),
    "unknown config key": (("config", "--ranker.expertz=3"), ("ranker.expertz", "remove it")),
    "config value of the wrong type": (("config", "--ranker.epochs=many"), ("ranker.epochs",)),
    "a column in both lists": (
        ("config", "--columns.item_categorical=[brand]", "--columns.item_numeric=[brand]"),
        ("columns.item_categorical and columns.item_numeric both list ['brand']",),
    ),
    "an override without a section": (("nightly", "--date", RUN, "--ranker=3"), ("--section.key=value",)),
    "a missing option": (("nightly",), ("Missing option '--date'",)),
    "an unknown preset": (("generate", "--preset", "huge"), ("unknown preset 'huge'",)),
}


@pytest.mark.parametrize("name", list(USAGE))
def test_usage_error_is_one_line(name: str) -> None:
    args, needles = USAGE[name]
    res = cli(*args)
    assert res.exit_code == EXIT_USAGE, res.output
    assert_one_line(res, "error", needles)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("ranker: [unclosed\n", "is not valid YAML (line"),
        ("- a\n- b\n", "must hold a mapping of sections"),
        (None, "does not exist"),
    ],
    ids=["not YAML", "not a mapping", "missing file"],
)
def test_config_file_problems_are_one_line(text: str | None, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    data = write_valid(tmp_path)
    res = cli("nightly", "--date", RUN, "--data", data, "--out", tmp_path / "out", "--config", path)
    assert res.exit_code == EXIT_USAGE, res.output
    assert_one_line(res, "error", (str(path), needle))
    assert_nothing_written(tmp_path / "out")


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    res = cli("--verbose", "nightly", "--date", RUN, "--data", tmp_path / "nope", "--out", tmp_path / "out")
    assert res.exit_code == EXIT_INVALID
    assert "Traceback (most recent call last)" in res.stderr
    assert len(lines(res.stderr, "error")) == 1


# ---------------------------------------------------------------- the output folder


def test_read_only_output_fails_at_once_with_a_fix(tmp_path: Path, read_only_dir: Path) -> None:
    data = write_valid(tmp_path)
    start = time.monotonic()
    res = cli("nightly", "--date", RUN, "--data", data, "--out", read_only_dir / "out")
    assert res.exit_code == EXIT_INVALID, res.output
    assert_one_line(res, "error", (str(read_only_dir / "out"), "fix: "))
    assert time.monotonic() - start < 10  # no retries, no server
    assert not (read_only_dir / "out").exists()


def test_output_below_a_file_fails_with_a_fix(tmp_path: Path) -> None:
    data = write_valid(tmp_path)
    (tmp_path / "afile").write_text("x")
    res = cli("nightly", "--date", RUN, "--data", data, "--out", tmp_path / "afile" / "out")
    assert res.exit_code == EXIT_INVALID, res.output
    assert_one_line(res, "error", ("afile", "a part of the path is a file, not a folder", "--out"))


def _hold_lock(out: Path, day: date) -> subprocess.Popen:
    """Another process holding the lock of (out, day) until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from datetime import date
        from pipelines.lock import run_lock
        with run_lock({str(out)!r}, date.fromisoformat({day.isoformat()!r})):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("command", ["nightly", "backfill"])
def test_a_second_run_of_the_same_date_refuses(command: str, tmp_path: Path) -> None:
    data, out = write_valid(tmp_path), tmp_path / "out"
    holder = _hold_lock(out, D2)
    try:
        if command == "nightly":
            res = cli("nightly", "--date", RUN, "--data", data, "--out", out)
        else:
            res = cli(
                "backfill", "--start", D1.isoformat(), "--end", D3.isoformat(), "--data", data, "--out", out
            )
        assert res.exit_code == EXIT_LOCKED, res.output
        line = assert_one_line(res, "error", (str(io.lock_path(out, D2)), f"pid {holder.pid}", "--wait"))
        assert "another run of 2024-03-02" in line
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert_nothing_written(out)
    assert not io.lock_path(out, D2).exists()  # the holder removed it when it ended


# ---------------------------------------------------------------- retries: only what can be transient


class _FailedState:
    def __init__(self, err: BaseException) -> None:
        self.err = err

    def result(self) -> None:
        raise self.err


@pytest.mark.parametrize(
    "err,retried",
    [
        (PermissionError(13, "Permission denied"), False),
        (FileNotFoundError(2, "No such file or directory"), False),
        (IsADirectoryError(21, "Is a directory"), False),
        (NotADirectoryError(20, "Not a directory"), False),
        (OSError(28, "No space left on device"), False),
        (OSError(30, "Read-only file system"), False),
        (ValueError("items.parquet: column price: NaN; fix: ..."), False),
        (TimeoutError("timed out"), True),
        (OSError(5, "Input/output error"), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_tasks_retry_only_transient_errors(err: BaseException, retried: bool) -> None:
    from flows.nightly import _retry_on_io_only

    assert _retry_on_io_only(None, None, _FailedState(err)) is retried
