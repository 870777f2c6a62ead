"""Point-in-time history: hand-worked tiny cases, a brute-force oracle and the no-future-reads property."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.history import count_column, point_in_time_history

T0 = datetime(2024, 3, 1, tzinfo=UTC)
TS = pl.Datetime("us", "UTC")


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    """2024-03-<day> <hour>:<minute> UTC."""
    return datetime(2024, 3, day, hour, minute, tzinfo=UTC)


def events_frame(rows: list[tuple[str, datetime, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": pl.Series([r[0] for r in rows], dtype=pl.String),
            "ts": pl.Series([r[1] for r in rows], dtype=TS),
            "item_bucket": pl.Series([r[2] for r in rows], dtype=pl.Int32),
        }
    )


def examples_frame(rows: list[tuple[str, datetime]], **extra: list) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": pl.Series([r[0] for r in rows], dtype=pl.String),
            "ts": pl.Series([r[1] for r in rows], dtype=TS),
            **extra,
        }
    )


# a: bucket 1 on 03-01 10:00, 2 on 03-02 10:00, then 3 and 4 both at 03-05 10:00 (a tie); b: 5 on 03-04 12:00
EVENTS = events_frame(
    [
        ("a", at(5, 10), 4),
        ("b", at(4, 12), 5),
        ("a", at(1, 10), 1),
        ("a", at(5, 10), 3),
        ("a", at(2, 10), 2),
    ]
)


def test_hand_worked_history_and_counts() -> None:
    ex = examples_frame(
        [("a", at(5, 11)), ("a", at(5, 10)), ("b", at(4, 12)), ("c", at(9)), ("a", at(2, 10))],
        label=[1, 0, 1, 0, 1],
    )
    out = point_in_time_history(ex, EVENTS, n=3, windows_days=[1, 7])
    assert out.columns == ["user_id", "ts", "label", "hist", "cnt_1d", "cnt_7d"]
    assert out.schema["hist"] == pl.List(pl.Int32)
    assert out.schema["cnt_1d"] == pl.UInt32
    # examples keep their order and columns
    assert out.select("user_id", "ts", "label").equals(ex)
    # (a, 03-05 11:00): all 4 of a's events are before; the tie at 10:00 is ordered by bucket (3 then 4),
    #   so most recent first = [4, 3, 2] (n=3 cuts bucket 1); 1 day back = 03-04 11:00 -> 3, 4 -> 2; 7d -> 4
    # (a, 03-05 10:00): the two events AT 10:00 are not before t -> [2, 1]; 1d window [03-04 10:00, t) -> 0
    # (b, 03-04 12:00): its only event is at t exactly -> nothing
    # (c, ...): unknown user -> nothing
    # (a, 03-02 10:00): only bucket 1 at 03-01 10:00, which is exactly t - 1 day (window start included) -> 1
    assert out["hist"].to_list() == [[4, 3, 2], [2, 1], [], [], [1]]
    assert out["cnt_1d"].to_list() == [2, 0, 0, 0, 1]
    assert out["cnt_7d"].to_list() == [4, 2, 0, 0, 1]


def test_counts_can_use_other_events_than_history() -> None:
    # history from EVENTS; counts from views of a at 03-05 09:00 and 03-05 12:00 only
    views = events_frame([("a", at(5, 9), 0), ("a", at(5, 12), 0)]).drop("item_bucket")
    ex = examples_frame([("a", at(5, 11))])
    out = point_in_time_history(ex, EVENTS, n=2, windows_days=[1], count_events=views)
    # hist still from EVENTS: [4, 3]; the count sees only the 09:00 view (12:00 is after t)
    assert out.row(0, named=True)["hist"] == [4, 3]
    assert out.row(0, named=True)["cnt_1d"] == 1


def test_empty_events_give_empty_features() -> None:
    ex = examples_frame([("a", at(3)), ("b", at(4))])
    out = point_in_time_history(ex, EVENTS.clear(), n=4, windows_days=[30])
    assert out["hist"].to_list() == [[], []]
    assert out[count_column(30)].to_list() == [0, 0]


def test_null_user_gets_no_history() -> None:
    # a null user_id matches no event, not even events with a null user_id
    ev = pl.concat([EVENTS, events_frame([("a", at(1, 9), 6)]).with_columns(user_id=pl.lit(None, pl.String))])
    ex = examples_frame([("a", at(2, 10)), ("a", at(2, 10))]).with_columns(
        user_id=pl.Series([None, "a"], dtype=pl.String)
    )
    out = point_in_time_history(ex, ev, n=3, windows_days=[1])
    # row 2: a's only event before 03-02 10:00 is bucket 1 at 03-01 10:00 (window start, included)
    assert out["hist"].to_list() == [[], [1]]
    assert out["cnt_1d"].to_list() == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0, "windows_days": [1]}, "history length"),
        ({"n": 2, "windows_days": [0]}, "positive whole days"),
        ({"n": 2, "windows_days": [7, 7]}, "distinct"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        point_in_time_history(examples_frame([("a", at(3))]), EVENTS, **kwargs)


def test_missing_column_and_dtype_mismatch_name_the_problem() -> None:
    ex = examples_frame([("a", at(3))])
    with pytest.raises(ValueError, match=r"events lacks column\(s\) \['item_bucket'\]"):
        point_in_time_history(ex, EVENTS.drop("item_bucket"), n=2, windows_days=[1])
    naive = ex.with_columns(pl.col("ts").dt.replace_time_zone(None))
    with pytest.raises(ValueError, match="events.ts is"):
        point_in_time_history(naive, EVENTS, n=2, windows_days=[1])
    with pytest.raises(ValueError, match="already have column"):
        point_in_time_history(ex.with_columns(hist=pl.lit(1)), EVENTS, n=2, windows_days=[1])


# ---------------------------------------------------------------- properties

USERS = st.sampled_from(["u1", "u2", "u3"])
MINUTES = st.integers(min_value=0, max_value=10 * 24 * 60)  # ten days, minute resolution (many ties)
EVENT_ROWS = st.lists(st.tuples(USERS, MINUTES, st.integers(1, 50)), max_size=25)
EXAMPLE_ROWS = st.lists(st.tuples(USERS, MINUTES), min_size=1, max_size=8)


def minutes(rows: list[tuple]) -> list[tuple]:
    return [(r[0], T0 + timedelta(minutes=r[1]), *r[2:]) for r in rows]


def oracle(ex_rows: list[tuple], ev_rows: list[tuple], n: int, windows: list[int]) -> list[tuple]:
    """Brute force over every (example, event) pair: the definition, not the algorithm."""
    out = []
    for user, t in ex_rows:
        before = sorted(((ts, b) for u, ts, b in ev_rows if u == user and ts < t), reverse=True)
        counts = tuple(
            sum(1 for u, ts, _ in ev_rows if u == user and t - timedelta(days=w) <= ts < t) for w in windows
        )
        out.append(([b for _, b in before[:n]], *counts))
    return out


@settings(max_examples=60, deadline=None)
@given(ev=EVENT_ROWS, ex=EXAMPLE_ROWS, n=st.integers(1, 4))
def test_matches_brute_force(ev: list[tuple], ex: list[tuple], n: int) -> None:
    ev_rows, ex_rows = minutes(ev), minutes(ex)
    out = point_in_time_history(examples_frame(ex_rows), events_frame(ev_rows), n=n, windows_days=[1, 3])
    got = list(zip(out["hist"].to_list(), out["cnt_1d"].to_list(), out["cnt_3d"].to_list(), strict=True))
    assert got == oracle(ex_rows, ev_rows, n, [1, 3])


@settings(max_examples=60, deadline=None)
@given(
    ev=EVENT_ROWS,
    ex=EXAMPLE_ROWS,
    which=st.integers(0, 7),
    future=st.lists(
        st.tuples(USERS, st.integers(0, 3 * 24 * 60), st.integers(1, 50)), min_size=1, max_size=10
    ),
)
def test_events_at_or_after_t_never_change_features(
    ev: list[tuple], ex: list[tuple], which: int, future: list[tuple]
) -> None:
    """Add events at or after one example's ts (offset >= 0 minutes): that example's features, and those
    of every example no later than all added events of its user, stay exactly the same."""
    ex_rows, ev_rows = minutes(ex), minutes(ev)
    anchor = ex_rows[which % len(ex_rows)][1]
    extra = [(u, anchor + timedelta(minutes=m), b) for u, m, b in future]
    base = point_in_time_history(examples_frame(ex_rows), events_frame(ev_rows), n=3, windows_days=[1, 7])
    more = point_in_time_history(
        examples_frame(ex_rows), events_frame(ev_rows + extra), n=3, windows_days=[1, 7]
    )
    unaffected = [i for i, (user, t) in enumerate(ex_rows) if all(ts >= t for u, ts, _ in extra if u == user)]
    assert which % len(ex_rows) in unaffected
    assert base[unaffected].equals(more[unaffected])
