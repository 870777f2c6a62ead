"""Importers of real public data: contract shape on the real files, hand-worked tiny sources, layout errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import mmh3
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import EVENT_TYPES
from pipelines import io
from pipelines.datasets import (
    IMPORTERS,
    SourceLayoutError,
    amazon_events,
    amazon_platform,
    import_amazon,
    import_myntra,
    import_obd,
    import_taobao,
    obd_user_ids,
)


def all_events(data: Path) -> pl.DataFrame:
    """Every event row the importer wrote, with its partition's date (io.scan_events, the pipeline's reader,
    would keep one of each exact duplicate, which an importer writes as the source has them)."""
    rows = [
        pl.scan_parquet(f).select("user_id", "item_id", "event", "ts", pl.lit(day).alias("dt"))
        for day, files in io.event_files(data).items()
        for f in files
    ]
    if not rows:  # an import without interactions (myntra)
        return io.scan_events(data, date.min, date.max).collect()
    return pl.concat(rows).collect()


def check_contract(data: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Assert the data-contract invariants of an imported folder; returns (users, items, events)."""
    users, items, events = io.read_users(data), io.read_items(data), all_events(data)
    assert users.schema["user_id"] == pl.String
    assert users.get_column("user_id").is_unique().all() and users.get_column("user_id").null_count() == 0
    assert items.columns[:3] == ["item_id", "title", "image_path"]
    assert items.schema["item_id"] == items.schema["title"] == items.schema["image_path"] == pl.String
    assert items.get_column("item_id").is_unique().all() and items.get_column("item_id").null_count() == 0
    # every image_path names a file under the data root
    for rel in items.get_column("image_path").drop_nulls():
        assert io.image_file(data, rel).is_file(), rel
    for files in io.event_files(data).values():
        for f in files:
            assert pl.read_parquet_schema(f) == {
                "user_id": pl.String,
                "item_id": pl.String,
                "event": pl.String,
                "ts": pl.Datetime("us", "UTC"),
            }
    assert set(events.get_column("event").unique()) <= set(EVENT_TYPES)
    assert (events.get_column("ts").dt.date() == events.get_column("dt")).all()  # ts inside its partition
    assert events.join(users, on="user_id", how="anti").height == 0  # every event's user is known
    assert events.join(items, on="item_id", how="anti").height == 0  # every event's item is known
    return users, items, events


# ---------------------------------------------------------------- amazon


