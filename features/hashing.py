"""mmh3 hash bucketing of categorical fields (the bucket contract is in docs/hashing.md).

A categorical value `v` of a field with `buckets` rows goes to

    bucket(v) = 0                                                   if v is null / "" / NaN
              = 1 + murmur3_x86_32(canonical_bytes(v), seed) % (buckets - 1)   otherwise

where murmur3_x86_32 returns an unsigned 32-bit integer (`mmh3.hash(..., signed=False)`). Bucket 0
(`NULL_BUCKET`) is reserved per field for missing values, so a field of `buckets` rows spends
`buckets - 1` rows on hashed values. All fields share one embedding table; field f owns rows
`[offsets[f], offsets[f] + buckets[f])` (see `Vocab.offsets`).

The vectorised path (`hash_series`, `bucketize`) dictionary-encodes each column (distinct values plus
one integer code per row: a cast to Categorical with a mapping of its own for String, the physical codes
of Categorical / Enum, a dense lookup table or a join for integers), hashes only the distinct values with
mmh3 and gathers the buckets back by code with pyarrow's `take`; `bucketize` runs its columns on a thread
pool (by default one thread per usable core), since all of this except the mmh3 calls releases the GIL.
`bucket_of` is the scalar reference it must agree with.
`pl.Expr.hash` is never used: its output is not stable across polars versions.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal

import mmh3
import numpy as np
import polars as pl
import pyarrow as pa

from features.config import FeaturesConfig

log = logging.getLogger(__name__)

NULL_BUCKET = 0  # reserved per field for null/empty values
CROSS_SEPARATOR = "\x1f"  # ASCII unit separator between the two canonical forms of a crossed pair
HASH_NAME = "murmur3_x86_32/unsigned"  # recorded in Vocab.to_json so readers can check the contract
_UINT32_MAX = 2**32 - 1
# A dense lookup table indexed by (value - min) is used for integer columns whose value range is at most
# this many times the number of rows (plus a constant); wider ranges fall back to a hash join.
_LUT_RANGE_FACTOR = 4
_LUT_RANGE_SLACK = 1 << 16
# Frames shorter than this are bucketized serially by default: a thread pool's start-up would cost more.
_SERIAL_BELOW_ROWS = 100_000
# Distinct values turned into Python bytes objects and hashed at a time (see _bucket_texts).
_MMH3_SLICE = 16_384

Side = Literal["user", "item", "cross"]


# ---------------------------------------------------------------- canonical form


def _canonical_float(x: float) -> str | None:
    """Canonical text of a float: None for NaN, shortest round-trip digits written without exponent."""
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = np.format_float_positional(x, unique=True, trim="-")
    return "0" if text == "-0" else text


def _canonical_str(value: object) -> str | None:
    """Canonical text of a scalar, or None when the value is missing (None, "", NaN)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _canonical_float(float(value))
    raise TypeError(
        f"canonical_bytes: values of type {type(value).__name__} ({value!r}) have no canonical form; "
        "fix: cast the column to String (or to an integer) before hashing"
    )


def canonical_bytes(value: object) -> bytes:
    """The exact bytes that are hashed for one categorical value (docs/hashing.md, "Canonical bytes").

    - str: its UTF-8 encoding, unchanged (no trimming, case folding or Unicode normalisation);
    - bool (checked before int): b"true" / b"false" (what polars, Java, Go and SQL print);
    - int (any width, numpy included): ASCII decimal, "-" for negatives, no leading zeros or "+";
      so 42, "42" and 42.0 share a bucket and a column may move between Int64 and String safely;
    - float: the shortest decimal that round-trips to the same IEEE-754 double, written positionally
      (no exponent) with no trailing ".0": 2.5 -> b"2.5", 3.0 -> b"3", -0.0 -> b"0", 1e-05 -> b"0.00001",
      inf -> b"inf";
    - a crossed pair (tuple of two values): canonical(a) + b"\\x1f" + canonical(b).

    Missing values (None, "", NaN, or a pair with a missing side) have no canonical bytes: they raise
    ValueError here and go to NULL_BUCKET in `bucket_of`.

    >>> canonical_bytes(42), canonical_bytes(True), canonical_bytes(3.0), canonical_bytes(("F", 7))
    (b'42', b'true', b'3', b'F\\x1f7')
    """
    text = _canonical_text(value)
    if text is None:
        raise ValueError(f"canonical_bytes: {value!r} is a missing value; it has no bytes (bucket 0)")
    return text.encode("utf-8")


