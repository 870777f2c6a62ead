"""The run's attribute columns, the user and item tables the examples join, and the output files' column lists."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

from features.config import ColumnsConfig, FeaturesConfig
from features.contract import infer_columns
from features.hashing import (
    FieldSpec,
    Vocab,
    bucket_column,
    strings_as_categorical,
)
from features.history import HIST, count_column
from pipelines import io

log = logging.getLogger(__name__)


def resolve_columns(users: pl.DataFrame, items: pl.DataFrame, columns: ColumnsConfig) -> ColumnsConfig:
    """The attribute columns of a run: the lists `columns` declares, the others inferred from the files
    by `features.contract.infer_columns` (strings/booleans -> categorical, numbers -> numeric; ids, title
    and image_path never), minus any column the other list of the same side declares.

    A declared column absent from its file, or a name used by both files, is an error (frames join both).
    """
    inferred = infer_columns(users.schema, items.schema)
    resolved: dict[str, list[str]] = {}
    for side, df, file in (("user", users, io.USERS_FILE), ("item", items, io.ITEMS_FILE)):
        for kind, other in (("categorical", "numeric"), ("numeric", "categorical")):
            given = getattr(columns, f"{side}_{kind}")
            if given is None:
                taken = set(getattr(columns, f"{side}_{other}") or [])
                resolved[f"{side}_{kind}"] = [
                    c for c in getattr(inferred, f"{side}_{kind}") if c not in taken
                ]
                continue
            missing = [c for c in given if c not in df.columns]
            if missing:
                raise ValueError(
                    f"{file}: columns.{side}_{kind} lists {missing}, absent from the file "
                    f"(columns {df.columns}); fix: correct columns.{side}_{kind}"
                )
            resolved[f"{side}_{kind}"] = list(given)
    user_cols = set(resolved["user_categorical"]) | set(resolved["user_numeric"])
    item_cols = set(resolved["item_categorical"]) | set(resolved["item_numeric"])
    both = sorted(user_cols & item_cols)
    if both:
        raise ValueError(
            f"{io.USERS_FILE} and {io.ITEMS_FILE} both have attribute column(s) {both}; fix: rename them in "
            "one file (e.g. user_region / item_region) or leave one out of the columns section"
        )
    return ColumnsConfig(**resolved)


def numeric_column(side: str, name: str) -> str:
    """Name of a standardised numeric feature: `num_user_<name>` / `num_item_<name>`."""
    return f"num_{side}_{name}"


# ---------------------------------------------------------------- inputs


def unique_ids(df: pl.DataFrame, key: str, file: str) -> None:
    if key not in df.columns:
        raise ValueError(f"{file}: no column {key!r} (columns {df.columns}); fix: add the id column")
    dup = df.filter(pl.col(key).is_duplicated())[key].unique().sort().head(5).to_list()
    if dup:
        raise ValueError(f"{file}: {key} is not unique (e.g. {dup}); fix: keep one row per {key}")
    if df[key].null_count():
        raise ValueError(f"{file}: {key} has nulls; fix: drop the rows without an id")


def user_table(users: pl.DataFrame, cols: ColumnsConfig) -> pl.DataFrame:
    """user_id, categorical attributes (raw; String ones as Categorical), num_user_* (raw, standardised later)."""
    return users.select(
        "user_id",
        *strings_as_categorical(users.schema, cols.user_categorical),
        *(pl.col(c).alias(numeric_column("user", c)) for c in cols.user_numeric),
    )


def item_table(items: pl.DataFrame, cols: ColumnsConfig) -> pl.DataFrame:
    """item_id, item_idx (catalogue row number), categorical attributes (raw; String ones as Categorical),
    num_item_* (raw)."""
    return items.select(
        "item_id",
        pl.int_range(pl.len(), dtype=pl.Int32).alias("item_idx"),
        *strings_as_categorical(items.schema, cols.item_categorical),
        *(pl.col(c).alias(numeric_column("item", c)) for c in cols.item_numeric),
    )


def side_fields(vocab: Vocab, side: str) -> tuple[FieldSpec, ...]:
    return tuple(f for f in vocab.fields if f.side == side)


@dataclass(frozen=True)
class Layout:
    """Column lists of the output files of one run."""

    fields: tuple[FieldSpec, ...]  # every hashed field of the examples: user, item, cross
    cross_fields: tuple[FieldSpec, ...]
    user_num: list[str]
    item_num: list[str]
    item_bkt: list[str]
    ranker: list[str]  # ranker_* / eval_ranker
    retriever: list[str]  # retriever_*
    users: list[str]  # users.parquet

    @classmethod
    def of(cls, cols: ColumnsConfig, vocab: Vocab, features: FeaturesConfig) -> Layout:
        user_f, item_f, cross_f = (
            side_fields(vocab, "user"),
            side_fields(vocab, "item"),
            side_fields(vocab, "cross"),
        )
        user_num = [numeric_column("user", c) for c in cols.user_numeric]
        item_num = [numeric_column("item", c) for c in cols.item_numeric]
        windows = [count_column(w) for w in features.history_windows_days]
        user_bkt = [bucket_column(f.name) for f in user_f]
        item_bkt = [bucket_column(f.name) for f in item_f]
        cross_bkt = [bucket_column(f.name) for f in cross_f]
        return cls(
            fields=(*user_f, *item_f, *cross_f),
            cross_fields=cross_f,
            user_num=user_num,
            item_num=item_num,
            item_bkt=item_bkt,
            ranker=[
                "user_id",
                "item_id",
                "item_idx",
                "ts",
                "label",
                "source",
                *user_bkt,
                *item_bkt,
                *cross_bkt,
                HIST,
                *windows,
                *user_num,
                *item_num,
            ],  # fmt: skip
            retriever=["user_id", "item_id", "item_idx", "ts", *user_bkt, HIST, *windows, *user_num],
            users=["user_id", *user_bkt, HIST, *windows, *user_num],
        )