def write_amazon(src: Path, inter_rows: list[str], item_rows: list[str]) -> Path:
    src.mkdir(parents=True, exist_ok=True)
    (src / "Games-6k.test.inter").write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\n" + "".join(r + "\n" for r in inter_rows)
    )
    (src / "Games.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(r + "\n" for r in item_rows))
    return src


def test_amazon_tiny_right_aligned(tmp_path: Path) -> None:
    src = write_amazon(
        tmp_path / "src",
        ["0\t10 11 12\t13", "1\t11\t10"],
        ["10\tHalo 3 - Xbox 360", "11\tPortal 2 - PS3 [Digital Code]", "12\tRocky", "13\tA - B - PC"],
    )
    out = import_amazon(src, tmp_path / "data", start=date(2024, 1, 1))
    users, items, events = check_contract(tmp_path / "data")
    # longest sequence: user 0 with 3 + 1 = 4 items -> last date 2024-01-04.
    # user 0: 10 on 01-01, 11 on 01-02, 12 on 01-03, 13 on 01-04; user 1 (2 items): 11 on 01-03, 10 on 01-04
    got = events.sort("user_id", "dt").select("user_id", "item_id", "dt").rows()
    assert got == [
        ("0", "10", date(2024, 1, 1)),
        ("0", "11", date(2024, 1, 2)),
        ("0", "12", date(2024, 1, 3)),
        ("0", "13", date(2024, 1, 4)),
        ("1", "11", date(2024, 1, 3)),
        ("1", "10", date(2024, 1, 4)),
    ]
    assert set(events.get_column("event")) == {"purchase"}
    assert events.get_column("ts").dt.hour().unique().to_list() == [12]
    assert io.event_dates(tmp_path / "data") == [date(2024, 1, d) for d in (1, 2, 3, 4)]
    assert users.get_column("user_id").to_list() == ["0", "1"]
    # platforms from the title suffix: "Xbox 360"; "PS3" after dropping "[Digital Code]"; none; "PC"
    assert items.sort("item_id").get_column("platform").to_list() == ["Xbox 360", "PlayStation 3", None, "PC"]
    assert items.get_column("image_path").null_count() == 4
    assert out["eval_date"] == "2024-01-04" and out["valid_date"] == "2024-01-03"
    assert (out["users"], out["items"], out["events"]) == (2, 4, 6)


def test_amazon_item_missing_from_catalogue_is_added(tmp_path: Path) -> None:
    # item 99 is bought but has no catalogue row: it is kept, with a null title
    src = write_amazon(tmp_path / "src", ["0\t10\t99"], ["10\tRocky"])
    out = import_amazon(src, tmp_path / "data")
    _, items, _ = check_contract(tmp_path / "data")
    assert items.sort("item_id").select("item_id", "title").rows() == [("10", "Rocky"), ("99", None)]
    assert out["items_without_title"] == 1


def test_amazon_missing_column(tmp_path: Path) -> None:
    src = write_amazon(tmp_path / "src", ["0\t10\t11"], ["10\tRocky"])
    (src / "Games-6k.test.inter").write_text("user_id:token\titem_id_list:token_seq\n0\t10\n")
    with pytest.raises(SourceLayoutError, match=r"Games-6k\.test\.inter.*item_id:token.*fix"):
        import_amazon(src, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing written before the checks pass


def test_amazon_missing_file(tmp_path: Path) -> None:
    src = write_amazon(tmp_path / "src", ["0\t10\t11"], ["10\tRocky"])
    (src / "Games.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"Games\.item.*fix"):
        import_amazon(src, tmp_path / "data")


def test_refuses_existing_data_set(tmp_path: Path) -> None:
    src = write_amazon(tmp_path / "src", ["0\t10\t11"], ["10\tRocky", "11\tHalo"])
    import_amazon(src, tmp_path / "data")
    with pytest.raises(FileExistsError, match="already holds an input data set"):
        import_amazon(src, tmp_path / "data")


def test_amazon_platform_table() -> None:
    titles = ["X - Nintendo Wii U", "X - wii", "X - Xbox One Digital Code", "X - Black", "X-Men", None]
    got = pl.DataFrame({"t": titles}).select(amazon_platform(pl.col("t"))).to_series().to_list()
    # "Black" is a colour suffix, "X-Men" has no " - " suffix, null stays null
    assert got == ["Wii U", "Wii", "Xbox One", None, None, None]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), min_size=0, max_size=8), min_size=1, max_size=6))
def test_amazon_events_leave_one_out_property(histories: list[list[int]]) -> None:
    inter = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(len(histories))],
            "history": [" ".join(map(str, h)) for h in histories],
            "target": [str(100 + i) for i in range(len(histories))],
        }
    )
    start = date(2024, 3, 1)
    ev = amazon_events(inter, start).with_columns(pl.col("ts").dt.date().alias("dt"))
    longest = max(len(h) for h in histories) + 1
    last = date.fromordinal(start.toordinal() + longest - 1)
    assert ev.height == sum(len(h) + 1 for h in histories)
    # every held-out item is on the last date, and nothing else is
    assert ev.filter(pl.col("dt") == last).sort("user_id").get_column("item_id").to_list() == sorted(
        inter.get_column("target"), key=lambda t: f"u{int(t) - 100}"
    )
    assert ev.get_column("dt").min() >= start and ev.get_column("dt").max() == last
    # each user has one event per day on consecutive days, in history order
    for i, h in enumerate(histories):
        mine = ev.filter(pl.col("user_id") == f"u{i}").sort("ts")
        assert mine.get_column("item_id").to_list() == [*map(str, h), str(100 + i)]
        days = [d.toordinal() for d in mine.get_column("dt")]
        assert days == list(range(last.toordinal() - len(h), last.toordinal() + 1))


