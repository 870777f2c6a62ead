"""The input data contract: schema checks, row checks and inference of attribute columns.

This module is pure: it receives explicit file paths and never knows the folder layout (that is
`pipelines.io`). The contract, described in full in docs/data-contract.md::

    events  user_id: string, item_id: string, event: string in EVENT_TYPES, ts: timestamp[us, UTC]
    users   user_id: string (unique, not null) + user attribute columns
    items   item_id: string (unique, not null), title: string (nullable),
            image_path: string (nullable, relative to the data root) + item attribute columns

Integer ids are accepted (the IO layer casts them to string). Every check yields at most one `Problem`,
a line naming the file, the column and the fix. Row checks run as lazy polars queries, one partition of
events at a time, so memory is bounded by one day of events plus the id sets of users and items.

Which files an image_path may name is decided by `pipelines.io` (the only module that knows paths); the
caller passes that rule in as `image_check`, and this module turns what it rejects into warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.config import EVENT_TYPES, ColumnsConfig

log = logging.getLogger(__name__)

SAMPLE = 5  # ids / values quoted in a message
EVENT_COLUMNS = ("user_id", "item_id", "event", "ts")
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "+00:00"})  # spellings of UTC written by common tools
ITEM_TEXT_COLUMNS = ("title", "image_path")  # nullable string columns of items.parquet

# Errors raised by polars/pyarrow when a Parquet file cannot be read; PanicException is what polars
# raises on some malformed pages and is not an Exception subclass.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    pl.exceptions.PolarsError,
    OSError,
    pl.exceptions.PanicException,
    pa.ArrowException,
)


class PathRejection(Protocol):
    """Why an image path is not opened (`pipelines.io.Rejection`): `"<n> image paths <reason>"`, the fix."""

    reason: str
    fix: str


# distinct image_path values -> those that must not be opened, with why (pipelines.io.input_path_rejections)
ImageCheck = Callable[[list[str]], Mapping[str, PathRejection]]


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class Problem:
    """One finding of validation: where it is (file, column), what is wrong and how to fix it."""

    level: Literal["error", "warning"]
    file: str
    column: str | None
    message: str
    fix: str

    def line(self) -> str:
        """The problem as one line: ``error: <file>: column <c>: <message>; fix: <fix>``.

        >>> Problem("error", "users.parquet", "user_id", "2 null values", "drop those rows").line()
        'error: users.parquet: column user_id: 2 null values; fix: drop those rows'
        >>> Problem("warning", "events", None, "stray folder x", "move it").line()
        'warning: events: stray folder x; fix: move it'
        """
        where = f"{self.file}: column {self.column}" if self.column is not None else self.file
        return f"{self.level}: {where}: {self.message}; fix: {self.fix}"


@dataclass(frozen=True)
class ValidationReport:
    """Problems found in the inputs, the resolved attribute columns and summary counts.

    `inferred` holds the declared lists where the config declares them and the inferred lists elsewhere
    (None where the file could not be read). `stats` is JSON-able: row counts of users, items and events,
    events per partition and per event type, images checked and missing.
    """

    problems: tuple[Problem, ...]
    inferred: ColumnsConfig
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.level == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.level == "warning")

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings do not count)."""
        return not self.errors

    def lines(self) -> list[str]:
        """Errors first, then warnings, one line each."""
        return [p.line() for p in (*self.errors, *self.warnings)]


# ---------------------------------------------------------------- dtypes


def _is_string(dt: pl.DataType) -> bool:
    return dt == pl.String or isinstance(dt, pl.Categorical | pl.Enum)


def _is_id_type(dt: pl.DataType) -> bool:
    return _is_string(dt) or dt.is_integer()


def _is_categorical_type(dt: pl.DataType) -> bool:
    """Types inferred as categorical: strings, categoricals, enums, booleans."""
    return _is_string(dt) or dt == pl.Boolean


def _is_numeric_type(dt: pl.DataType) -> bool:
    """Types inferred as numeric: integers, floats, decimals."""
    return dt.is_numeric()


def _may_declare_categorical(dt: pl.DataType) -> bool:
    """A declared categorical column is hashed from its text form: strings, booleans, integers, dates."""
    return _is_categorical_type(dt) or dt.is_integer() or dt == pl.Date


def _may_declare_numeric(dt: pl.DataType) -> bool:
    return dt.is_numeric() or dt == pl.Boolean


def _type_name(dt: pl.DataType) -> str:
    """Short, contract-style name of a dtype: timestamp[us, UTC], timestamp[us] (naive), String, ..."""
    if isinstance(dt, pl.Datetime):
        tz = f", {dt.time_zone}" if dt.time_zone else ""
        return f"timestamp[{dt.time_unit}{tz}]"
    return str(dt)


# ---------------------------------------------------------------- attribute columns


@dataclass(frozen=True)
class _Note:
    """A problem without its file (attached by the caller)."""

    level: Literal["error", "warning"]
    column: str | None
    message: str
    fix: str