def _canonical_text(value: object) -> str | None:
    if isinstance(value, tuple):
        if len(value) != 2:
            raise TypeError(f"canonical_bytes: a crossed value must be a pair, got {len(value)} items")
        left, right = _canonical_str(value[0]), _canonical_str(value[1])
        if left is None or right is None:
            return None
        return left + CROSS_SEPARATOR + right
    return _canonical_str(value)


def _check_hash_args(buckets: int, seed: int) -> None:
    if buckets < 2:
        raise ValueError(f"buckets must be >= 2 (bucket 0 is reserved for null), got {buckets}")
    if not 0 <= seed <= _UINT32_MAX:
        raise ValueError(f"hash seed must be in [0, 2**32), got {seed}; fix: set features.hash_seed")


def bucket_of(value: object, buckets: int, seed: int) -> int:
    """Scalar reference bucket of one value (or crossed pair): 0 for missing, else in [1, buckets).

    >>> bucket_of("hello", 10, 0)  # murmur3_x86_32(b"hello", 0) = 613153351; 613153351 % 9 = 1
    2
    >>> bucket_of(None, 10, 0), bucket_of("", 10, 0)
    (0, 0)
    """
    _check_hash_args(buckets, seed)
    text = _canonical_text(value)
    if text is None:
        return NULL_BUCKET
    return 1 + mmh3.hash(text.encode("utf-8"), seed, signed=False) % (buckets - 1)


# ---------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class FieldSpec:
    """One hashed field: its name, the column(s) it is hashed from, its bucket count and its side.

    `buckets` includes the null bucket 0. A cross has two sources and side "cross".
    """

    name: str
    sources: tuple[str, ...]
    buckets: int
    side: Side

    def __post_init__(self) -> None:
        if self.buckets < 2:
            raise ValueError(f"field {self.name!r}: buckets must be >= 2 (0 is the null bucket)")
        if self.side not in ("user", "item", "cross"):
            raise ValueError(f"field {self.name!r}: side must be user, item or cross, got {self.side!r}")
        want = 2 if self.side == "cross" else 1
        if len(self.sources) != want:
            raise ValueError(
                f"field {self.name!r} (side {self.side}) needs {want} source column(s), got {self.sources}"
            )