@pytest.mark.shared_data
def test_amazon_real(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "amazon_games_llmrank"
    out = import_amazon(src, tmp_path / "data", start=date(2024, 1, 1))
    users, items, events = check_contract(tmp_path / "data")
    lines = (src / "Games-6k.test.inter").read_text().splitlines()[1:]
    # one user per line; events = history tokens + 1 held-out item per line
    assert users.height == len(lines) == out["users"]
    assert events.height == sum(len(line.split("\t")[1].split()) + 1 for line in lines) == out["events"]
    assert items.height == len((src / "Games.item").read_text().splitlines()) - 1
    # histories hold <= 49 items, so the events span at most 50 days ending on the eval date
    assert (events.get_column("dt").max() - events.get_column("dt").min()).days <= 49
    assert out["eval_date"] == events.get_column("dt").max().isoformat()
    # the eval date holds exactly the held-out items of test.inter ...
    held_out = {(ln.split("\t")[0], ln.split("\t")[2]) for ln in lines}
    eval_rows = events.filter(pl.col("dt") == date.fromisoformat(out["eval_date"]))
    assert set(eval_rows.select("user_id", "item_id").rows()) == held_out
    # ... and the day before holds the held-out items of valid.inter (test history minus its last item)
    valid_lines = (src / "Games-6k.valid.inter").read_text().splitlines()[1:]
    valid_rows = events.filter(pl.col("dt") == date.fromisoformat(out["valid_date"]))
    assert set(valid_rows.select("user_id", "item_id").rows()) == {
        (ln.split("\t")[0], ln.split("\t")[2]) for ln in valid_lines
    }


# ---------------------------------------------------------------- myntra

MYNTRA_HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
)


def write_myntra(src: Path, header: str = MYNTRA_HEADER) -> Path:
    (src / "images").mkdir(parents=True)
    (src / "styles_merged.csv").write_text(
        header
        + "\n"
        + "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"
        + '39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,,Casual,"Peter England Men Party, Blue Jeans"\n'
        + "59263,Women,Accessories,Watches,Watches,Silver,,2016,Casual,Titan Women Silver Watch\n"
    )
    (src / "images" / "15970.jpg").write_bytes(b"\xff\xd8jpeg-15970")
    (src / "images" / "77777.jpg").write_bytes(b"\xff\xd8not-in-catalogue")
    return src


def test_myntra_tiny(tmp_path: Path) -> None:
    src = write_myntra(tmp_path / "src")
    out = import_myntra(src, tmp_path / "data")
    users, items, events = check_contract(tmp_path / "data")
    assert users.height == 0 and users.columns == ["user_id"]
    assert events.height == 0 and not io.events_root(tmp_path / "data").exists()  # no invented interactions
    items = items.sort("item_id")
    # only 15970 has an image in the catalogue; 77777.jpg belongs to no item and is not copied
    assert items.get_column("image_path").to_list() == ["images/15970.jpg", None, None]
    assert (tmp_path / "data" / "images" / "15970.jpg").read_bytes() == b"\xff\xd8jpeg-15970"
    assert not (tmp_path / "data" / "images" / "77777.jpg").exists()
    assert items.get_column("title").to_list()[1] == "Peter England Men Party, Blue Jeans"  # quoted comma
    assert items.get_column("year").to_list() == [2011, None, 2016]
    assert items.schema["year"] == pl.Int32
    assert items.get_column("article_type").to_list() == ["Shirts", "Jeans", "Watches"]
    assert items.get_column("season").to_list() == ["Fall", "Summer", None]
    assert (out["items"], out["images"], out["events"]) == (3, 1, 0)


def test_myntra_missing_column(tmp_path: Path) -> None:
    src = write_myntra(tmp_path / "src", header=MYNTRA_HEADER.replace("articleType", "article"))
    with pytest.raises(SourceLayoutError, match=r"styles_merged\.csv.*articleType.*fix"):
        import_myntra(src, tmp_path / "data")


def test_myntra_bad_year(tmp_path: Path) -> None:
    src = write_myntra(tmp_path / "src")
    path = src / "styles_merged.csv"
    path.write_text(path.read_text().replace(",2016,", ",twenty,"))
    with pytest.raises(SourceLayoutError, match=r"'year'.*twenty"):
        import_myntra(src, tmp_path / "data")