def _resolve_side(
    side: str,
    schema: Mapping[str, pl.DataType],
    reserved: Sequence[str],
    declared_cat: list[str] | None,
    declared_num: list[str] | None,
) -> tuple[list[str], list[str], list[_Note]]:
    """Categorical and numeric attribute columns of one table, and the notes about the others.

    A list declared in the config is checked against the schema; a list that is None is inferred from the
    columns not named in the other list. Columns in neither list are ignored with a warning.
    """
    notes: list[_Note] = []
    cat_key, num_key = f"columns.{side}_categorical", f"columns.{side}_numeric"
    for key, declared, allowed, want in (
        (cat_key, declared_cat, _may_declare_categorical, "a string, boolean, integer or date"),
        (num_key, declared_num, _may_declare_numeric, "an integer, float, decimal or boolean"),
    ):
        for c in declared or []:
            if c in reserved:
                notes.append(
                    _Note("error", c, f"{key} lists the reserved column {c}", f"remove {c} from {key}")
                )
            elif c not in schema:
                notes.append(
                    _Note(
                        "error",
                        c,
                        f"declared in {key} but absent from the file",
                        f"add the column to the file or remove it from {key}",
                    )
                )
            elif not allowed(schema[c]):
                other = num_key if key == cat_key else cat_key
                notes.append(
                    _Note(
                        "error",
                        c,
                        f"declared in {key} but has type {_type_name(schema[c])}, expected {want}",
                        f"cast the column to {want} or move it to {other}",
                    )
                )

    attrs = [c for c in schema if c not in reserved]
    named_cat = set(declared_cat or [])
    named_num = set(declared_num or [])
    if declared_cat is None:
        cat = [c for c in attrs if c not in named_num and _is_categorical_type(schema[c])]
    else:
        cat = [
            c
            for c in declared_cat
            if c in schema and c not in reserved and _may_declare_categorical(schema[c])
        ]
    if declared_num is None:
        num = [c for c in attrs if c not in named_cat and _is_numeric_type(schema[c])]
    else:
        num = [
            c for c in declared_num if c in schema and c not in reserved and _may_declare_numeric(schema[c])
        ]

    used = set(cat) | set(num) | named_cat | named_num
    for c in attrs:
        if c in used:
            continue
        dt = schema[c]
        if declared_cat is not None and declared_num is not None:
            notes.append(
                _Note(
                    "warning",
                    c,
                    f"extra column ({_type_name(dt)}) not declared in {cat_key} or {num_key}; ignored",
                    f"declare it in {cat_key} or {num_key} to use it",
                )
            )
        elif dt.is_temporal():
            notes.append(
                _Note(
                    "warning",
                    c,
                    f"{_type_name(dt)} column is neither categorical nor numeric; ignored",
                    "derive a numeric column (e.g. days since) or a categorical one (e.g. the year)"
                    + (f", or declare it in {cat_key}" if dt == pl.Date else ""),
                )
            )
        else:
            declared = cat_key if declared_cat is not None else num_key
            usable = (_is_categorical_type(dt) and declared_cat is not None) or (
                _is_numeric_type(dt) and declared_num is not None
            )
            if usable:
                notes.append(
                    _Note(
                        "warning",
                        c,
                        f"extra column ({_type_name(dt)}) not declared in {declared}; ignored",
                        f"add it to {declared} to use it",
                    )
                )
            else:
                notes.append(
                    _Note(
                        "warning",
                        c,
                        f"column of unusable type {_type_name(dt)} is neither categorical nor numeric; ignored",
                        "convert it to a string (categorical) or a number (numeric) column, or drop it",
                    )
                )
    return cat, num, notes


def infer_columns(
    users_schema: Mapping[str, pl.DataType], items_schema: Mapping[str, pl.DataType]
) -> ColumnsConfig:
    """Infer categorical and numeric attribute columns from the schemas of users and items.

    Strings, categoricals, enums and booleans are categorical; integers, floats and decimals are numeric;
    dates, timestamps, durations, lists, structs, binary and all-null columns are left out (validation
    warns about them). Ids, `title` and `image_path` are never attributes. Columns keep the file order.

    >>> cfg = infer_columns(
    ...     {"user_id": pl.String, "gender": pl.String, "age": pl.Int32},
    ...     {"item_id": pl.Int64, "title": pl.String, "image_path": pl.String, "price": pl.Float64},
    ... )
    >>> cfg.user_categorical, cfg.user_numeric, cfg.item_categorical, cfg.item_numeric
    (['gender'], ['age'], [], ['price'])
    """
    ucat, unum, _ = _resolve_side("user", users_schema, ("user_id",), None, None)
    icat, inum, _ = _resolve_side("item", items_schema, ("item_id", *ITEM_TEXT_COLUMNS), None, None)
    return ColumnsConfig(user_categorical=ucat, user_numeric=unum, item_categorical=icat, item_numeric=inum)


# ---------------------------------------------------------------- helpers


def _sample_text(values: Iterable[Any]) -> str:
    return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values) + "]"


def _read_schema(path: Path, problems: list[Problem], what: str) -> pl.Schema | None:
    """Schema of a Parquet file, or None with an error when the file is missing or unreadable."""
    if not path.is_file():
        problems.append(
            Problem(
                "error",
                str(path),
                None,
                f"{what} file is missing",
                f"write {path.name} (see docs/data-contract.md for its columns)",
            )
        )
        return None
    try:
        return pl.read_parquet_schema(path)
    except _READ_ERRORS as err:
        problems.append(_corrupt(path, err))
        return None


