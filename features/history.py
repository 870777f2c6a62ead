"""Point-in-time user history features: the last N items and event counts STRICTLY before each example.

For an example (user u, time t) the features read only events of u with `ts < t`:

    hist       list[i32]  item buckets of u's last N history events before t, most recent first
                          (shorter when u has fewer; empty when none)
    cnt_<w>d   u32        number of u's count events with t - w days <= ts < t

How it is computed without a loop over rows: the events of each user are sorted by time and numbered
0, 1, 2, ... (`pos`); every event row also carries the list of its own and its N-1 predecessors' item
buckets (N shifted columns, masked where they would cross into another user). A backward `join_asof`
with `allow_exact_matches=False` finds, for every example, the last event strictly before t; its `pos + 1`
is the number of events before t and its list is `hist`. A count over [t - w, t) is the difference of two
such "events before" numbers, at t and at t - w days.

Events with equal timestamps are ordered by item bucket, so `hist` is deterministic; an event at exactly t
is never read (strict inequality), which is what makes a label event at t invisible to its own features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

log = logging.getLogger(__name__)

HIST = "hist"


def count_column(window_days: int) -> str:
    """Name of the event-count feature over the last `window_days` days, e.g. `cnt_7d`."""
    return f"cnt_{window_days}d"


def _check(df: pl.DataFrame, what: str, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(
            f"point_in_time_history: {what} lacks column(s) {missing} (has {df.columns}); "
            f"fix: pass a frame with {list(needed)}"
        )


def _user_codes(*frames: pl.DataFrame) -> pl.DataFrame:
    """user_id -> _u (UInt32): integer keys make the sorts and as-of joins below several times faster
    than string keys. Codes are internal: no output depends on their values, only on their equality."""
    ids = pl.concat([f.select("user_id") for f in frames], how="vertical").unique().drop_nulls()
    return ids.with_row_index("_u")


def _with_position(events: pl.DataFrame, codes: pl.DataFrame, extra: Sequence[str]) -> pl.DataFrame:
    """Events as (_u, ts, *extra), sorted by (_u, ts, *extra) and numbered per user: _pos = 0, 1, ... (UInt32)."""
    return (
        events.join(codes, on="user_id", how="inner")
        .select("_u", "ts", *extra)
        .sort(["_u", "ts", *extra])
        .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("_u").alias("_pos"))
    )


def _last_per_timestamp(ev: pl.DataFrame) -> pl.DataFrame:
    """Keep the last row of each (_u, ts) run of a sorted frame, so `_pos + 1` counts every event at or
    before ts."""
    nxt_u, nxt_ts = pl.col("_u").shift(-1), pl.col("ts").shift(-1)
    return ev.filter(((pl.col("_u") != nxt_u) | (pl.col("ts") != nxt_ts)).fill_null(True))


def _events_before(
    left: pl.DataFrame, right: pl.DataFrame, at: pl.Expr, carry: Sequence[str] = ()
) -> pl.DataFrame:
    """For each row of `left` (_u, ts, sorted by (_u, ts)), in the same order: `_n` (u32), how many of
    the user's events have ts < `at`, and the `carry` columns of the last such event (null when none).

    `at` must keep the order of ts within a user (ts itself, or ts minus a constant), so the probe needs
    no sort. right: one row per (_u, ts), sorted by (_u, ts), with _pos and `carry`.
    """
    joined = left.select("_u", at.alias("_at")).join_asof(
        right.select("_u", pl.col("ts").alias("_at"), "_pos", *carry),
        on="_at",
        by="_u",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,  # both sides are sorted by (_u, _at): sorted by _at within each user
    )
    return joined.select((pl.col("_pos") + 1).fill_null(0).cast(pl.UInt32).alias("_n"), *carry)


def point_in_time_history(
    examples: pl.DataFrame,
    events: pl.DataFrame,
    n: int,
    windows_days: Sequence[int],
    *,
    count_events: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Append `hist` and `cnt_<w>d` to every example, reading only events strictly before its `ts`.

    Args:
        examples: [E rows] user_id, ts (Datetime, same dtype as the events' ts), plus any other columns;
            kept as they are, in their order.
        events: [V rows] user_id, ts, item_bucket (Int32): the interactions that form `hist` (the stage
            passes the positive events: clicks, carts, purchases); rows with a null ts or bucket are ignored.
        n: N >= 1, the length cap of `hist`.
        windows_days: positive day counts w; one `cnt_<w>d` column each.
        count_events: [V' rows] user_id, ts: the events that `cnt_<w>d` counts; defaults to `events`
            (the stage passes every event, views included, as a measure of activity).

    Returns:
        [E rows] the examples' columns, then `hist` (list[i32], at most N, most recent first, empty when
        the user has no earlier event) and `cnt_<w>d` (u32) for each w in `windows_days`, in that order.

    >>> from datetime import datetime, UTC
    >>> t = lambda h: datetime(2024, 3, 1, h, tzinfo=UTC)
    >>> ev = pl.DataFrame({"user_id": ["u"] * 3, "ts": [t(1), t(2), t(3)],
    ...                    "item_bucket": pl.Series([7, 8, 9], dtype=pl.Int32)})
    >>> ex = pl.DataFrame({"user_id": ["u"], "ts": [t(3)]})
    >>> point_in_time_history(ex, ev, n=5, windows_days=[1]).row(0)[2:]
    ([8, 7], 2)
    """
    if n < 1:
        raise ValueError(f"point_in_time_history: n={n}; fix: pass a history length >= 1")
    windows = list(windows_days)
    bad = [w for w in windows if int(w) != w or w < 1]
    if bad or len(set(windows)) != len(windows):
        raise ValueError(
            f"point_in_time_history: windows_days={windows} must be distinct positive whole days; "
            "fix: e.g. features.history_windows_days=[1, 7, 30]"
        )
    counts = events if count_events is None else count_events
    _check(examples, "examples", ["user_id", "ts"])
    _check(events, "events", ["user_id", "ts", "item_bucket"])
    _check(counts, "count_events", ["user_id", "ts"])
    new_cols = [HIST, *(count_column(w) for w in windows)]
    clash = [c for c in new_cols if c in examples.columns]
    if clash:
        raise ValueError(
            f"point_in_time_history: examples already have column(s) {clash}; fix: drop them first"
        )
    for what, df in (("events", events), ("count_events", counts)):
        if df.schema["ts"] != examples.schema["ts"]:
            raise ValueError(
                f"point_in_time_history: {what}.ts is {df.schema['ts']} but examples.ts is "
                f"{examples.schema['ts']}; fix: cast both to the same Datetime (io.scan_events gives Datetime('us', 'UTC'))"
            )
        if df.schema["user_id"] != examples.schema["user_id"]:
            raise ValueError(
                f"point_in_time_history: {what}.user_id is {df.schema['user_id']} but examples.user_id is "
                f"{examples.schema['user_id']}; fix: cast both to the same dtype"
            )
    if examples["ts"].null_count():
        raise ValueError("point_in_time_history: examples.ts has nulls; fix: drop or fill them first")

    codes = _user_codes(examples, events, counts)
    # examples sorted ONCE by (user, ts); every probe below (ts, ts - w days) keeps that order
    left = (
        examples.select("user_id", "ts")
        .with_row_index("_r")
        .join(codes, on="user_id", how="left", maintain_order="left")
        .sort("_u", "ts")
    )

    # hist: every history event carries [own bucket, previous bucket, ...] (N entries, same user only).
    hev = _with_position(
        events.select("user_id", "ts", pl.col("item_bucket").cast(pl.Int32)).filter(
            pl.col("ts").is_not_null() & pl.col("item_bucket").is_not_null()
        ),
        codes,
        extra=["item_bucket"],
    )
    lagged = [
        pl.when(pl.col("_pos") >= k).then(pl.col("item_bucket").shift(k)) for k in range(n)
    ]  # sorted by user then ts, so shift(k) is the k-th previous event; `_pos >= k` keeps it in the user
    hev = _last_per_timestamp(hev.with_columns(pl.concat_list(lagged).list.drop_nulls().alias(HIST)))
    hist = _events_before(left, hev, pl.col("ts"), carry=[HIST])[HIST]
    feats = [left["_r"], hist.fill_null(pl.Series([[]], dtype=pl.List(pl.Int32)))]

    # counts: events before t minus events before t - w days = events in [t - w days, t).
    cev = _last_per_timestamp(
        _with_position(counts.select("user_id", "ts").filter(pl.col("ts").is_not_null()), codes, extra=[])
    )
    n_before = _events_before(left, cev, pl.col("ts"))["_n"]
    for w in windows:
        n_before_w = _events_before(left, cev, pl.col("ts") - pl.duration(days=w))["_n"]
        feats.append((n_before - n_before_w).alias(count_column(w)))
    in_order = pl.DataFrame(feats).sort("_r").drop("_r")  # back to the examples' order
    log.debug("point_in_time_history: %d examples, %d history events", examples.height, events.height)
    return pl.concat([examples, in_order], how="horizontal")