@pytest.mark.shared_data
def test_myntra_real(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "fashion_product_images_small"
    out = import_myntra(src, tmp_path / "data")
    users, items, events = check_contract(tmp_path / "data")  # also checks each image_path file exists
    subset = set((src / "images_subset_ids.txt").read_text().split())
    # 44,446 catalogue rows (README); an image for exactly the ids of images_subset_ids.txt
    assert items.height == 44_446 == out["items"]
    assert set(items.drop_nulls("image_path").get_column("item_id")) == subset
    assert out["images"] == len(subset) == 5_000
    assert users.height == 0 and events.height == 0
    assert items.get_column("title").null_count() == 0


# ---------------------------------------------------------------- obd

OBD_LOG_HEADER = (
    ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,user-item_affinity_0"
)


def write_obd(src: Path, header: str = OBD_LOG_HEADER) -> Path:
    folder = src / "random" / "men"
    folder.mkdir(parents=True)
    (folder / "men.csv").write_text(
        header
        + "\n"
        + "0,2019-11-24 10:00:00.000000+00:00,0,1,0,0.3,a,b,0.0\n"
        + "1,2019-11-24 23:59:59.500000+00:00,1,2,1,0.3,a,b,0.0\n"
        + "2,2019-11-25 08:00:00.250000+00:00,0,3,1,0.3,a,c,1.0\n"
    )
    (folder / "item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1\n0,0,-0.5,h1\n1,1,1.25,h2\n"
    )
    return src


def test_obd_tiny(tmp_path: Path) -> None:
    out = import_obd(write_obd(tmp_path / "src"), tmp_path / "data")
    users, items, events = check_contract(tmp_path / "data")
    # user ids: mmh3 x64 128-bit (seed 0) of the features joined by \x1f
    key_b, key_c = "a\x1fb", "a\x1fc"
    ua = "obd-" + format(mmh3.hash128(key_b, seed=0, x64arch=True, signed=False), "032x")
    uc = "obd-" + format(mmh3.hash128(key_c, seed=0, x64arch=True, signed=False), "032x")
    assert users.sort("user_id").rows() == sorted([(ua, "a", "b"), (uc, "a", "c")])
    # 3 impressions -> 3 views; rows 1 and 2 clicked -> clicks 1 s later; row 1's click crosses midnight
    t = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    assert events.sort("ts", "event").select("user_id", "item_id", "event", "ts", "dt").rows() == [
        (ua, "men-0", "view", t(2019, 11, 24, 10), date(2019, 11, 24)),
        (ua, "men-1", "view", t(2019, 11, 24, 23, 59, 59, 500000), date(2019, 11, 24)),
        (ua, "men-1", "click", t(2019, 11, 25, 0, 0, 0, 500000), date(2019, 11, 25)),
        (uc, "men-0", "view", t(2019, 11, 25, 8, 0, 0, 250000), date(2019, 11, 25)),
        (uc, "men-0", "click", t(2019, 11, 25, 8, 0, 1, 250000), date(2019, 11, 25)),
    ]
    assert items.sort("item_id").select("item_id", "campaign", "item_feature_0", "item_feature_1").rows() == [
        ("men-0", "men", -0.5, "h1"),
        ("men-1", "men", 1.25, "h2"),
    ]
    assert items.schema["item_feature_0"] == pl.Float64
    assert items.get_column("title").null_count() == items.get_column("image_path").null_count() == 2
    assert out["events_by_type"] == {"click": 2, "view": 3}


def test_obd_reimport_is_byte_identical(tmp_path: Path) -> None:
    src = write_obd(tmp_path / "src")
    import_obd(src, tmp_path / "a")
    import_obd(src, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert len(files) == 4  # users, items, dt=2019-11-24, dt=2019-11-25
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=20))
def test_obd_user_ids_stable_and_distinct(keys: list[str]) -> None:
    once = obd_user_ids(pl.Series(keys, dtype=pl.String))
    again = obd_user_ids(pl.Series(list(reversed(keys)), dtype=pl.String))
    # one id per distinct key, the same whatever the row order, distinct keys -> distinct ids
    assert once.height == len(set(keys)) == once.get_column("user_id").n_unique()
    assert once.sort("_key").equals(again.sort("_key"))
    assert all(u.startswith("obd-") and len(u) == 4 + 32 for u in once.get_column("user_id"))