def _corrupt(path: Path, err: BaseException) -> Problem:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return Problem(
        "error",
        str(path),
        None,
        f"unreadable or corrupt Parquet ({type(err).__name__}: {first})",
        "re-export the file with a Parquet writer (polars, pyarrow, Spark)",
    )


def _is_utf8_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "utf-8" in text or "utf8" in text


def _invalid_utf8_in(arr: pa.Array) -> tuple[int, list[bytes]]:
    """Values of a string/binary array that are not valid UTF-8: how many and the first few.

    Arrow validates whole arrays; halves of an invalid array are validated again down to 64 values, and
    only those few are decoded one by one. So the cost is a few validation passes, not a loop over rows.
    """
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary.take(arr.indices)
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    as_text = arr.view(pa.large_string() if large else pa.string())
    try:
        as_text.validate(full=True)
        return 0, []
    except pa.ArrowInvalid:
        pass
    if len(arr) <= 64:
        bad = []
        for value in arr.view(pa.large_binary() if large else pa.binary()).to_pylist():  # <= 64 values
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(value)
        return len(bad), bad[:SAMPLE]
    mid = len(arr) // 2
    n1, s1 = _invalid_utf8_in(arr.slice(0, mid))
    n2, s2 = _invalid_utf8_in(arr.slice(mid))
    return n1 + n2, (s1 + s2)[:SAMPLE]


def _utf8_problems(path: Path, columns: Sequence[str]) -> list[Problem]:
    """One error per string column of `path` (among `columns`) holding values that are not valid UTF-8.

    Parquet strings are UTF-8 by specification, but a writer may store other bytes under the string type;
    readers then fail on the first such page. Each column is decoded alone; a failing one is read again
    as raw bytes, one row group at a time, to count and quote the bad values.
    """
    out: list[Problem] = []
    for c in columns:
        try:
            pl.scan_parquet(path).select(pl.col(c).null_count()).collect()
            continue
        except _READ_ERRORS as err:
            if not _is_utf8_error(err):
                continue  # another kind of damage: reported by the checks that read the file
        n, sample = 0, []
        try:
            pf = pq.ParquetFile(path)
            for g in range(pf.num_row_groups):  # one row group of one column in memory at a time
                for chunk in pf.read_row_group(g, columns=[c]).column(0).chunks:
                    k, found = _invalid_utf8_in(chunk)
                    n, sample = n + k, (sample + found)[:SAMPLE]
        except (pa.ArrowException, OSError):
            pass
        shown = f", e.g. {_sample_text(sorted(v[:40] for v in sample))}" if sample else ""
        out.append(
            Problem(
                "error",
                str(path),
                c,
                f"{n or 'some'} values are not valid UTF-8{shown}",
                "write the text as UTF-8 (decode it from its real encoding, e.g. latin-1, before writing) "
                "or set those values to null",
            )
        )
    return out


def _missing_column(path: Path, column: str, expected: str) -> Problem:
    return Problem(
        "error",
        str(path),
        column,
        f"missing column (expected {expected})",
        f"add the column {column} (see docs/data-contract.md)",
    )


def _check_id_column(path: Path, schema: pl.Schema, column: str, problems: list[Problem]) -> bool:
    """Presence and type of an id column; True when it can be read as string ids."""
    if column not in schema:
        problems.append(_missing_column(path, column, "string or integer ids"))
        return False
    if not _is_id_type(schema[column]):
        problems.append(
            Problem(
                "error",
                str(path),
                column,
                f"has type {_type_name(schema[column])}, expected string (or integer) ids",
                f"cast {column} to string, e.g. pl.col('{column}').cast(pl.String)",
            )
        )
        return False
    return True


# ---------------------------------------------------------------- users and items


@dataclass
class _Table:
    """What the event and image checks need from users.parquet or items.parquet."""

    schema: pl.Schema | None = None
    ids: pl.DataFrame | None = None  # distinct non-null ids as strings, one column named like the id
    corrupt: bool = False  # the footer could be read but not the rows
    bad_text: set[str] = field(default_factory=set)  # string columns with values that are not UTF-8