@dataclass(frozen=True)
class Vocab:
    """The hashed fields of a model, in embedding-table order (one table, one offset per field).

    >>> v = Vocab((FieldSpec("user_id", ("user_id",), 5, "user"), FieldSpec("item_id", ("item_id",), 3, "item")))
    >>> v.vocab_sizes(), v.offsets(), v.total()
    ({'user_id': 5, 'item_id': 3}, {'user_id': 0, 'item_id': 5}, 8)
    """

    fields: tuple[FieldSpec, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Vocab: field names {dupes} appear more than once; fix: rename the columns")

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def item_id_field(self) -> FieldSpec | None:
        """The item field hashed from item_id alone (its buckets fill the `hist` lists), or None when there is
        not exactly one."""
        hits = [f for f in self.fields if f.side == "item" and tuple(f.sources) == ("item_id",)]
        return hits[0] if len(hits) == 1 else None

    def vocab_sizes(self) -> dict[str, int]:
        """Rows of each field in the shared table, null bucket included (== FieldLayout.sizes)."""
        return {f.name: f.buckets for f in self.fields}

    def offsets(self) -> dict[str, int]:
        """First row of each field in the shared table (cumulative sizes in field order)."""
        out, acc = {}, 0
        for f in self.fields:
            out[f.name] = acc
            acc += f.buckets
        return out

    def total(self) -> int:
        return sum(f.buckets for f in self.fields)

    def side(self, side: Side) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.side == side)

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": HASH_NAME,
            "fields": [
                {"name": f.name, "sources": list(f.sources), "buckets": f.buckets, "side": f.side}
                for f in self.fields
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Vocab:
        if d.get("hash", HASH_NAME) != HASH_NAME:
            raise ValueError(
                f"vocab was built with hash {d.get('hash')!r}, this code hashes with {HASH_NAME!r}; "
                "fix: rebuild the features and models with this version"
            )
        try:
            return cls(
                tuple(
                    FieldSpec(str(f["name"]), tuple(f["sources"]), int(f["buckets"]), f["side"])
                    for f in d["fields"]
                )
            )
        except KeyError as err:
            raise ValueError(f"vocab json lacks key {err}; fix: write it with Vocab.to_json") from None


def cross_name(left: str, right: str) -> str:
    return f"{left}_x_{right}"


def build_vocab(user_categorical: list[str], item_categorical: list[str], cfg: FeaturesConfig) -> Vocab:
    """Fields in table order: user_id, user attributes, item_id, item attributes, crosses.

    Attribute buckets come from `cfg.buckets` (else `cfg.default_buckets`), ids from `cfg.id_buckets`,
    crosses from `cfg.cross_buckets`. A cross naming a column that is not among the attributes is skipped
    with a warning; a repeated cross is kept once.
    """
    user_attrs = [c for c in dict.fromkeys(user_categorical) if c != "user_id"]
    item_attrs = [c for c in dict.fromkeys(item_categorical) if c != "item_id"]
    both = sorted(set(user_attrs) & set(item_attrs))
    if both:
        raise ValueError(
            f"columns {both} are categorical in both users.parquet and items.parquet; "
            "fix: rename one side so each field name is unique"
        )

    def attr(name: str, side: Side) -> FieldSpec:
        return FieldSpec(name, (name,), cfg.buckets.get(name, cfg.default_buckets), side)

    fields = [FieldSpec("user_id", ("user_id",), cfg.id_buckets.get("user_id", cfg.default_buckets), "user")]
    fields += [attr(c, "user") for c in user_attrs]
    fields.append(
        FieldSpec("item_id", ("item_id",), cfg.id_buckets.get("item_id", cfg.default_buckets), "item")
    )
    fields += [attr(c, "item") for c in item_attrs]
    present = set(user_attrs) | set(item_attrs)
    seen: set[tuple[str, str]] = set()
    for left, right in cfg.crosses:
        missing = [c for c in (left, right) if c not in present]
        if missing:
            log.warning(
                "features.crosses: skipping cross (%s, %s): %s not among the categorical attributes",
                left,
                right,
                missing,
            )
            continue
        if (left, right) in seen:
            continue
        seen.add((left, right))
        fields.append(FieldSpec(cross_name(left, right), (left, right), cfg.cross_buckets, "cross"))
    return Vocab(tuple(fields))


def bucket_column(name: str) -> str:
    return f"bkt_{name}"


# ---------------------------------------------------------------- vectorised hashing


@dataclass(frozen=True)
class _Encoded:
    """A column as integer codes into a table whose rows are distinct canonical texts.

    codes: [n] integer in [0, size); present: [k] int64 table rows that get hashed; texts: [k] String,
    the canonical text of each present row (null or "" for a missing value). Rows not in `present`
    (nulls point at one of them) get NULL_BUCKET.
    """

    codes: np.ndarray
    size: int
    present: np.ndarray
    texts: pl.Series


def _index_keys(keys: np.ndarray, span: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Turn integer keys into table codes.

    keys: [n] int64 in [0, span], where `span` marks a null. Returns codes [n], table size, the present
    table rows [k] and the key of each [k]. A narrow key range is used as the table itself (codes ==
    keys); a wide one (more than ~4 keys per row) is dictionary-encoded with a hash join.
    """
    n = keys.size
    if span <= _LUT_RANGE_FACTOR * n + _LUT_RANGE_SLACK:
        if span <= max(1024, n // 16):  # hashing every key is cheaper than finding the present ones
            present = np.arange(span, dtype=np.int64)
        else:
            seen = np.zeros(span + 1, bool)  # a bool scatter: ~3x cheaper than a bincount of the keys
            seen[keys] = True
            present = np.flatnonzero(seen[:span])
        return keys, span + 1, present, present
    series = pl.Series("v", keys)
    distinct = series.filter(series < span).unique().sort()
    k = distinct.len()
    codes = _codes_by_join(series, distinct)
    codes[codes < 0] = k  # nulls
    return codes, k + 1, np.arange(k, dtype=np.int64), distinct.to_numpy()


def _codes_by_join(values: pl.Series, distinct: pl.Series) -> np.ndarray:
    """values: [n] any dtype; distinct: [k] same dtype. Returns [n] int64 index into distinct, -1 if absent."""
    table = pl.DataFrame({"v": distinct, "code": np.arange(distinct.len(), dtype=np.int64)})
    joined = pl.DataFrame({"v": values}).join(table, on="v", how="left", maintain_order="left")
    return joined["code"].fill_null(-1).to_numpy(writable=True)


def _from_categories(values: pl.Series, categories: pl.Series) -> _Encoded:
    """values: [n] Categorical/Enum/UInt8 whose physical code c means categories[c]."""
    span = categories.len()
    physical = values.to_physical()
    keys = (physical.fill_null(span) if physical.null_count() else physical).to_numpy()
    codes, size, present, present_keys = _index_keys(keys, span)
    return _Encoded(codes, size, present, categories.cast(pl.String).gather(present_keys))


def _from_strings(values: pl.Series) -> _Encoded:
    """values: [n] String. Dictionary-encodes them with polars' String -> Categorical cast.

    The cast is into a fresh category mapping of its own (`pl.Categories.random()`), so the codes run
    0..k-1 over this column's distinct values only and the process-wide mapping does not grow with every
    column bucketized. It is a hash-table probe per row, the one per-row step of String input: measured
    on 5M-row columns (4 to 5,000 distinct) 50-55 ms of CPU against 58-72 ms for pyarrow's
    `dictionary_encode`, and it releases the GIL, so `bucketize` encodes String columns side by side.
    """
    cat = values.cast(pl.Categorical(pl.Categories.random()))
    return _from_categories(cat, cat.dtype.categories.to_series())


def _from_distinct(values: pl.Series, distinct: pl.Series, texts: pl.Series) -> _Encoded:
    """values: [n]; distinct: [k] non-null distinct values with canonical texts [k]; joins codes back."""
    k = distinct.len()
    codes = _codes_by_join(values, distinct)
    codes[codes < 0] = k
    return _Encoded(codes, k + 1, np.arange(k, dtype=np.int64), texts)


def _int_keys(values: pl.Series, base: int, span: int) -> np.ndarray:
    """values: [n] integer in [base, base + span) or null. Returns [n] integer keys value - base, span for null.

    Without nulls the column's own buffer is used (no copy) and only a non-zero `base` costs a pass.
    """
    if values.null_count():
        wide = values.cast(pl.Int64)
        return (wide - base if base else wide).fill_null(span).to_numpy()
    keys = values.to_numpy()
    if base or keys.dtype == np.uint64:  # np.bincount refuses uint64; every value is < 2**62 here
        # subtract in int64: in the column's own width (say int8) value - base could wrap around
        return np.subtract(keys, base, dtype=np.int64)
    return keys


def _encode(values: pl.Series) -> _Encoded:
    """Dictionary-encode a column of String / Categorical / Enum / integer / Boolean / float / Null values."""
    dtype = values.dtype
    if dtype == pl.Null:
        empty = np.zeros(0, np.int64)
        return _Encoded(np.zeros(values.len(), np.int64), 1, empty, pl.Series("v", [], dtype=pl.String))
    if dtype == pl.String:
        return _from_strings(values)
    if isinstance(dtype, pl.Categorical):
        return _from_categories(values, dtype.categories.to_series())
    if isinstance(dtype, pl.Enum):
        return _from_categories(values, pl.Series("v", dtype.categories))
    if dtype == pl.Boolean:
        return _from_categories(values.cast(pl.UInt8), pl.Series("v", ["false", "true"]))
    if dtype.is_integer():
        lo, hi = values.min(), values.max()
        if lo is None:
            return _encode(pl.Series(values.name, [None] * values.len(), dtype=pl.Null))
        if -(2**62) < lo and hi < 2**62:  # value - base cannot overflow int64
            # Non-negative values with a narrow range (ids from 0 or 1) are table rows as they are: no
            # subtraction pass over the rows is needed; otherwise rows are keyed by value - lo.
            base = 0 if lo >= 0 and hi < _LUT_RANGE_FACTOR * values.len() + _LUT_RANGE_SLACK else lo
            span = hi - base + 1
            keys = _int_keys(values, base, span)
            codes, size, present, present_keys = _index_keys(keys, span)
            return _Encoded(codes, size, present, pl.Series("v", present_keys + base).cast(pl.String))
        distinct = values.drop_nulls().unique().sort()
        return _from_distinct(values, distinct, distinct.cast(pl.String))
    if dtype.is_float():
        values = values.cast(pl.Float64).fill_nan(None)
        distinct = values.drop_nulls().unique().sort()
        # one Python call per DISTINCT value (never per row): floats in categorical columns are rare
        texts = pl.Series("v", [_canonical_float(x) for x in distinct.to_list()], dtype=pl.String)
        return _from_distinct(values, distinct, texts)
    raise TypeError(
        f"column {values.name!r} has dtype {dtype}, which has no canonical form for hashing; "
        "fix: cast it to String (or an integer type) before bucketize"
    )


def _missing(texts: pl.Series) -> np.ndarray:
    """texts: [k] String. Returns [k] bool, True where the text is null or "" (a missing value)."""
    return (texts.is_null() | (texts == "")).fill_null(True).to_numpy()


def _bucket_texts(texts: pl.Series, buckets: int, seed: int) -> np.ndarray:
    """texts: [k] String canonical texts (null or "" = missing). Returns [k] int32 buckets."""
    if texts.null_count() == 0 and not (texts.str.len_bytes() == 0).any():
        keep, missing = texts, None  # the common case (ids, clean attributes): no mask passes
    else:
        missing = _missing(texts)
        keep = texts.filter(pl.Series(~missing))
    # one mmh3 call per distinct value, over its UTF-8 bytes (the canonical bytes): polars hands a Binary
    # column to Python as bytes ~30% faster than a String column as str, and map() over the list keeps the
    # loop in C (measured faster than a comprehension). The bytes objects are made a slice at a time: the
    # slice's objects stay in cache and their memory is reused by the next slice (784k ids at once: 55 ms
    # and ~9k page faults; by 16k: 45 ms, none)
    raw = keep.cast(pl.Binary)
    hashed = np.empty(raw.len(), np.int64)
    for start in range(0, raw.len(), _MMH3_SLICE):
        part = raw.slice(start, _MMH3_SLICE).to_list()
        hashed[start : start + len(part)] = np.fromiter(
            map(mmh3.hash, part, repeat(seed), repeat(False)), dtype=np.int64, count=len(part)
        )
    bkt = (hashed % (buckets - 1) + 1).astype(np.int32)
    if missing is None:
        return bkt
    out = np.zeros(texts.len(), np.int32)
    out[~missing] = bkt
    return out


def _gather(enc: _Encoded, buckets: int, seed: int, name: str) -> pl.Series:
    table = np.zeros(enc.size, np.int32)  # rows not present (nulls among them) stay NULL_BUCKET
    table[enc.present] = _bucket_texts(enc.texts, buckets, seed)
    # pyarrow's take releases the GIL and measured faster than numpy fancy indexing by int32 codes
    return pl.Series(name, pa.array(table).take(pa.array(enc.codes)))


def hash_series(values: pl.Series, buckets: int, seed: int) -> pl.Series:
    """Bucket every value of a column: [n] any supported dtype -> [n] Int32 in [0, buckets).

    Equal to `bucket_of(v, buckets, seed)` per value. Only the distinct values are hashed with mmh3;
    the buckets are gathered back through integer codes. Supported dtypes: String, Categorical, Enum,
    integers, Boolean, floats, Null.

    >>> hash_series(pl.Series(["hello", None, "", "hello"]), 10, 0).to_list()
    [2, 0, 0, 2]
    """
    _check_hash_args(buckets, seed)
    return _gather(_encode(values), buckets, seed, values.name)


def hash_cross(left: pl.Series, right: pl.Series, buckets: int, seed: int) -> pl.Series:
    """Bucket crossed pairs: left, right [n] -> [n] Int32, equal to `bucket_of((l, r), buckets, seed)`.

    A pair with a missing side goes to bucket 0. Only distinct pairs are hashed.
    """
    _check_hash_args(buckets, seed)
    if left.len() != right.len():
        raise ValueError(f"hash_cross: {left.name!r} has {left.len()} rows, {right.name!r} {right.len()}")
    return _cross(_encode(left), _encode(right), buckets, seed, cross_name(left.name, right.name))


def _cross(left: _Encoded, right: _Encoded, buckets: int, seed: int, name: str) -> pl.Series:
    """left, right: the two encoded sides of [n] rows. Returns [n] Int32 buckets of the pairs."""
    sides = []
    for enc in (left, right):
        ok = np.zeros(enc.size, bool)  # [size] table rows holding a non-missing text
        ok[enc.present[~_missing(enc.texts)]] = True
        text_of_row = pl.Series("t", [None] * enc.size, dtype=pl.String).scatter(enc.present, enc.texts)
        sides.append((enc.codes.astype(np.int64), ok, text_of_row, enc.size))
    (cl, ok_l, text_l, size_l), (cr, ok_r, text_r, size_r) = sides
    span = size_l * size_r
    keys = np.where(ok_l[cl] & ok_r[cr], cl * size_r + cr, span)  # [n] pair key; span = missing pair
    codes, size, present, present_keys = _index_keys(keys, span)
    ok_pair = ok_l[present_keys // size_r] & ok_r[present_keys % size_r]
    present, present_keys = present[ok_pair], present_keys[ok_pair]  # drop never-seen missing pairs
    halves = pl.DataFrame(
        {"l": text_l.gather(present_keys // size_r), "r": text_r.gather(present_keys % size_r)}
    )
    texts = halves.select(pl.concat_str(["l", pl.lit(CROSS_SEPARATOR), "r"]).alias("t"))["t"]
    return _gather(_Encoded(codes, size, present, texts), buckets, seed, name)


def strings_as_categorical(schema: pl.Schema, names: Sequence[str]) -> list[pl.Expr]:
    """The columns `names` of a table with `schema`, String ones cast to Categorical (others as they are).

    For an attribute table (users, items) that is joined onto many rows before `bucketize`: as Categorical
    the attributes travel through the join as integer codes, and bucketize reads the codes instead of
    dictionary-encoding every joined row's strings (a hash-table probe per row). The cast costs one pass
    over the table, and the buckets are the same: bucketize hashes a Categorical's string values.
    """
    return [pl.col(c).cast(pl.Categorical) if schema[c] == pl.String else pl.col(c) for c in names]


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def bucketize(
    df: pl.DataFrame, fields: Sequence[FieldSpec], seed: int, *, threads: int | None = None
) -> pl.DataFrame:
    """Add one Int32 column `bkt_<field>` per field (crosses from their two sources); keep the others.

    df: [n rows] with every source column of `fields`. Values are bucketed per `bucket_of`.
    threads: columns encoded and fields bucketized at once on a thread pool; None (the default) uses the
    usable cores (`usable_cores()`), capped at the number of source columns, and runs serially for frames
    under 100,000 rows; 1 runs everything one after another. The buckets do not depend on it. Each source
    column is encoded once, however many fields use it.
    """
    missing = sorted({s for f in fields for s in f.sources if s not in df.columns})
    if missing:
        raise ValueError(
            f"bucketize: columns {missing} are missing from the frame (has {df.columns}); "
            "fix: join the user/item attributes first or drop those fields from the vocab"
        )
    if threads is None:
        threads = 1 if df.height < _SERIAL_BELOW_ROWS else usable_cores()
    if threads < 1:
        raise ValueError(
            f"bucketize: threads must be >= 1, got {threads}; fix: pass threads=1 to run serially"
        )
    _check_hash_args(2, seed)
    # each source column is encoded once, however many fields (a column and its crosses) read it
    sources = list(dict.fromkeys(s for f in fields for s in f.sources))

    singles = {s: [f for f in fields if f.sources == (s,)] for s in sources}
    crosses = [f for f in fields if len(f.sources) == 2]

    def source(s: str) -> tuple[_Encoded, list[pl.Series]]:
        """Encode one source column and gather its own field(s) in the same task."""
        enc = _encode(df[s])
        return enc, [_gather(enc, f.buckets, seed, bucket_column(f.name)) for f in singles[s]]

    def cross(f: FieldSpec, encoded: dict[str, _Encoded]) -> pl.Series:
        left, right = f.sources
        return _cross(encoded[left], encoded[right], f.buckets, seed, bucket_column(f.name))

    # polars and pyarrow release the GIL, the mmh3 calls hold it: on threads, columns run side by side, so
    # one column's encoding and gather overlap another's mmh3 loop. A task never waits on another (a
    # column's gather runs in the task that encoded it; crosses start once every column is encoded), so
    # no worker sits idle while work is queued.
    def run(each: Callable) -> tuple[dict[str, tuple[_Encoded, list[pl.Series]]], list[pl.Series]]:
        done = dict(zip(sources, each(source, sources), strict=True))
        encoded = {s: enc for s, (enc, _) in done.items()}
        return done, list(each(lambda f: cross(f, encoded), crosses))

    workers = min(len(sources), threads)
    if workers <= 1:
        done, crossed = run(map)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done, crossed = run(pool.map)
    columns = {c.name: c for _, cols in done.values() for c in cols} | {c.name: c for c in crossed}
    return df.with_columns([columns[bucket_column(f.name)] for f in fields])


def collision_report(df: pl.DataFrame, fields: Sequence[FieldSpec]) -> dict[str, dict[str, float | int]]:
    """Per field: how many distinct values share buckets, measured on a bucketized frame.

    Returns {field: {"distinct": non-missing distinct values (pairs for crosses), "used": distinct
    non-null buckets they occupy, "colliding": distinct - used, "buckets": bucket count incl. null,
    "expected_colliding": distinct - E[used] under uniform hashing, m(1 - (1 - 1/m)^d) with m = buckets-1}}.
    """
    report: dict[str, dict[str, float | int]] = {}
    for f in fields:
        col = bucket_column(f.name)
        if col not in df.columns:
            raise ValueError(f"collision_report: column {col!r} is missing; fix: run bucketize first")
        key = pl.struct(list(f.sources)) if len(f.sources) == 2 else pl.col(f.sources[0])
        stats = (
            df.lazy()
            .filter(pl.col(col) != NULL_BUCKET)
            .select(key.n_unique().alias("distinct"), pl.col(col).n_unique().alias("used"))
        )
        row = stats.collect().row(0)
        distinct, used = int(row[0]), int(row[1])
        m = f.buckets - 1
        expected_used = m * (1.0 - (1.0 - 1.0 / m) ** distinct)
        report[f.name] = {
            "distinct": distinct,
            "used": used,
            "colliding": distinct - used,
            "buckets": f.buckets,
            "expected_colliding": distinct - expected_used,
        }
    return report