def test_obd_missing_column(tmp_path: Path) -> None:
    src = write_obd(tmp_path / "src", header=OBD_LOG_HEADER.replace(",click,", ",clicked,"))
    with pytest.raises(SourceLayoutError, match=r"men\.csv.*'click'.*fix"):
        import_obd(src, tmp_path / "data")


def test_obd_bad_click_value(tmp_path: Path) -> None:
    src = write_obd(tmp_path / "src")
    log = src / "random" / "men" / "men.csv"
    log.write_text(log.read_text().replace(",1,0.3,a,c,", ",2,0.3,a,c,"))
    with pytest.raises(SourceLayoutError, match=r"men\.csv.*click.*\{0, 1\}"):
        import_obd(src, tmp_path / "data")


def test_obd_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(FileNotFoundError, match=r"item_context\.csv.*fix"):
        import_obd(tmp_path / "src", tmp_path / "data")


@pytest.mark.shared_data
def test_obd_real(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "obd_zozotown"
    out = import_obd(src, tmp_path / "data")
    users, items, events = check_contract(tmp_path / "data")
    logs = [pl.read_csv(f) for f in sorted(src.glob("*/*/*.csv")) if f.name != "item_context.csv"]
    assert len(logs) == 4
    impressions = pl.concat([lg.select("item_id", "click", pl.col("^user_feature_.*$")) for lg in logs])
    # views = impressions (4 x 10,000); clicks = sum of the click labels
    assert events.filter(pl.col("event") == "view").height == impressions.height == 40_000
    assert events.filter(pl.col("event") == "click").height == impressions.get_column("click").sum()
    assert out["events"] == impressions.height + impressions.get_column("click").sum()
    # one user per distinct combination of the 4 hashed user features
    assert users.height == impressions.select(pl.col("^user_feature_.*$")).unique().height
    # items: 34 (men) + 46 (women) arms, README of the sample
    assert items.height == 34 + 46
    assert events.get_column("dt").min() == date(2019, 11, 24)
    assert events.get_column("dt").max() <= date(2019, 12, 1)


# ---------------------------------------------------------------- taobao

# Unix seconds of 2017-11-25 00:00 UTC (= 08:00 in Beijing, UTC+8)
NOV25 = 1511568000


def write_taobao(src: Path, rows: list[str], name: str = "UserBehavior.csv") -> Path:
    src.mkdir(parents=True, exist_ok=True)
    (src / name).write_text("".join(r + "\n" for r in rows))
    return src


TAOBAO_TINY = [
    f"1,10,7,pv,{NOV25 + 3600}",  # 01:00 UTC
    f"1,10,7,fav,{NOV25 + 7200}",
    f"1,20,,cart,{NOV25 + 10800}",
    f"2,20,12,buy,{NOV25 + 14400}",
    f"2,10,9,pv,{NOV25 + 18000}",
    f"1,40,10,pv,{NOV25 + 21600}",
    f"1,40,9,pv,{NOV25 + 25200}",
    f"2,30,,pv,{NOV25 + 86400 + 3600}",  # 2017-11-26 01:00 UTC
    f"2,30,,pv,{NOV25 + 86400 + 3600}",  # an exact duplicate: kept
]


def test_taobao_tiny_mapping(tmp_path: Path) -> None:
    out = import_taobao(write_taobao(tmp_path / "src", TAOBAO_TINY), tmp_path / "data")
    users, items, events = check_contract(tmp_path / "data")
    t = lambda h: datetime(2017, 11, 25, tzinfo=UTC) + timedelta(hours=h)  # noqa: E731
    # pv -> view, fav -> click, cart -> cart, buy -> purchase; tz UTC: ts is the instant itself
    assert events.sort("ts", "user_id").select("user_id", "item_id", "event", "ts", "dt").rows() == [
        ("1", "10", "view", t(1), date(2017, 11, 25)),
        ("1", "10", "click", t(2), date(2017, 11, 25)),
        ("1", "20", "cart", t(3), date(2017, 11, 25)),
        ("2", "20", "purchase", t(4), date(2017, 11, 25)),
        ("2", "10", "view", t(5), date(2017, 11, 25)),
        ("1", "40", "view", t(6), date(2017, 11, 25)),
        ("1", "40", "view", t(7), date(2017, 11, 25)),
        ("2", "30", "view", t(25), date(2017, 11, 26)),
        ("2", "30", "view", t(25), date(2017, 11, 26)),
    ]
    # category: 10 -> 7 (2 rows) over 9 (1 row); 20 -> 12 (the empty one does not count); 30 -> always
    # empty -> null; 40 -> 10 and 9 once each: the tie goes to the smallest id, numerically 9 (not "10")
    assert items.sort("item_id").select("item_id", "category").rows() == [
        ("10", "7"),
        ("20", "12"),
        ("30", None),
        ("40", "9"),
    ]
    assert items.columns == ["item_id", "title", "image_path", "category"]
    assert items.schema["category"] == pl.String
    assert items.get_column("title").null_count() == items.get_column("image_path").null_count() == 4
    assert users.columns == ["user_id"] and users.get_column("user_id").to_list() == ["1", "2"]
    assert out["events_by_type"] == {"cart": 1, "click": 1, "purchase": 1, "view": 6}
    assert out["events_by_date"] == {"2017-11-25": 7, "2017-11-26": 2}
    assert (out["rows"], out["events"], out["duplicate_events"], out["items_with_category"]) == (9, 9, 1, 3)
    assert (out["users"], out["items"], out["tz"]) == (2, 4, "UTC")


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        # 15:30 UTC is 23:30 in Beijing (same day); 16:30 UTC is 00:30 the next day in Beijing
        ("Asia/Shanghai", [(datetime(2017, 11, 25, 23, 30), 25), (datetime(2017, 11, 26, 0, 30), 26)]),
        ("UTC", [(datetime(2017, 11, 25, 15, 30), 25), (datetime(2017, 11, 25, 16, 30), 25)]),
    ],
)
def test_taobao_time_zone_of_days(tmp_path: Path, tz: str, expected: list[tuple[datetime, int]]) -> None:
    rows = [f"1,10,,buy,{NOV25 + 15 * 3600 + 1800}", f"1,11,,pv,{NOV25 + 16 * 3600 + 1800}"]
    out = import_taobao(write_taobao(tmp_path / "src", rows), tmp_path / "data", tz=tz)
    _, _, events = check_contract(tmp_path / "data")  # also: every ts is on its partition's UTC date
    got = events.sort("ts").select("ts", "dt").rows()
    assert got == [(wall.replace(tzinfo=UTC), date(2017, 11, day)) for wall, day in expected]
    assert out["tz"] == tz