def _check_table(
    path: Path, what: str, id_col: str, problems: list[Problem], stats: dict[str, Any]
) -> _Table:
    """File, id column, null and duplicate ids of users.parquet or items.parquet."""
    table = _Table(schema=_read_schema(path, problems, what))
    if table.schema is None:
        return table
    if what == "items":
        for c in ITEM_TEXT_COLUMNS:
            if c not in table.schema:
                problems.append(_missing_column(path, c, "nullable string"))
            elif not (_is_string(table.schema[c]) or table.schema[c] == pl.Null):
                problems.append(
                    Problem(
                        "error",
                        str(path),
                        c,
                        f"has type {_type_name(table.schema[c])}, expected a nullable string",
                        f"cast {c} to string, e.g. pl.col('{c}').cast(pl.String)",
                    )
                )
    if not _check_id_column(path, table.schema, id_col, problems):
        return table
    text_cols = [id_col, *(ITEM_TEXT_COLUMNS if what == "items" else ())]
    found = _utf8_problems(path, [c for c in text_cols if c in table.schema and _is_string(table.schema[c])])
    problems.extend(found)
    table.bad_text = {p.column for p in found if p.column is not None}
    if id_col in table.bad_text:
        return table

    ids = pl.scan_parquet(path).select(pl.col(id_col).cast(pl.String))
    dup = ids.drop_nulls().group_by(id_col).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    try:
        summary, dups, distinct = pl.collect_all(
            [
                ids.select(pl.len().alias("rows"), pl.col(id_col).null_count().alias("nulls")),
                dup.select(
                    pl.len().alias("ids"),
                    pl.col("n").sum().alias("rows"),
                    pl.col(id_col).bottom_k(SAMPLE).sort().implode().alias("sample"),
                ),
                ids.drop_nulls().unique(),
            ]
        )
    except _READ_ERRORS as err:
        problems.append(_corrupt(path, err))
        table.corrupt = True
        return table
    rows, nulls = summary.row(0)
    stats[what] = rows
    if rows == 0:
        problems.append(
            Problem(
                "error",
                str(path),
                None,
                f"no rows (0 {what}): every event would name an unknown {id_col.removesuffix('_id')}",
                f"write one row per {id_col.removesuffix('_id')} (see docs/data-contract.md)",
            )
        )
        return table  # no ids: the unknown-id checks of the events are skipped (one mistake, one line)
    if nulls:
        problems.append(
            Problem(
                "error",
                str(path),
                id_col,
                f"{nulls} null ids out of {rows} rows",
                f"drop the rows with a null {id_col} or give them an id",
            )
        )
    n_dup, dup_rows, sample = dups.row(0)
    if n_dup:
        problems.append(
            Problem(
                "error",
                str(path),
                id_col,
                f"{n_dup} duplicate ids over {dup_rows} rows, e.g. {_sample_text(sample)}",
                f"keep one row per {id_col} (e.g. .unique('{id_col}', keep='last'))",
            )
        )
    table.ids = distinct
    return table


def _check_images(
    items_file: Path, image_check: ImageCheck, problems: list[Problem], stats: dict[str, Any]
) -> None:
    """One warning per kind of image_path that will not be opened (absolute, outside the data folder,
    missing, not a regular file, too large...; the kinds and their fixes come from `image_check`).

    Null and blank paths mean "no image" and are not checked.
    """
    try:
        rel = (
            pl.scan_parquet(items_file)
            .select(pl.col("image_path").cast(pl.String))
            .drop_nulls()
            .filter(pl.col("image_path").str.strip_chars() != "")
            .unique()
            .sort("image_path")
            .collect()
        )
    except _READ_ERRORS as err:
        problems.append(_corrupt(items_file, err))
        return
    paths = rel["image_path"].to_list()
    rejected = image_check(paths)
    by_kind: dict[tuple[str, str], list[str]] = {}
    for path in paths:  # distinct paths, sorted: the samples quote the smallest
        why = rejected.get(path)
        if why is not None:
            by_kind.setdefault((why.reason, why.fix), []).append(path)
    stats["images_checked"] = len(paths)
    stats["images_rejected"] = len(rejected)
    for (reason, fix), bad in sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        problems.append(
            Problem(
                "warning",
                str(items_file),
                "image_path",
                f"{len(bad)} of {len(paths)} image paths {reason}, e.g. {_sample_text(bad[:SAMPLE])} "
                "(those items get no image embedding; the files are never opened)",
                fix,
            )
        )


def _check_numeric(
    path: Path, id_col: str, columns: Sequence[str], schema: pl.Schema, problems: list[Problem]
) -> None:
    """An error per float attribute column holding NaN or +-inf (nulls are fine: they mean "missing")."""
    floats = [c for c in columns if c in schema and schema[c].is_float()]
    if not floats:
        return

    def bad(c: str) -> pl.Expr:
        return pl.col(c).is_nan() | pl.col(c).is_infinite()

    scan = pl.scan_parquet(path)
    try:
        counts = scan.select(pl.len().alias("__rows"), *[bad(c).sum().alias(c) for c in floats]).collect()
    except _READ_ERRORS:
        return  # reported by the checks that read the ids
    rows = counts["__rows"][0]
    for c in floats:
        n = counts[c][0]
        if not n:
            continue
        sample = (
            scan.filter(bad(c))
            .select(pl.col(id_col).cast(pl.String).bottom_k(SAMPLE).sort())
            .collect()[id_col]
            .to_list()
        )
        problems.append(
            Problem(
                "error",
                str(path),
                c,
                f"{n} NaN or infinite values out of {rows} rows, e.g. {id_col} {_sample_text(sample)}",
                f"replace them with null (missing) or a finite number, e.g. "
                f"pl.when(pl.col('{c}').is_finite()).then(pl.col('{c}'))",
            )
        )


# ---------------------------------------------------------------- events


