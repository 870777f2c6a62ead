"""Tests of features.hashing: the bucket contract, the vectorised path and the vocabulary."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import mmh3
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import FeaturesConfig
from features.hashing import (
    NULL_BUCKET,
    FieldSpec,
    Vocab,
    bucket_column,
    bucket_of,
    bucketize,
    build_vocab,
    canonical_bytes,
    collision_report,
    hash_cross,
    hash_series,
    strings_as_categorical,
)

# ---------------------------------------------------------------- golden values


def test_mmh3_is_murmur3_x86_32_reference_vectors() -> None:
    # published MurmurHash3_x86_32 test vectors (SMHasher-verified values quoted in many ports) and the
    # examples of the mmh3 README ("foo" -> -156908512 signed, 4138058784 unsigned; seed 42 -> -1322301282)
    assert mmh3.hash(b"hello", 0, signed=False) == 0x248BFA47 == 613153351
    assert mmh3.hash(b"", 1, signed=False) == 0x514E28B7
    assert mmh3.hash(b"", 0xFFFFFFFF, signed=False) == 0x81F16F39
    assert mmh3.hash(b"\0\0\0\0", 0, signed=False) == 0x2362F9DE
    assert mmh3.hash(b"aaaa", 0x9747B28C, signed=False) == 0x5A97808A
    assert mmh3.hash(b"Hello, world!", 0x9747B28C, signed=False) == 0x24884CBA
    assert mmh3.hash(b"foo", 0, signed=False) == 4138058784
    assert mmh3.hash(b"foo", 42) == -1322301282


@pytest.mark.parametrize(
    ("value", "buckets", "seed", "expected"),
    [
        # 613153351 % 9: digit sum 6+1+3+1+5+3+3+5+1 = 28, 28 % 9 = 1 -> 1 + 1 = 2
        ("hello", 10, 0, 2),
        # 4138058784 % 9: digit sum 4+1+3+8+0+5+8+7+8+4 = 48, 48 % 9 = 3 -> 4
        ("foo", 10, 0, 4),
        # 4138058784 is even -> % 2 = 0 -> 1
        ("foo", 3, 0, 1),
        # seed 42: -1322301282 signed = 2**32 - 1322301282 = 2972666014 unsigned; % 100 = 14 -> 15
        ("foo", 101, 42, 15),
        # 0x24884CBA % 256 = 0xBA = 186 -> 187
        ("Hello, world!", 257, 0x9747B28C, 187),
        # 0x5A97808A % 65536 = 0x808A = 32906 -> 32907
        ("aaaa", 65537, 0x9747B28C, 32907),
    ],
)
def test_bucket_of_golden(value: str, buckets: int, seed: int, expected: int) -> None:
    assert bucket_of(value, buckets, seed) == expected
    assert hash_series(pl.Series([value]), buckets, seed).to_list() == [expected]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("héllo", "héllo".encode()),  # UTF-8, unchanged: b"h\xc3\xa9llo"
        (" a ", b" a "),  # no trimming
        (42, b"42"),
        (-7, b"-7"),
        (np.int64(5), b"5"),
        (True, b"true"),
        (np.bool_(False), b"false"),
        (3.0, b"3"),
        (2.5, b"2.5"),
        (-0.0, b"0"),
        (1e-05, b"0.00001"),
        (1e20, b"100000000000000000000"),
        (float("inf"), b"inf"),
        (("F", 7), b"F\x1f7"),
        ((True, 2.5), b"true\x1f2.5"),
    ],
)
def test_canonical_bytes(value: object, expected: bytes) -> None:
    assert canonical_bytes(value) == expected


def test_canonical_bytes_rejects_missing_and_unknown() -> None:
    for missing in (None, "", float("nan"), ("a", None), ("", "b")):
        with pytest.raises(ValueError, match="missing"):
            canonical_bytes(missing)
        assert bucket_of(missing, 10, 0) == NULL_BUCKET
    with pytest.raises(TypeError, match="cast the column"):
        canonical_bytes(b"raw")
    with pytest.raises(TypeError, match="pair"):
        canonical_bytes(("a", "b", "c"))


def test_bad_buckets_or_seed() -> None:
    with pytest.raises(ValueError, match="buckets"):
        bucket_of("a", 1, 0)
    with pytest.raises(ValueError, match="seed"):
        hash_series(pl.Series(["a"]), 10, -1)
    with pytest.raises(ValueError, match="seed"):
        bucket_of("a", 10, 2**32)


# ---------------------------------------------------------------- cast rules across dtypes


def test_int_string_float_categorical_share_buckets() -> None:
    # the canonical form of 42, "42" and 42.0 is b"42": a column may change dtype between runs
    as_int = hash_series(pl.Series("c", [42, None, -3]), 1000, 7)
    as_str = hash_series(pl.Series("c", ["42", None, "-3"]), 1000, 7)
    as_float = hash_series(pl.Series("c", [42.0, None, -3.0]), 1000, 7)
    as_cat = hash_series(pl.Series("c", ["42", None, "-3"]).cast(pl.Categorical), 1000, 7)
    as_enum = hash_series(pl.Series("c", ["42", None, "-3"], dtype=pl.Enum(["-3", "x", "42"])), 1000, 7)
    expected = [bucket_of("42", 1000, 7), 0, bucket_of("-3", 1000, 7)]
    for got in (as_int, as_str, as_float, as_cat, as_enum):
        assert got.dtype == pl.Int32
        assert got.to_list() == expected


def test_bool_column_hashes_true_false_text() -> None:
    got = hash_series(pl.Series([True, None, False]), 50, 1).to_list()
    assert got == [bucket_of("true", 50, 1), 0, bucket_of("false", 50, 1)]


def test_float_nan_is_null_and_unsupported_dtype_errors() -> None:
    got = hash_series(pl.Series("p", [float("nan"), 2.5, None]), 50, 1).to_list()
    assert got == [0, bucket_of("2.5", 50, 1), 0]
    with pytest.raises(TypeError, match="'d'.*fix: cast"):
        hash_series(pl.Series("d", [b"x"]), 10, 0)


def test_wide_and_unsigned_int_ranges() -> None:
    # span 10**15 >> rows: the join path; UInt64 max does not fit Int64
    wide = pl.Series([0, 10**15, None, 0])
    assert hash_series(wide, 97, 3).to_list() == [bucket_of(v, 97, 3) for v in wide.to_list()]
    big = pl.Series([2**64 - 1, 0, None], dtype=pl.UInt64)
    assert hash_series(big, 97, 3).to_list() == [bucket_of(v, 97, 3) for v in big.to_list()]


def test_global_categorical_with_foreign_categories() -> None:
    # other columns cast earlier fill the global category mapping; only this column's values count
    pl.Series([f"other_{i}" for i in range(2000)]).cast(pl.Categorical)
    s = pl.Series(["b", "a", None, "b", ""]).cast(pl.Categorical)
    assert hash_series(s, 11, 5).to_list() == [bucket_of(v, 11, 5) for v in ["b", "a", None, "b", ""]]


def test_narrow_int_widths_do_not_wrap() -> None:
    # Int8 -128..127 spans 256 keys: value - (-128) must be taken in int64 (127 + 128 = 255 wraps in int8)
    s = pl.Series([-128, 127, None, 0, -1], dtype=pl.Int8)
    assert hash_series(s, 50, 3).to_list() == [bucket_of(v, 50, 3) for v in [-128, 127, None, 0, -1]]
    u = pl.Series([255, 0, None, 7], dtype=pl.UInt8)
    assert hash_series(u, 50, 3).to_list() == [bucket_of(v, 50, 3) for v in [255, 0, None, 7]]


def test_string_column_in_several_chunks() -> None:
    # a frame read from Parquet holds one chunk per row group; each chunk has its own nulls, "" and values
    parts = [["b", None, ""], ["a", "b"], [None, "héllo, a longer string than 12 bytes", "a"]]
    s = pl.concat([pl.Series("c", p, dtype=pl.String) for p in parts], rechunk=False)
    assert s.n_chunks() == 3
    flat = [v for p in parts for v in p]
    assert hash_series(s, 101, 42).to_list() == [bucket_of(v, 101, 42) for v in flat]


def test_many_distinct_values_are_hashed_across_slices() -> None:
    # more distinct values than one mmh3 slice (16,384), with "" and nulls among them: every slice
    # boundary must keep the values and their buckets aligned
    rng = np.random.default_rng(5)
    texts = [f"v{i}" for i in range(40_000)] + ["", None]
    rows = [texts[i] for i in rng.integers(0, len(texts), 60_000)]
    assert hash_series(pl.Series("s", rows, dtype=pl.String), 997, 11).to_list() == [
        bucket_of(v, 997, 11) for v in rows
    ]
    ids = rng.integers(0, 10**9, 50_000)
    assert hash_series(pl.Series("i", ids), 997, 11).to_list() == [bucket_of(int(v), 997, 11) for v in ids]


def test_parquet_dictionary_columns_give_the_string_buckets(tmp_path) -> None:  # noqa: ANN001
    # Parquet stores a String column dictionary-encoded; read_dictionary keeps it, polars sees Categorical
    df = pl.DataFrame({"brand": ["x", None, "y", "x", ""], "user_id": [3, 1, None, 3, 2]})
    path = tmp_path / "t.parquet"
    df.write_parquet(path, row_group_size=2)
    read = pl.from_arrow(pq.read_table(path, read_dictionary=["brand"]))
    assert isinstance(read.schema["brand"], pl.Categorical)
    fields = [FieldSpec("brand", ("brand",), 7, "item"), FieldSpec("user_id", ("user_id",), 5, "user")]
    assert bucketize(read, fields, 9).equals(bucketize(df, fields, 9).with_columns(read["brand"]))
    assert bucketize(read, fields, 9)["bkt_brand"].to_list() == [bucket_of(v, 7, 9) for v in df["brand"]]


def test_bucketize_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads"):
        bucketize(pl.DataFrame({"a": [1]}), [FieldSpec("a", ("a",), 4, "item")], 0, threads=0)


# ---------------------------------------------------------------- properties

_texts = st.lists(st.one_of(st.none(), st.just(""), st.text(max_size=6)), max_size=30)
_ints = st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(-20, 20)), max_size=30)
_buckets = st.integers(2, 10**6)
_seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=60, deadline=None)
@given(values=_texts, buckets=_buckets, seed=_seeds)
def test_hash_series_equals_bucket_of_strings(values: list, buckets: int, seed: int) -> None:
    got = hash_series(pl.Series("c", values, dtype=pl.String), buckets, seed)
    expected = [bucket_of(v, buckets, seed) for v in values]
    assert got.to_list() == expected
    assert all(0 <= b < buckets for b in expected)
    assert all((b == NULL_BUCKET) == (v is None or v == "") for v, b in zip(values, expected, strict=True))
    # deterministic: a second call (new local category mapping) gives the same buckets
    assert hash_series(pl.Series("c", values, dtype=pl.String), buckets, seed).equals(got)


@settings(max_examples=60, deadline=None)
@given(values=_ints, buckets=_buckets, seed=_seeds)
def test_hash_series_equals_bucket_of_ints(values: list, buckets: int, seed: int) -> None:
    got = hash_series(pl.Series("c", values, dtype=pl.Int64), buckets, seed).to_list()
    assert got == [bucket_of(v, buckets, seed) for v in values]
    assert all(0 <= b < buckets for b in got)


@settings(max_examples=40, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["", "a", "b", "é"])),
            st.one_of(st.none(), st.integers(-3, 3)),
        ),
        max_size=25,
    ),
    buckets=_buckets,
    seed=_seeds,
)
def test_hash_cross_equals_bucket_of_pairs(pairs: list, buckets: int, seed: int) -> None:
    left = pl.Series("l", [p[0] for p in pairs], dtype=pl.String)
    right = pl.Series("r", [p[1] for p in pairs], dtype=pl.Int64)
    got = hash_cross(left, right, buckets, seed)
    assert got.name == "l_x_r"
    assert got.to_list() == [bucket_of(p, buckets, seed) for p in pairs]


# ---------------------------------------------------------------- vocabulary, bucketize, report


def test_build_vocab_order_sizes_offsets(caplog: pytest.LogCaptureFixture) -> None:
    cfg = FeaturesConfig(
        id_buckets={"user_id": 100, "item_id": 50},
        buckets={"brand": 20},
        default_buckets=8,
        crosses=[("gender", "brand"), ("age_bucket", "price_bucket"), ("gender", "brand")],
        cross_buckets=30,
    )
    with caplog.at_level(logging.WARNING, logger="features.hashing"):
        vocab = build_vocab(["gender", "user_id"], ["brand"], cfg)
    assert "age_bucket" in caplog.text  # the cross over absent columns is skipped with a warning
    assert vocab.names() == ("user_id", "gender", "item_id", "brand", "gender_x_brand")
    assert vocab.vocab_sizes() == {
        "user_id": 100,
        "gender": 8,
        "item_id": 50,
        "brand": 20,
        "gender_x_brand": 30,
    }
    # cumulative sums: 0, 100, 108, 158, 178; total 208
    assert vocab.offsets() == {
        "user_id": 0,
        "gender": 100,
        "item_id": 108,
        "brand": 158,
        "gender_x_brand": 178,
    }
    assert vocab.total() == 208
    assert [f.name for f in vocab.side("cross")] == ["gender_x_brand"]
    assert vocab.side("cross")[0].sources == ("gender", "brand")
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_build_vocab_rejects_shared_attribute_names() -> None:
    with pytest.raises(ValueError, match="both users.parquet and items.parquet"):
        build_vocab(["color"], ["color"], FeaturesConfig())


def test_vocab_from_json_rejects_other_hash() -> None:
    d = Vocab((FieldSpec("a", ("a",), 4, "user"),)).to_json()
    with pytest.raises(ValueError, match="rebuild"):
        Vocab.from_json({**d, "hash": "xxhash64"})


def test_fieldspec_validation() -> None:
    with pytest.raises(ValueError, match="source"):
        FieldSpec("x", ("a",), 10, "cross")
    with pytest.raises(ValueError, match=">= 2"):
        FieldSpec("x", ("a",), 1, "user")


def test_bucketize_adds_columns_and_keeps_others() -> None:
    df = pl.DataFrame({"user_id": [1, 2, None], "gender": ["F", None, "M"], "x": [0.5, 1.5, 2.5]})
    fields = [
        FieldSpec("user_id", ("user_id",), 10, "user"),
        FieldSpec("gender", ("gender",), 4, "user"),
        FieldSpec("gender_x_user_id", ("gender", "user_id"), 16, "cross"),
    ]
    out = bucketize(df, fields, 3)
    assert out.columns == ["user_id", "gender", "x", "bkt_user_id", "bkt_gender", "bkt_gender_x_user_id"]
    assert out["x"].to_list() == [0.5, 1.5, 2.5]
    assert out["bkt_user_id"].to_list() == [bucket_of(1, 10, 3), bucket_of(2, 10, 3), 0]
    assert out["bkt_gender"].to_list() == [bucket_of("F", 4, 3), 0, bucket_of("M", 4, 3)]
    # only row 0 has both sides of the cross
    assert out["bkt_gender_x_user_id"].to_list() == [bucket_of(("F", 1), 16, 3), 0, 0]
    assert out.schema["bkt_gender"] == pl.Int32
    assert bucket_column("gender") == "bkt_gender"


def test_bucketize_missing_column_names_it() -> None:
    with pytest.raises(ValueError, match=r"\['brand'\].*fix"):
        bucketize(pl.DataFrame({"a": [1]}), [FieldSpec("brand", ("brand",), 4, "item")], 0)


def test_collision_report_by_hand() -> None:
    # buckets=2 leaves one non-null bucket: the 3 distinct values a, b, c all land in bucket 1
    # -> distinct 3, used 1, colliding 2; expected used = 1 * (1 - (1 - 1/1)**3) = 1 -> expected colliding 2
    df = pl.DataFrame({"g": ["a", "b", "c", "a", None, ""]})
    fields = [FieldSpec("g", ("g",), 2, "item")]
    report = collision_report(bucketize(df, fields, 0), fields)
    assert report == {
        "g": {"distinct": 3, "used": 1, "colliding": 2, "buckets": 2, "expected_colliding": 2.0}
    }
    with pytest.raises(ValueError, match="run bucketize first"):
        collision_report(df, fields)


def test_collision_report_no_collisions_with_many_buckets() -> None:
    # 3 values into 2**20 - 1 buckets: used equals distinct unless two collide; the report must agree with
    # the buckets actually produced (counted here from the bucket_of reference)
    df = pl.DataFrame({"g": ["a", "b", "c"]})
    fields = [FieldSpec("g", ("g",), 2**20, "item")]
    report = collision_report(bucketize(df, fields, 0), fields)["g"]
    used = len({bucket_of(v, 2**20, 0) for v in "abc"})
    assert (report["distinct"], report["used"], report["colliding"]) == (3, used, 3 - used)
    assert 0 <= report["expected_colliding"] < 1e-5  # 3 values in 1M buckets: ~3e-6 expected collisions


@settings(max_examples=40, deadline=None)
@given(values=_texts, buckets=_buckets, seed=_seeds, cut=st.integers(0, 30))
def test_string_categorical_enum_dictionary_inputs_agree(
    values: list, buckets: int, seed: int, cut: int
) -> None:
    # the same texts as String (in two chunks), global Categorical, Enum and an Arrow dictionary column
    cut = min(cut, len(values))
    as_str = pl.concat(
        [pl.Series("c", values[:cut], dtype=pl.String), pl.Series("c", values[cut:], dtype=pl.String)],
        rechunk=False,
    )
    expected = [bucket_of(v, buckets, seed) for v in values]
    categories = sorted({v for v in values if v is not None})
    as_dict = pl.from_arrow(pa.array(values, pa.string()).dictionary_encode())
    assert isinstance(as_dict, pl.Series) and isinstance(as_dict.dtype, pl.Categorical)
    inputs = {
        "String": as_str,
        "Categorical": as_str.cast(pl.Categorical),
        "Categorical (local)": as_str.cast(pl.Categorical(pl.Categories.random())),
        "Enum": as_str.cast(pl.Enum(categories)),
        "Arrow dictionary": as_dict,
    }
    for name, series in inputs.items():
        assert hash_series(series, buckets, seed).to_list() == expected, name


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.just(""), st.text(max_size=4)),
            st.one_of(st.none(), st.integers(-5, 10**6)),
            st.one_of(st.none(), st.sampled_from(["M", "F", ""])),
        ),
        max_size=30,
    ),
    seed=_seeds,
)
def test_bucketize_threaded_equals_serial(rows: list, seed: int) -> None:
    df = pl.DataFrame(
        {"brand": [r[0] for r in rows], "user_id": [r[1] for r in rows], "gender": [r[2] for r in rows]},
        schema={"brand": pl.String, "user_id": pl.Int64, "gender": pl.String},
    )
    fields = [
        FieldSpec("brand", ("brand",), 13, "item"),
        FieldSpec("user_id", ("user_id",), 1000, "user"),
        FieldSpec("gender", ("gender",), 4, "user"),
        FieldSpec("gender_x_brand", ("gender", "brand"), 50, "cross"),
    ]
    serial = bucketize(df, fields, seed, threads=1)
    assert serial["bkt_user_id"].to_list() == [bucket_of(r[1], 1000, seed) for r in rows]
    assert serial["bkt_gender_x_brand"].to_list() == [bucket_of((r[2], r[0]), 50, seed) for r in rows]
    assert bucketize(df, fields, seed).equals(serial)  # the default (serial under 100k rows)
    for threads in (2, 4):
        assert bucketize(df, fields, seed, threads=threads).equals(serial)


def test_bucketize_default_uses_the_cores_on_large_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """From 100k rows the default runs on a pool of usable_cores() threads, with the serial buckets."""
    import features.hashing as hashing

    rng = np.random.default_rng(3)
    n = 120_000  # above the serial threshold (100k rows)
    df = pl.DataFrame(
        {
            "user_id": rng.integers(1, 50_000, n),
            "brand": pl.Series([f"b{i}" for i in range(300)]).gather(rng.integers(0, 300, n)),
        }
    )
    fields = [FieldSpec("user_id", ("user_id",), 1000, "user"), FieldSpec("brand", ("brand",), 64, "item")]
    pools: list[int] = []
    real_pool = hashing.ThreadPoolExecutor

    def counting_pool(max_workers: int) -> ThreadPoolExecutor:
        pools.append(max_workers)
        return real_pool(max_workers=max_workers)

    monkeypatch.setattr(hashing, "ThreadPoolExecutor", counting_pool)
    monkeypatch.setattr(hashing, "usable_cores", lambda: 2)
    threaded = bucketize(df, fields, 7)
    assert pools == [2]  # two source columns, two cores: one pool of two threads
    assert threaded.equals(bucketize(df, fields, 7, threads=1))
    assert threaded["bkt_brand"][:5].to_list() == [bucket_of(v, 64, 7) for v in df["brand"][:5]]
    assert bucketize(df.head(99_999), fields, 7).equals(threaded.head(99_999))  # serial there
    assert pools == [2]


def test_strings_as_categorical_joined_buckets_equal_the_string_buckets() -> None:
    """Attributes cast to Categorical in the table, then joined onto events, hash like the raw Strings."""
    users = pl.DataFrame(
        {"user_id": [1, 2, 3], "city": ["Oslo", None, ""], "age_bucket": [3, 5, None]},
        schema={"user_id": pl.Int64, "city": pl.String, "age_bucket": pl.Int64},
    )
    table = users.select("user_id", *strings_as_categorical(users.schema, ["city", "age_bucket"]))
    assert table.schema["city"] == pl.Categorical and table.schema["age_bucket"] == pl.Int64
    events = pl.DataFrame({"user_id": [3, 1, 1, 2, 9]})  # user 9 is unknown: null attributes
    fields = [
        FieldSpec("city", ("city",), 17, "user"),
        FieldSpec("city_x_age_bucket", ("city", "age_bucket"), 31, "cross"),
    ]
    coded = bucketize(events.join(table, on="user_id", how="left", maintain_order="left"), fields, 5)
    raw = bucketize(events.join(users, on="user_id", how="left", maintain_order="left"), fields, 5)
    assert coded.select("bkt_city", "bkt_city_x_age_bucket").equals(
        raw.select("bkt_city", "bkt_city_x_age_bucket")
    )
    # "" and null go to bucket 0; only user 1's pair ("Oslo", 3) has both sides
    assert coded["bkt_city"].to_list() == [0, bucket_of("Oslo", 17, 5), bucket_of("Oslo", 17, 5), 0, 0]
    pair = bucket_of(("Oslo", 3), 31, 5)
    assert coded["bkt_city_x_age_bucket"].to_list() == [0, pair, pair, 0, 0]