def test_taobao_src_may_be_the_file(tmp_path: Path) -> None:
    src = write_taobao(tmp_path / "src", TAOBAO_TINY, name="sample.csv")
    out = import_taobao(src / "sample.csv", tmp_path / "data")
    assert out["events"] == 9 and out["file"] == str(src / "sample.csv")


def test_taobao_day_window_drops_rows(tmp_path: Path) -> None:
    rows = [
        f"1,10,,pv,{NOV25 - 86400}",  # 2017-11-24: before first_day
        f"1,10,,pv,{NOV25}",
        f"1,11,,buy,{NOV25 + 86400}",  # 2017-11-26
        "1,12,,pv,-2134949234",  # 1902: implausible, outside the window -> dropped, not an error
        f"1,13,,pv,{NOV25 + 2 * 86400}",  # 2017-11-27: after last_day
    ]
    src = write_taobao(tmp_path / "src", rows)
    out = import_taobao(src, tmp_path / "data", first_day=date(2017, 11, 25), last_day=date(2017, 11, 26))
    _, items, events = check_contract(tmp_path / "data")
    assert events.sort("ts").get_column("item_id").to_list() == ["10", "11"]
    assert (out["rows"], out["rows_outside_days"], out["events"]) == (5, 3, 2)
    assert items.get_column("item_id").sort().to_list() == ["10", "11"]  # no item of a dropped row