def _event_schema_problems(path: Path, schema: pl.Schema) -> list[Problem]:
    """Missing columns and wrong types of one event file."""
    out: list[Problem] = []
    for c in ("user_id", "item_id"):
        _check_id_column(path, schema, c, out)
    if "event" not in schema:
        out.append(_missing_column(path, "event", f"string in {{{', '.join(EVENT_TYPES)}}}"))
    elif not _is_string(schema["event"]):
        out.append(
            Problem(
                "error",
                str(path),
                "event",
                f"has type {_type_name(schema['event'])}, expected a string in {{{', '.join(EVENT_TYPES)}}}",
                "map event codes to the names " + ", ".join(EVENT_TYPES),
            )
        )
    if "ts" not in schema:
        out.append(_missing_column(path, "ts", "timestamp[us, UTC]"))
    else:
        dt = schema["ts"]
        if not isinstance(dt, pl.Datetime):
            out.append(
                Problem(
                    "error",
                    str(path),
                    "ts",
                    f"has type {_type_name(dt)}, expected timestamp[us, UTC]",
                    "store ts as a UTC timestamp, e.g. pl.col('ts').str.to_datetime(time_zone='UTC') or "
                    "pl.from_epoch('ts', time_unit='s').dt.replace_time_zone('UTC')",
                )
            )
        elif dt.time_zone is None:
            out.append(
                Problem(
                    "error",
                    str(path),
                    "ts",
                    f"is a naive timestamp ({_type_name(dt)}), expected timestamp[us, UTC]",
                    "attach the time zone: pl.col('ts').dt.replace_time_zone('UTC') if the values are UTC, "
                    "else replace_time_zone('<local zone>') then dt.convert_time_zone('UTC')",
                )
            )
        elif dt.time_zone not in UTC_ZONES:
            out.append(
                Problem(
                    "error",
                    str(path),
                    "ts",
                    f"is in time zone {dt.time_zone} ({_type_name(dt)}), expected timestamp[us, UTC]",
                    "convert it: pl.col('ts').dt.convert_time_zone('UTC')",
                )
            )
    extra = [c for c in schema if c not in EVENT_COLUMNS]
    for c in extra:
        out.append(
            Problem(
                "warning",
                str(path),
                c,
                f"extra column ({_type_name(schema[c])}) is not part of the event contract; ignored",
                "drop it from the event files (or leave it: it is never read)",
            )
        )
    return out


def _scan_events(files: Sequence[Path]) -> pl.LazyFrame:
    """Lazy scan of event files with a valid schema, in contract types."""
    return pl.concat(
        [
            pl.scan_parquet(f).select(
                pl.col("user_id").cast(pl.String),
                pl.col("item_id").cast(pl.String),
                pl.col("event").cast(pl.String),
                pl.col("ts").cast(pl.Datetime("us", "UTC")),
            )
            for f in files
        ],
        how="vertical",
    )


def _duplicate_sample(events: pl.LazyFrame) -> list[str]:
    """A few exact duplicates of a partition, "(user_id, item_id, event, ts)", smallest first."""
    return (
        events.group_by(EVENT_COLUMNS)
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .select(
            pl.format(
                "({}, {}, {}, {})",
                "user_id",
                "item_id",
                "event",
                pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ"),
            )
            .bottom_k(SAMPLE)
            .sort()
        )
        .collect()
        .to_series()
        .to_list()
    )


def _unknown_ids(events: pl.LazyFrame, column: str, known: pl.DataFrame) -> pl.LazyFrame:
    """One row: events whose `column` is not in `known`, and a sorted sample of those ids."""
    return (
        events.select(column)
        .drop_nulls()
        .join(known.lazy(), on=column, how="anti")
        .select(
            pl.len().alias("rows"),
            pl.col(column).unique().bottom_k(SAMPLE).sort().implode().alias("sample"),
        )
    )


def _partition_queries(
    events: pl.LazyFrame, day: date, user_ids: pl.DataFrame | None, item_ids: pl.DataFrame | None
) -> dict[str, pl.LazyFrame]:
    """Lazy aggregate queries of one partition; each collects to a few rows."""
    outside = pl.col("ts").dt.date() != day
    valid_event = pl.col("event").is_in(list(EVENT_TYPES))
    queries = {
        "summary": events.select(
            pl.len().alias("rows"),
            *[pl.col(c).null_count().alias(f"null_{c}") for c in EVENT_COLUMNS],
            outside.sum().alias("outside"),
            # exact duplicates: rows beyond the first of each (user_id, item_id, event, ts)
            (pl.len() - pl.struct(EVENT_COLUMNS).n_unique()).alias("duplicates"),
        ),
        "outside": events.filter(outside).select(pl.col("ts").unique().bottom_k(SAMPLE).sort()),
        "events": events.filter(pl.col("event").is_not_null())
        .group_by("event")
        .agg(pl.len().alias("n"))
        .with_columns(valid=valid_event),
    }
    if user_ids is not None:
        queries["unknown_user_id"] = _unknown_ids(events, "user_id", user_ids)
    if item_ids is not None:
        queries["unknown_item_id"] = _unknown_ids(events, "item_id", item_ids)
    return queries


