"""The frames stage on a tiny data set written here (4 users, 5 items, 4 days of events), built in one
user block and in three (every hand-worked expectation must hold for both), plus the block machinery:
user -> block hashing, moments merged over blocks, and 1 vs 3 blocks on a generated data set."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import mmh3
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import ColumnsConfig, FeaturesConfig, SamplingConfig
from pipelines import io
from pipelines.config import DataConfig
from pipelines.datasets.synthetic import PRESETS, generate
from pipelines.frames import build_frames
from pipelines.frames.blocks import _BLOCK_HASH_SEED, block_seed, choose_blocks, user_block
from pipelines.frames.layout import FramesManifest, Window, read_manifest
from pipelines.frames.numeric import merge_moments, numeric_moments, stats_from_moments
from pipelines.frames.tables import resolve_columns

D = date(2024, 3, 3)  # run date; W = 2 -> train day 03-02, valid day 03-03; lookback 1 day -> 03-01
FEATURES = FeaturesConfig(
    default_buckets=50,
    id_buckets={"user_id": 50, "item_id": 50},
    cross_buckets=50,
    history_windows_days=[1, 7],
)
SAMPLING = SamplingConfig(ratio=1, strategy="uniform", real_negative_share=0.5)
DATA = DataConfig(train_window_days=2, history_lookback_days=1)
RUN = io.RunInfo("test", "cfg0", "rev0", {"note": "test"})


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=UTC)


# (user, item, event, ts); positives are click / cart / purchase
EVENTS = [
    ("u1", "i1", "click", at(1, 10)),
    ("u4", "i2", "view", at(1, 11)),
    ("u2", "i3", "purchase", at(1, 12)),
    ("u1", "i2", "view", at(2, 9)),  # followed by a click of i2 -> not a real negative
    ("u1", "i2", "click", at(2, 9, 30)),
    ("u2", "i4", "view", at(2, 10)),  # no later positive -> real negative of day 2
    ("u2", "i1", "click", at(2, 11)),
    ("u3", "i1", "view", at(2, 12)),  # real negative of day 2
    ("u1", "i3", "cart", at(3, 8)),
    ("u2", "i2", "view", at(3, 9)),  # real negative of day 3
    ("u3", "i4", "click", at(3, 10)),
    ("u1", "i4", "purchase", at(4, 7)),
    ("u3", "i2", "click", at(4, 8)),
    ("u2", "i5", "view", at(4, 9)),  # i5 is on sale on 03-04 only (after the window: still not `seen`)
]


# before the history lookback (03-01): never read; if it were, u3's history would hold i3
OLD_EVENT = ("u3", "i3", "click", datetime(2024, 2, 20, 12, tzinfo=UTC))


def write_data(root: Path, last_day: int = 4) -> Path:
    users = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "gender": ["f", "m", "f", None],
            "age": [30, 40, None, 50],
        }
    )
    items = pl.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4", "i5"],
            "title": ["a", "b", "c", "d", "e"],
            "image_path": [None] * 5,
            "category_l1": ["a", "a", "b", "b", "c"],
            "price": [10.0, 20.0, 30.0, 40.0, 50.0],
        }
    )
    io.write_input_table(root, "users", users)
    io.write_input_table(root, "items", items)
    for day in [*(date(2024, 3, d) for d in range(1, last_day + 1)), OLD_EVENT[3].date()]:
        rows = [e for e in [*EVENTS, OLD_EVENT] if e[3].date() == day]
        io.write_input_events(
            root,
            day,
            pl.DataFrame(
                {
                    "user_id": [r[0] for r in rows],
                    "item_id": [r[1] for r in rows],
                    "event": [r[2] for r in rows],
                    "ts": pl.Series([r[3] for r in rows], dtype=pl.Datetime("us", "UTC")),
                }
            ),
        )
    return root


def run(data: Path, out: Path, dt: date = D, seed: int = 7, n_blocks: int | None = None) -> dict:
    return build_frames(
        data, out, dt, DATA, ColumnsConfig(), FEATURES, SAMPLING, seed, RUN, n_blocks=n_blocks
    )


# n_blocks=3 puts u1, u2, u4 in block 1 and u3 in block 2 (block 0 is empty): see test_user_block_*
@pytest.fixture(scope="module", params=[None, 3], ids=["auto-blocks", "3-blocks"])
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict, dict[str, pl.DataFrame]]:
    root = tmp_path_factory.mktemp("frames")
    data = write_data(root / "data")
    manifest = run(data, root / "out", n_blocks=request.param)
    part = io.partition_dir(root / "out", "frames", D)
    tables = {p.stem: pl.read_parquet(p) for p in part.glob("*.parquet")}
    return part, manifest, tables


def bucket_of_item(tables: dict[str, pl.DataFrame]) -> dict[str, int]:
    return dict(tables["items"].select("item_id", "bkt_item_id").iter_rows())


def test_files_and_row_counts(built: tuple) -> None:
    part, manifest, tables = built
    assert sorted(tables) == [
        "eval_ranker", "eval_retrieval", "items", "ranker_train", "ranker_valid",
        "retriever_train", "retriever_valid", "users",
    ]  # fmt: skip
    assert (part / "vocab.json").is_file() and (part / "numeric_stats.json").is_file()
    assert not (part / "_scratch").exists()  # per-block scratch files are removed before the commit
    assert manifest["blocks"] in (1, 3) and manifest["events_read"] == 14  # OLD_EVENT is before 03-01
    # positives: day 2 -> (u1,i2) (u2,i1); day 3 -> (u1,i3) (u3,i4); day 4 -> (u1,i4) (u3,i2)
    assert manifest["rows"]["retriever_train"] == 2
    assert manifest["rows"]["retriever_valid"] == 2
    assert manifest["rows"]["eval_retrieval"] == 2
    # ratio 1: one negative per positive
    for name in ("ranker_train", "ranker_valid", "eval_ranker"):
        assert tables[name]["label"].to_list().count(1) == 2
        assert tables[name]["label"].to_list().count(0) == 2, name
    # users active on 03-02..03-03: u1, u2, u3 (u4 only on 03-01); every catalogue item, i5 never seen
    assert tables["users"]["user_id"].to_list() == ["u1", "u2", "u3"]
    assert tables["items"]["item_id"].to_list() == ["i1", "i2", "i3", "i4", "i5"]
    assert tables["items"]["item_idx"].to_list() == [0, 1, 2, 3, 4]
    assert tables["items"]["seen"].to_list() == [True, True, True, True, False]
    assert manifest["eval"] == {"day": "2024-03-04", "present": True}
    assert manifest["input_partitions"] == [
        "events/dt=2024-03-01", "events/dt=2024-03-02", "events/dt=2024-03-03", "events/dt=2024-03-04",
        "items.parquet", "users.parquet",
    ]  # fmt: skip
    assert manifest["window"]["train_days"] == ["2024-03-02"]
    # the typed section later stages read (instead of the run's _config.json)
    typed = read_manifest(part.parent.parent, D)
    assert isinstance(typed, FramesManifest)
    assert typed.history_len == FEATURES.history_len and typed.hash_seed == FEATURES.hash_seed
    assert typed.data_dir == str(part.parent.parent.parent / "data")
    assert typed.train_days == [date(2024, 3, 2)] and typed.eval_present
    window = Window.of(DATA, D)
    assert (typed.history_from, tuple(typed.train_days), typed.eval_day) == (
        window.history_from, window.train_days, window.eval_day,
    )  # fmt: skip
    assert set(manifest["collisions"]) == {
        "user_id",
        "gender",
        "item_id",
        "category_l1",
        "gender_x_category_l1",
    }
    assert manifest["negatives"]["train"]["negatives"] == 2


def test_columns(built: tuple) -> None:
    _, _, tables = built
    user = ["bkt_user_id", "bkt_gender"]
    hist = ["hist", "cnt_1d", "cnt_7d"]
    assert tables["retriever_train"].columns == [
        "user_id",
        "item_id",
        "item_idx",
        "ts",
        *user,
        *hist,
        "num_user_age",
    ]
    assert tables["ranker_valid"].columns == [
        "user_id", "item_id", "item_idx", "ts", "label", "source", *user, "bkt_item_id", "bkt_category_l1",
        "bkt_gender_x_category_l1", *hist, "num_user_age", "num_item_price",
    ]  # fmt: skip
    assert tables["eval_ranker"].columns == tables["ranker_valid"].columns
    assert tables["users"].columns == ["user_id", *user, *hist, "num_user_age"]
    assert tables["items"].columns == [
        "item_id",
        "item_idx",
        "seen",
        "bkt_item_id",
        "bkt_category_l1",
        "num_item_price",
    ]
    assert tables["eval_retrieval"].columns == ["user_id", "item_id"]
    assert tables["ranker_train"].schema["hist"] == pl.List(pl.Int32)
    assert tables["ranker_train"].schema["num_item_price"] == pl.Float32


def test_time_split_and_point_in_time_features(built: tuple) -> None:
    _, _, tables = built
    b = bucket_of_item(tables)
    for name, day in (("ranker_train", 2), ("ranker_valid", 3), ("eval_ranker", 4)):
        assert set(tables[name]["ts"].dt.day().to_list()) == {day}, name
    rt = tables["retriever_train"].sort("ts")
    # (u1, i2, 03-02 09:30): earlier positive click i1 (03-01); events in the last day: click i1 03-01 10:00,
    # view i2 03-02 09:00 -> 2.  (u2, i1, 03-02 11:00): purchase i3 (03-01 12:00), view i4 (03-02 10:00) -> 2
    assert rt.select("user_id", "item_id").rows() == [("u1", "i2"), ("u2", "i1")]
    assert rt["hist"].to_list() == [[b["i1"]], [b["i3"]]]
    assert rt["cnt_1d"].to_list() == [2, 2]
    rv = tables["retriever_valid"].sort("ts")
    # (u1, i3, 03-03 08:00): positives i2 (03-02), i1 (03-01), most recent first; 1 day: view+click i2 -> 2;
    # 7 days: 3.  (u3, i4, 03-03 10:00): u3 has only a view before -> empty hist; 1 day: that view -> 1
    assert rv["hist"].to_list() == [[b["i2"], b["i1"]], []]
    assert rv["cnt_1d"].to_list() == [2, 1]
    assert rv["cnt_7d"].to_list() == [3, 1]
    # users as of the end of 03-03 (events before 03-04 00:00)
    users = tables["users"]
    assert users["hist"].to_list() == [[b["i3"], b["i2"], b["i1"]], [b["i1"], b["i3"]], [b["i4"]]]
    assert users["cnt_1d"].to_list() == [1, 1, 1]
    assert users["cnt_7d"].to_list() == [4, 4, 2]


def test_negatives_by_hand(built: tuple) -> None:
    """ratio 1, real share 0.5 -> each (user, day) with one positive wants round(0.5) = 1 real negative.

    train 03-02: u2 viewed i4 with no later positive -> real (u2, i4, 10:00); u1's only view (i2) was
      clicked, so u1's negative is sampled from 03-02's items {i1, i2, i4} minus u1's positives {i1, i2}
      -> (u1, i4) at u1's positive time 09:30.
    valid 03-03: no positive user viewed anything that day; u1: {i2, i3, i4} minus {i1, i2, i3} -> i4;
      u3: {i2, i3, i4} minus {i4} -> i2 or i3 (the seed picks).
    eval 03-04: items {i2, i4, i5}; u1 has positives on i2 and i4, u3 on i2 and i4 -> both get i5.
    """
    _, _, tables = built

    def negs(name: str) -> list[tuple]:
        df = tables[name].filter(pl.col("label") == 0).sort("user_id")
        return df.select("user_id", "item_id", pl.col("ts").dt.hour(), "source").rows()

    assert negs("ranker_train") == [("u1", "i4", 9, "sampled"), ("u2", "i4", 10, "real")]
    valid = negs("ranker_valid")
    assert valid[0] == ("u1", "i4", 8, "sampled")
    assert valid[1][0] == "u3" and valid[1][1] in {"i2", "i3"} and valid[1][2:] == (10, "sampled")
    assert negs("eval_ranker") == [("u1", "i5", 7, "sampled"), ("u3", "i5", 8, "sampled")]
    # a negative carries its own time's features: (u2, i4, 03-02 10:00) sees u2's purchase of i3 (03-01)
    # but not its own view; 1-day window [03-01 10:00, 03-02 10:00) holds only that purchase -> 1
    b = bucket_of_item(tables)
    real = tables["ranker_train"].filter(pl.col("source") == "real").row(0, named=True)
    assert (real["hist"], real["cnt_1d"]) == ([b["i3"]], 1)


def test_negatives_are_never_positives(built: tuple) -> None:
    """No negative is a positive of its user at any time up to the end of its split (lookback included).

    Later positives may be negatives of an earlier split: (u1, i4) is bought on 03-04, which the train
    split (ending 03-02) must not know about."""
    _, _, tables = built
    for name, last_day in (("ranker_train", 2), ("ranker_valid", 3), ("eval_ranker", 4)):
        pos_pairs = {(u, i) for u, i, ev, ts in EVENTS if ev != "view" and ts.day <= last_day}
        neg = tables[name].filter(pl.col("label") == 0)
        assert set(neg["source"].to_list()) <= {"real", "sampled"}
        assert not set(neg.select("user_id", "item_id").rows()) & pos_pairs, name


def test_numeric_standardised_on_train_rows(built: tuple) -> None:
    part, _, tables = built
    stats = json.loads((part / "numeric_stats.json").read_text())
    price = {"i1": 10.0, "i2": 20.0, "i3": 30.0, "i4": 40.0, "i5": 50.0}
    train_prices = [price[i] for i in tables["ranker_train"]["item_id"].to_list()]
    mean = sum(train_prices) / len(train_prices)
    std = (sum((p - mean) ** 2 for p in train_prices) / len(train_prices)) ** 0.5
    assert stats["num_item_price"]["mean"] == pytest.approx(mean)
    assert stats["num_item_price"]["std"] == pytest.approx(std)
    items = tables["items"]
    assert items["num_item_price"].to_list() == pytest.approx(
        [(p - mean) / std for p in price.values()], rel=1e-5
    )
    # u3's age is null -> 0 after standardising
    assert tables["users"].filter(pl.col("user_id") == "u3")["num_user_age"].item() == 0.0


def test_vocab_matches_hashed_columns(built: tuple) -> None:
    part, _, tables = built
    vocab = json.loads((part / "vocab.json").read_text())
    names = [f["name"] for f in vocab["fields"]]
    assert names == ["user_id", "gender", "item_id", "category_l1", "gender_x_category_l1"]
    sizes = {f["name"]: f["buckets"] for f in vocab["fields"]}
    rk = tables["ranker_train"]
    for name, size in sizes.items():
        col = rk[f"bkt_{name}"]
        assert col.min() >= 0 and col.max() < size
    # u4 has no gender -> but u4 is not active; u3 with gender f and u1 share the gender bucket
    users = tables["users"]
    assert (
        users.filter(pl.col("user_id") == "u1")["bkt_gender"].item()
        == users.filter(pl.col("user_id") == "u3")["bkt_gender"].item()
    )


def test_deterministic_for_a_seed(tmp_path: Path, built: tuple) -> None:
    part, _, tables = built
    data = write_data(tmp_path / "data")
    manifest = json.loads((part / "_manifest.json").read_text())
    run(data, tmp_path / "out", n_blocks=manifest["blocks"])
    again = io.partition_dir(tmp_path / "out", "frames", D)
    for name, df in tables.items():
        assert pl.read_parquet(again / f"{name}.parquet").equals(df), name
    assert (again / "vocab.json").read_text() == (part / "vocab.json").read_text()


def test_no_eval_files_without_next_day(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", last_day=3)
    manifest = run(data, tmp_path / "out")
    part = io.partition_dir(tmp_path / "out", "frames", D)
    assert not (part / "eval_ranker.parquet").exists()
    assert not (part / "eval_retrieval.parquet").exists()
    assert manifest["eval"] == {"day": "2024-03-04", "present": False}
    assert "eval" not in manifest["negatives"]


def test_one_day_window_has_empty_training_files(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    one_day = DataConfig(train_window_days=1, history_lookback_days=1)
    manifest = build_frames(data, tmp_path / "out", D, one_day, ColumnsConfig(), FEATURES, SAMPLING, 7, RUN)
    assert manifest["rows"]["ranker_train"] == 0 and manifest["rows"]["retriever_train"] == 0
    assert manifest["rows"]["retriever_valid"] == 2
    # users active on 03-03 only: u1 (cart i3), u2 (view i2), u3 (click i4)
    assert manifest["rows"]["users"] == 3
    stats = json.loads((io.partition_dir(tmp_path / "out", "frames", D) / "numeric_stats.json").read_text())
    assert stats["num_item_price"]["mean"] == 0.0 and stats["num_item_price"]["std"] == 1.0


def test_missing_run_date_is_an_error(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    with pytest.raises(ValueError, match=r"dt=2024-03-09: no events for the run date"):
        run(data, tmp_path / "out", dt=date(2024, 3, 9))
    assert not io.is_committed(tmp_path / "out", "frames", date(2024, 3, 9))


def test_resolve_columns_declared_and_inferred() -> None:
    users = pl.DataFrame({"user_id": ["u"], "gender": ["f"], "age": [3], "zip": [12345]})
    items = pl.DataFrame({"item_id": ["i"], "title": ["t"], "image_path": ["p"], "price": [1.0]})
    cols = resolve_columns(users, items, ColumnsConfig(user_categorical=["gender", "zip"]))
    # zip is declared categorical, so the inferred numeric list leaves it out; title/image_path never used
    assert (cols.user_categorical, cols.user_numeric) == (["gender", "zip"], ["age"])
    assert (cols.item_categorical, cols.item_numeric) == ([], ["price"])
    with pytest.raises(ValueError, match=r"columns.item_numeric lists \['weight'\]"):
        resolve_columns(users, items, ColumnsConfig(item_numeric=["weight"]))
    with pytest.raises(ValueError, match="both have attribute column"):
        resolve_columns(users, items.with_columns(age=pl.lit(1)), ColumnsConfig())


# ---------------------------------------------------------------- user blocks


def test_choose_blocks_by_hand() -> None:
    # ceil(n / per_block), at least 1: 0 -> 1, 1M -> 1, 1M + 1 -> 2, 18.5M -> 19 (per block 1M)
    assert [choose_blocks(n) for n in (0, 1_000_000, 1_000_001, 18_500_000)] == [1, 1, 2, 19]
    assert choose_blocks(10, events_per_block=3) == 4  # 10 / 3 = 3.33 -> 4
    with pytest.raises(ValueError, match="events_per_block"):
        choose_blocks(10, events_per_block=0)


def test_user_block_is_murmur3_mod_n() -> None:
    # reference computed with the mmh3 library directly: murmur3_x86_32(id, seed) mod n
    ids = ["u1", "u2", "u3", "u4"]
    want = [mmh3.hash(u, _BLOCK_HASH_SEED, signed=False) % 3 for u in ids]
    assert user_block(pl.Series(ids), 3).to_list() == want == [1, 1, 2, 1]
    assert user_block(pl.Series(ids), 1).to_list() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="n_blocks"):
        user_block(pl.Series(ids), 0)


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=30), n=st.integers(1, 12))
def test_user_block_in_range_and_deterministic(ids: list[str], n: int) -> None:
    """A user always lands in the same block in [0, n), whatever else is in the series."""
    blocks = user_block(pl.Series(ids), n).to_list()
    assert all(0 <= b < n for b in blocks)
    alone = [user_block(pl.Series([u]), n).item() for u in ids]
    assert blocks == alone


def test_block_seeds_differ_and_repeat() -> None:
    seeds = [block_seed(7, b) for b in range(5)] + [block_seed(8, 0)]
    assert len(set(seeds)) == 6 and all(0 <= s < 2**63 for s in seeds)
    assert block_seed(7, 3) == block_seed(7, 3)


def test_moments_by_hand() -> None:
    # x = [1, 3, null]: count 2, mean 2, M2 = 1 + 1 = 2 -> population std 1; y all null -> mean 0, std 1
    df = pl.DataFrame({"x": [1.0, 3.0, None], "y": pl.Series([None, None, None], dtype=pl.Float64)})
    m = numeric_moments(df, ["x", "y"])
    assert m == {"x": (2, 2.0, 2.0), "y": (0, 0.0, 0.0)}
    stats = stats_from_moments(m, ["x", "y"])
    assert stats == {"x": {"mean": 2.0, "std": 1.0, "count": 2}, "y": {"mean": 0.0, "std": 1.0, "count": 0}}


@settings(max_examples=40, deadline=None)
@given(
    xs=st.lists(st.one_of(st.none(), st.floats(-1e3, 1e3)), min_size=0, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=4),
)
def test_merged_moments_equal_moments_of_the_whole(xs: list[float | None], cuts: list[int]) -> None:
    """Splitting the rows into blocks anyhow and merging gives the moments of all rows at once."""
    whole = pl.DataFrame({"x": pl.Series(xs, dtype=pl.Float64)})
    bounds = sorted({0, len(xs), *(min(c, len(xs)) for c in cuts)})
    merged: dict = {}
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        merged = merge_moments(merged, numeric_moments(whole.slice(lo, hi - lo), ["x"]))
    n, mean, m2 = numeric_moments(whole, ["x"])["x"]
    got = merged.get("x", (0, 0.0, 0.0))
    assert got[0] == n
    assert got[1] == pytest.approx(mean, abs=1e-9)
    assert got[2] == pytest.approx(m2, rel=1e-9, abs=1e-6)


@pytest.fixture(scope="module")
def one_vs_three(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, dict]]:
    """A generated data set (300 users, 200 items, 5 days) built with 1 and with 3 user blocks."""
    root = tmp_path_factory.mktemp("blocks")
    data = root / "data"
    generate(data, replace(PRESETS["small"], users=300, items=200, days=5))
    dt = io.event_dates(data)[-2]
    cfg = DataConfig(train_window_days=3, history_lookback_days=2)
    built = {}
    for nb in (1, 3):
        out = root / f"out{nb}"
        m = build_frames(data, out, dt, cfg, ColumnsConfig(), FEATURES, SamplingConfig(), 0, RUN, n_blocks=nb)
        built[nb] = (io.partition_dir(out, "frames", dt), m)
    return built


def _table(part: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(part / f"{name}.parquet").sort("ts", "user_id", "item_id", maintain_order=True)


def test_one_and_three_blocks_give_the_same_positives(one_vs_three: dict) -> None:
    (p1, m1), (p3, m3) = one_vs_three[1], one_vs_three[3]
    assert (m1["blocks"], m3["blocks"]) == (1, 3)
    assert m1["rows"] == m3["rows"]
    assert m1["collisions"] == m3["collisions"]
    for split in ("train", "valid", "eval"):  # same positives; same negative counts (no slot unfilled)
        keys = ("positives", "negatives", "real", "sampled", "unfilled")
        assert {k: m1["negatives"][split][k] for k in keys} == {k: m3["negatives"][split][k] for k in keys}
    num = [c for c in pl.read_parquet(p1 / "ranker_train.parquet").columns if c.startswith("num_")]
    user_num = [c for c in num if c.startswith("num_user_")]
    assert user_num and len(num) > len(user_num)  # the generated data has user and item numeric columns
    for name in ("retriever_train", "retriever_valid", "users"):
        a, b = (
            _table(p, name) if name != "users" else pl.read_parquet(p / "users.parquet") for p in (p1, p3)
        )
        assert a.drop(user_num).equals(b.drop(user_num)), name
        for c in user_num:  # standardised with statistics merged over blocks: equal up to float rounding
            assert a[c].to_list() == pytest.approx(b[c].to_list(), abs=1e-5), (name, c)
    for name in ("ranker_train", "ranker_valid", "eval_ranker"):
        pos1 = _table(p1, name).filter(pl.col("label") == 1)
        pos3 = _table(p3, name).filter(pl.col("label") == 1)
        # num_item_* is standardised with item statistics, which depend on the sampled negatives
        assert pos1.drop(num).equals(pos3.drop(num)), name
        for c in user_num:
            assert pos1[c].to_list() == pytest.approx(pos3[c].to_list(), abs=1e-5), (name, c)
        # every user gets the same number of negatives; which items may differ (other seed per block)
        per_user = [
            _table(p, name).filter(pl.col("label") == 0).group_by("user_id").len().sort("user_id")
            for p in (p1, p3)
        ]
        assert per_user[0].equals(per_user[1]), name
    eval1 = pl.read_parquet(p1 / "eval_retrieval.parquet").sort("user_id", "item_id")
    eval3 = pl.read_parquet(p3 / "eval_retrieval.parquet").sort("user_id", "item_id")
    assert eval1.equals(eval3)


def test_numeric_stats_over_blocks_are_those_of_all_training_rows(one_vs_three: dict) -> None:
    """numeric_stats.json of each build = mean / population std of the raw attribute over ITS OWN
    ranker_train rows (recomputed here from items.parquet / users.parquet by a direct polars select), and
    the user-side statistics agree between 1 and 3 blocks (same rows per user: same positives, same
    negative count per user); item-side statistics may differ (different sampled negatives)."""
    stats = {}
    for nb, (part, _) in one_vs_three.items():
        stats[nb] = json.loads((part / "numeric_stats.json").read_text())
    raw_root = one_vs_three[1][0].parents[2] / "data"  # <root>/out1/frames/dt=D -> <root>/data
    users = io.read_users(raw_root)
    items = io.read_items(raw_root)
    for nb, (part, _) in one_vs_three.items():
        train = pl.read_parquet(part / "ranker_train.parquet", columns=["user_id", "item_id"])
        rows = train.join(users, on="user_id", how="left").join(items, on="item_id", how="left")
        for col, s in stats[nb].items():
            src = rows[s["source"]].cast(pl.Float64).drop_nulls()
            assert s["count"] == src.len(), (nb, col)
            assert s["mean"] == pytest.approx(src.mean(), rel=1e-9), (nb, col)
            assert s["std"] == pytest.approx(src.std(ddof=0), rel=1e-9), (nb, col)
    assert stats[1].keys() == stats[3].keys() and stats[1]
    for col in stats[1]:
        assert stats[1][col]["count"] == stats[3][col]["count"]
        if stats[1][col]["side"] == "user":
            assert stats[1][col]["mean"] == pytest.approx(stats[3][col]["mean"], rel=1e-12)
            assert stats[1][col]["std"] == pytest.approx(stats[3][col]["std"], rel=1e-12)


def test_three_blocks_keep_the_negative_rules(one_vs_three: dict) -> None:
    """Per block sampling still never returns a positive of the user (up to the split end) and never
    the same (user, day, item) twice; popularity is global, so every sampled item had an event that day."""
    part, m = one_vs_three[3]
    raw_root = part.parents[2] / "data"
    dt = date.fromisoformat(m["window"]["valid_day"])
    ev = io.scan_events(raw_root, date(2000, 1, 1), date(2100, 1, 1)).collect()
    pos = ev.filter(pl.col("event") != "view")
    for name, end in (("ranker_train", dt - timedelta(days=1)), ("ranker_valid", dt)):
        neg = pl.read_parquet(part / f"{name}.parquet").filter(pl.col("label") == 0)
        known = pos.filter(pl.col("dt") <= end).select("user_id", "item_id").unique()
        assert neg.join(known, on=["user_id", "item_id"], how="semi").height == 0, name
        keyed = neg.select("user_id", pl.col("ts").dt.date().alias("d"), "item_id")
        assert keyed.n_unique() == keyed.height, name
        sampled = neg.filter(pl.col("source") == "sampled").select(
            pl.col("ts").dt.date().alias("dt"), "item_id"
        )
        assert sampled.join(ev.select("dt", "item_id").unique(), on=["dt", "item_id"], how="anti").height == 0


def test_window_input_files_are_the_days_the_stage_reads(tmp_path: Path) -> None:
    """The files a cache key fingerprints are exactly users, items and the event days of the window."""
    data = write_data(tmp_path / "data")
    files = Window.of(DATA, D).input_files(data)
    days = sorted({p.parent.name for p in files if p.parent.name.startswith("dt=")})
    assert days == ["dt=2024-03-01", "dt=2024-03-02", "dt=2024-03-03", "dt=2024-03-04"]
    assert io.users_path(data) in files and io.items_path(data) in files


def test_read_manifest_of_an_older_partition_says_how_to_rebuild(tmp_path: Path) -> None:
    with io.staged_partition(tmp_path, "frames", D, RUN) as stage:
        stage.write_table(pl.DataFrame({"x": [1]}), "users")
    with pytest.raises(ValueError, match="rebuild the partition"):
        read_manifest(tmp_path, D)