def test_taobao_reimport_is_byte_identical(tmp_path: Path) -> None:
    src = write_taobao(tmp_path / "src", TAOBAO_TINY)
    import_taobao(src, tmp_path / "a", tz="Asia/Shanghai")
    import_taobao(src, tmp_path / "b", tz="Asia/Shanghai")
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    # Beijing days 11-25 (09:00 .. 15:00) and 11-26 (09:00); no staging file is left behind
    assert files == [
        "events/dt=2017-11-25/part-0.parquet",
        "events/dt=2017-11-26/part-0.parquet",
        "items.parquet",
        "users.parquet",
    ]
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        # one field too many; a header row (its behavior_type is not a behaviour); a float timestamp;
        # a row cut short (4 fields); an empty item_id; milliseconds read as seconds (year ~49,900)
        (f"1,10,7,pv,{NOV25},x", r"column '6th field'.*'x' on line 2.*fix: write exactly 5 fields"),
        (
            "user_id,item_id,category_id,behavior_type,timestamp",
            r"column 'behavior_type'.*'behavior_type'.*fix:.*header",
        ),
        ("1,10,7,pv,1511568000.5", r"column 'timestamp'.*non-integer.*'1511568000\.5'.*fix: write Unix time"),
        ("1,10,7,pv", r"column 'timestamp'.*empty.*line 2.*fix: every row needs"),
        ("1,,7,pv,1511568000", r"column 'item_id'.*empty.*line 2.*fix: every row needs"),
        (f"1,10,7,pv,{NOV25 * 1000}", r"column 'timestamp'.*outside.*fix: check the unit"),
    ],
)
def test_taobao_bad_rows(tmp_path: Path, bad_row: str, expected: str) -> None:
    src = write_taobao(tmp_path / "src", [f"1,10,7,pv,{NOV25}", bad_row])
    with pytest.raises(SourceLayoutError, match=r"UserBehavior\.csv: " + expected):
        import_taobao(src, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing written before the checks pass


def test_taobao_unknown_behaviour_counts_rows(tmp_path: Path) -> None:
    rows = [f"1,10,7,pv,{NOV25}", f"1,10,7,click,{NOV25}", f"1,11,7,PV,{NOV25}"]
    # "click" and "PV" are both unknown: 2 rows, the first on line 2
    with pytest.raises(
        SourceLayoutError,
        match=r"'behavior_type' has an unknown value in 2 row\(s\), e\.g\. 'click' on line 2"
        r".*fix: use one of pv, fav, cart, buy",
    ):
        import_taobao(write_taobao(tmp_path / "src", rows), tmp_path / "data")


def test_taobao_missing_file_and_bad_zone(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(FileNotFoundError, match=r"UserBehavior\.csv.*fix"):
        import_taobao(tmp_path / "src", tmp_path / "data")
    src = write_taobao(tmp_path / "src", TAOBAO_TINY)
    with pytest.raises(ValueError, match=r"unknown time zone 'Beijing'.*fix.*Asia/Shanghai"):
        import_taobao(src, tmp_path / "data", tz="Beijing")


@pytest.mark.shared_data
def test_taobao_tmall_real(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "tmall_multibehavior"
    out = import_taobao(src, tmp_path / "data", tz="Asia/Shanghai")
    users, items, events = check_contract(tmp_path / "data")
    raw = pl.read_csv(
        src / "UserBehavior.csv", has_header=False, new_columns=["u", "i", "c", "b", "t"], infer_schema=False
    )
    # SOURCE.txt: 357,412 rows, 31,882 users, 30,985 items, no category, one row per (user, item, behaviour)
    assert events.height == raw.height == out["events"] == 357_412
    assert users.height == raw.get_column("u").n_unique() == 31_882
    assert items.height == raw.get_column("i").n_unique() == 30_985
    assert items.get_column("category").null_count() == items.height and out["items_with_category"] == 0
    # 9 Beijing days: 2017-11-25 .. 2017-12-03, one partition each; no page views in this copy
    assert io.event_dates(tmp_path / "data") == [date(2017, 11, 25) + timedelta(days=d) for d in range(9)]
    assert set(out["events_by_type"]) == {"click", "cart", "purchase"}
    counts = raw.get_column("b").value_counts()
    assert out["events_by_type"]["click"] == counts.filter(pl.col("b") == "fav").get_column("count").item()
    assert out["duplicate_events"] == 0


def test_importers_registry() -> None:
    assert IMPORTERS == {
        "amazon": import_amazon,
        "myntra": import_myntra,
        "obd": import_obd,
        "taobao": import_taobao,
    }