@dataclass
class _Tally:
    """A row check summed over partitions: rows, a sample and where the rows are."""

    rows: int = 0
    sample: list[Any] = field(default_factory=list)
    places: list[tuple[date, list[Path]]] = field(default_factory=list)

    def add(self, rows: int, sample: Iterable[Any], day: date, files: list[Path]) -> None:
        if not rows:
            return
        self.rows += rows
        self.sample = sorted(set(self.sample) | set(sample))[:SAMPLE]
        self.places.append((day, files))

    def where(self, events_dir: Path) -> tuple[str, str]:
        """(file, suffix): the one file or partition holding the rows, or the events folder."""
        if len(self.places) == 1:
            day, files = self.places[0]
            if len(files) == 1:
                return str(files[0]), ""
            return str(events_dir), f" in partition {day.isoformat()}"
        days = ", ".join(d.isoformat() for d, _ in self.places[:3])
        more = ", ..." if len(self.places) > 3 else ""
        return str(events_dir), f" in {len(self.places)} partitions ({days}{more})"


def _collect_partition(
    files: list[Path],
    day: date,
    users: _Table,
    items: _Table,
    problems: list[Problem],
) -> tuple[dict[str, pl.DataFrame] | None, list[Path]]:
    """Run the aggregate queries of a partition; on a read error, find and report the corrupt files.

    Returns the results (None when no file could be read) and the files they cover.
    """

    def run(fs: list[Path]) -> dict[str, pl.DataFrame]:
        qs = _partition_queries(_scan_events(fs), day, users.ids, items.ids)
        return dict(zip(qs, pl.collect_all(list(qs.values())), strict=True))

    try:
        return run(files), files
    except _READ_ERRORS:
        pass  # some file is corrupt beyond its footer: find which, one file at a time
    good = []
    for f in files:  # the files of one partition, not rows
        try:
            run([f])
        except _READ_ERRORS as err:
            found = _utf8_problems(f, ["user_id", "item_id", "event"]) if _is_utf8_error(err) else []
            problems.extend(found or [_corrupt(f, err)])
            continue
        good.append(f)
    if not good:
        return None, []
    return run(good), good


def _no_partitions(events_dir: Path) -> Problem:
    """The error when the events folder has no dt= partition (or is missing)."""
    if not events_dir.is_dir():
        return Problem(
            "error",
            str(events_dir),
            None,
            "events folder is missing",
            "write events as <data>/events/dt=YYYY-MM-DD/*.parquet",
        )
    return Problem(
        "error",
        str(events_dir),
        None,
        "no event partitions",
        "write events as <data>/events/dt=YYYY-MM-DD/*.parquet (one folder per UTC day)",
    )


def _file_problems(f: Path) -> list[Problem]:
    """Schema problems and the "no rows" warning of one event file (metadata only); raises what
    `_READ_ERRORS` lists when the file cannot be read."""
    schema = pl.read_parquet_schema(f)
    n_rows = pq.read_metadata(f).num_rows
    found = _event_schema_problems(f, schema)
    if n_rows == 0:
        found.append(
            Problem(
                "warning",
                str(f),
                None,
                "no rows",
                "remove the empty event files, or write the events they should hold",
            )
        )
    return found


def _merged_file_problems(
    per_file: Mapping[tuple[str, str | None, str, str], list[str]], events_dir: Path
) -> list[Problem]:
    """One problem per (level, column, message, fix): its file, or the count and first files."""
    out = []
    for (level, column, message, fix), files in per_file.items():
        if len(files) == 1:
            out.append(Problem(level, files[0], column, message, fix))
        else:
            shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
            out.append(
                Problem(level, str(events_dir), column, f"{message} in {len(files)} files ({shown})", fix)
            )
    return out


@dataclass
class _EventScan:
    """The row checks of every event partition, summed day by day (`add`), then reported (`problems`)."""

    events_dir: Path
    tallies: dict[str, _Tally] = field(
        default_factory=lambda: {
            **{k: _Tally() for k in ("outside", "unknown_user_id", "unknown_item_id", "duplicates")},
            **{f"null_{c}": _Tally() for c in EVENT_COLUMNS},
        }
    )
    bad_names: dict[str, int] = field(default_factory=dict)
    bad_places: list[tuple[date, list[Path]]] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES, 0))
    rows_by_day: dict[str, int] = field(default_factory=dict)
    empty_days: list[date] = field(default_factory=list)

    def add(self, res: dict[str, pl.DataFrame], day: date, covered: list[Path]) -> None:
        """Add one partition's results of `_collect_partition`."""
        summary = res["summary"].row(0, named=True)
        self.rows_by_day[day.isoformat()] = summary["rows"]
        for c in EVENT_COLUMNS:
            self.tallies[f"null_{c}"].add(summary[f"null_{c}"], [], day, covered)
        outside = [t.isoformat() for t in res["outside"]["ts"].to_list()]
        self.tallies["outside"].add(summary["outside"], outside, day, covered)
        for key in ("unknown_user_id", "unknown_item_id"):
            if key in res:
                n, sample = res[key].row(0)
                self.tallies[key].add(n, sample, day, covered)
        if summary["duplicates"]:  # rare: the sample is a second query over that partition only
            sample = _duplicate_sample(_scan_events(covered))
            self.tallies["duplicates"].add(summary["duplicates"], sample, day, covered)
        ev = res["events"]
        for name, n in ev.filter(pl.col("valid")).select("event", "n").iter_rows():  # <= 4 rows
            self.by_type[name] += n
        bad = ev.filter(~pl.col("valid"))
        if bad.height:
            self.bad_places.append((day, covered))
            for name, n in bad.select("event", "n").iter_rows():  # distinct bad names, not events
                self.bad_names[name] = self.bad_names.get(name, 0) + n

    @property
    def total(self) -> int:
        return sum(self.rows_by_day.values())

    def _problem(
        self, key: str, level: str, column: str | None, message: Callable[[int, str], str], fix: str
    ) -> Problem | None:
        """The problem of tally `key` when it counted rows; `message(rows, where)` says what is wrong."""
        t = self.tallies[key]
        if not t.rows:
            return None
        file, where = t.where(self.events_dir)
        return Problem(level, file, column, message(t.rows, where), fix)

    def problems(self) -> list[Problem]:
        """Empty partitions, nulls, unknown ids, duplicates, dates outside their partition, bad names."""
        out: list[Problem | None] = []
        if self.empty_days:
            days = ", ".join(d.isoformat() for d in self.empty_days[:3]) + (
                ", ..." if len(self.empty_days) > 3 else ""
            )
            out.append(
                Problem(
                    "warning",
                    str(self.events_dir),
                    None,
                    f"partitions without a Parquet file: {len(self.empty_days)} ({days})",
                    "write the events of those days or remove the empty folders",
                )
            )
        total = self.total
        for c in EVENT_COLUMNS:
            out.append(
                self._problem(
                    f"null_{c}", "error", c, lambda n, where: f"{n} null values out of {total} events{where}",
                    f"drop the events with a null {c} or fill it",
                )
            )  # fmt: skip
        for key, table, fix in (
            ("unknown_user_id", "users", "add the users to users.parquet or drop their events"),
            ("unknown_item_id", "items", "add the items to items.parquet or drop their events"),
        ):
            column = key.removeprefix("unknown_")
            sample = _sample_text(self.tallies[key].sample)
            out.append(
                self._problem(
                    key, "error", column,
                    lambda n, where, column=column, table=table, sample=sample: (
                        f"{n} events{where} have {column} values absent from {table}.parquet, e.g. {sample}"
                    ),
                    fix,
                )
            )  # fmt: skip
        dup_sample = _sample_text(self.tallies["duplicates"].sample)
        out.append(
            self._problem(
                "duplicates", "warning", None,
                lambda n, where: (
                    f"{n} exact duplicate events{where} (same user_id, item_id, event and ts), e.g. "
                    f"{dup_sample}; the pipeline keeps one of each"
                ),
                "drop them where the events are exported (e.g. .unique())",
            )
        )  # fmt: skip
        ts_sample = _sample_text(self.tallies["outside"].sample)
        out.append(
            self._problem(
                "outside", "error", "ts",
                lambda n, where: (
                    f"{n} events{where} have a ts whose UTC date is not their dt= partition, e.g. {ts_sample}"
                ),
                "write each event to the partition of its UTC date (dt = ts.dt.date() in UTC)",
            )
        )  # fmt: skip
        out.append(self._bad_names_problem())
        return [p for p in out if p is not None]

    def _bad_names_problem(self) -> Problem | None:
        if not self.bad_names:
            return None
        tally = _Tally(rows=sum(self.bad_names.values()), places=self.bad_places)
        file, where = tally.where(self.events_dir)
        names = sorted(self.bad_names.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{n!r} ({k})" for n, k in names[:SAMPLE]) + (
            ", ..." if len(names) > SAMPLE else ""
        )
        return Problem(
            "error",
            file,
            "event",
            f"{tally.rows} events{where} have an unknown event name: {shown}",
            "map them to " + ", ".join(EVENT_TYPES) + " (lower case) or drop them",
        )


def _run_date_problem(
    event_files: Mapping[date, Sequence[Path]],
    rows_by_day: Mapping[str, int],
    run_date: date,
    events_dir: Path,
) -> Problem | None:
    """The error when the run date has no events (a partition whose files could not be read is reported
    elsewhere)."""
    if event_files.get(run_date) and rows_by_day.get(run_date.isoformat(), -1) != 0:
        return None
    why = "its partition holds no rows" if event_files.get(run_date) else "there is no partition of that day"
    return Problem(
        "error",
        str(events_dir),
        None,
        f"no events for the run date {run_date} ({why}; events span {min(event_files).isoformat()} to "
        f"{max(event_files).isoformat()})",
        "pass a run date that has events, or add the events of that day",
    )


def _check_events(
    event_files: Mapping[date, Sequence[Path]],
    events_dir: Path,
    users: _Table,
    items: _Table,
    problems: list[Problem],
    stats: dict[str, Any],
    run_date: date | None = None,
) -> None:
    """Check every event partition (schema from metadata, then one query per day for the row checks),
    appending to `problems` and filling the events' `stats`."""
    if not event_files:
        problems.append(_no_partitions(events_dir))
        return
    per_file: dict[tuple[str, str | None, str, str], list[str]] = {}  # merges one problem over files
    scan = _EventScan(events_dir)
    for day in sorted(event_files):
        files = [Path(f) for f in event_files[day]]
        if not files:
            scan.empty_days.append(day)
            continue
        usable = []
        for f in files:
            try:
                found = _file_problems(f)
            except _READ_ERRORS as err:
                problems.append(_corrupt(f, err))
                continue
            for p in found:
                per_file.setdefault((p.level, p.column, p.message, p.fix), []).append(p.file)
            if not any(p.level == "error" for p in found):
                usable.append(f)
        if not usable:
            continue
        res, covered = _collect_partition(usable, day, users, items, problems)
        if res is not None:
            scan.add(res, day, covered)
    problems.extend(_merged_file_problems(per_file, events_dir))
    problems.extend(scan.problems())
    stats["duplicate_events"] = scan.tallies["duplicates"].rows
    stats["events"] = scan.total
    stats["partitions"] = len(event_files)
    stats["first_dt"] = min(event_files).isoformat()
    stats["last_dt"] = max(event_files).isoformat()
    stats["events_by_partition"] = scan.rows_by_day
    stats["events_by_type"] = scan.by_type
    if run_date is not None and (p := _run_date_problem(event_files, scan.rows_by_day, run_date, events_dir)):
        problems.append(p)


# ---------------------------------------------------------------- entry point


def validate_inputs(
    users_file: Path,
    items_file: Path,
    event_files: Mapping[date, Sequence[Path]],
    data_root: Path,
    columns: ColumnsConfig,
    stray_event_dirs: Sequence[Path] = (),
    events_dir: Path | None = None,
    *,
    image_check: ImageCheck | None = None,
    run_date: date | None = None,
) -> ValidationReport:
    """Check the inputs against the contract without modifying them.

    users_file, items_file: the two tables. event_files: the Parquet files of each event partition, by
    the partition's date. data_root: the folder image_path values are relative to. columns: the declared
    attribute columns (None lists are inferred). stray_event_dirs: entries of the events folder that are
    not partitions (reported as warnings). events_dir: the events folder, named in messages about
    several partitions and checked for existence when there is no partition (default: data_root).
    image_check: which image paths may be opened (`pipelines.io.input_path_rejections` bound to the data
    root and the size cap); None skips the image checks. run_date: a day that must have events (the day
    a nightly run is for), or None.

    Every check yields at most one `Problem`. Event files with a schema error are left out of the row
    checks; events are checked one partition at a time with lazy polars queries. Unknown-id checks run
    only when users/items could be read. Every string column the pipeline reads (ids, event, title,
    image_path, categorical attributes) must be valid UTF-8; float attributes must be finite.
    """
    events_dir = Path(events_dir) if events_dir is not None else Path(data_root)
    problems: list[Problem] = []
    stats: dict[str, Any] = {}

    users = _check_table(Path(users_file), "users", "user_id", problems, stats)
    items = _check_table(Path(items_file), "items", "item_id", problems, stats)

    resolved: dict[str, list[str] | None] = {}
    for side, table, path, reserved in (
        ("user", users, users_file, ("user_id",)),
        ("item", items, items_file, ("item_id", *ITEM_TEXT_COLUMNS)),
    ):
        declared_cat = getattr(columns, f"{side}_categorical")
        declared_num = getattr(columns, f"{side}_numeric")
        if table.schema is None:
            resolved[f"{side}_categorical"], resolved[f"{side}_numeric"] = declared_cat, declared_num
            continue
        cat, num, notes = _resolve_side(side, table.schema, reserved, declared_cat, declared_num)
        resolved[f"{side}_categorical"], resolved[f"{side}_numeric"] = cat, num
        problems.extend(Problem(n.level, str(path), n.column, n.message, n.fix) for n in notes)
        if table.ids is not None:  # the rows could be read: values of the attribute columns in use
            texts = [c for c in cat if _is_string(table.schema[c])]
            problems.extend(_utf8_problems(Path(path), texts))
            id_col = reserved[0]
            _check_numeric(Path(path), id_col, num, table.schema, problems)

    if (
        image_check is not None
        and items.schema is not None
        and "image_path" in items.schema
        and _is_string(items.schema["image_path"])
        and not items.corrupt
        and "image_path" not in items.bad_text
    ):
        _check_images(Path(items_file), image_check, problems, stats)

    _check_events(event_files, events_dir, users, items, problems, stats, run_date)

    if stray_event_dirs:
        names = ", ".join(Path(p).name for p in stray_event_dirs)
        problems.append(
            Problem(
                "warning",
                str(events_dir),
                None,
                f"ignored {len(stray_event_dirs)} entries that are not dt=YYYY-MM-DD partitions: {names}",
                "move them out of the events folder or rename them dt=YYYY-MM-DD",
            )
        )

    report = ValidationReport(tuple(problems), ColumnsConfig(**resolved), stats)
    log.debug(
        "validated %s partitions of events: %d errors, %d warnings",
        stats.get("partitions", 0),
        len(report.errors),
        len(report.warnings),
    )
    return report
