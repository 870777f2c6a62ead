"""The one config of a run: per-stage sub-configs, loaded from YAML plus `section.key=value` overrides.

Each stage receives only its own sub-config. Unknown keys anywhere are errors.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.config import ColumnsConfig, EmbeddingsConfig, FeaturesConfig, SamplingConfig
from models.config import CrossModalConfig, RankerConfig, RetrieverConfig
from retrieval.config import IndexConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
    """Where inputs are read and outputs written, and the time windows of a run."""

    dir: Path = Path("data/synthetic")  # input root: events/dt=*/, users.parquet, items.parquet
    out: Path = Path("out")  # output root: <out>/<dataset>/dt=YYYY-MM-DD/
    train_window_days: int = Field(14, ge=1)  # W: days up to and including the run date D
    history_lookback_days: int = Field(30, ge=1)  # events read before the window for history features
    events_per_block: int = Field(1_000_000, ge=1)  # events per user block of the frames stage (memory)


class FunnelConfig(_Frozen):
    """The candidate funnel: sources, their merge, the ranker trained on candidate lists, the publish guard,
    and the evaluation horizon (docs/funnel.md)."""

    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 4.0}
    )  # weight of an event type in co-visitation, seeds, recency and popularity
    k: int = Field(100, ge=1)  # merged candidates kept (and scored) per user
    recent_k: int = Field(50, ge=0)  # the user's own recent items (re-engagement)
    covis_k: int = Field(100, ge=0)  # item-to-item co-visitation
    ann_k: int = Field(100, ge=0)  # FAISS neighbours of the user's recent items' two-tower embeddings
    als_k: int = Field(100, ge=0)  # implicit ALS on the lookback's event weights (needs `implicit`)
    category_k: int = Field(50, ge=0)  # popular items of the user's top category (needs category_column)
    popular_k: int = Field(100, ge=1)  # recent global popularity
    seeds: int = Field(20, ge=1)  # last distinct items of a user that seed co-visitation and ANN
    covis_days: int = Field(14, ge=1)  # events that make co-visitation pairs
    covis_window_hours: float = Field(24.0, gt=0.0)  # two events further apart make no pair
    covis_span: int = Field(5, ge=1)  # an event pairs with the next `covis_span` events of the user
    covis_neighbours: int = Field(30, ge=1)  # partners kept per item
    covis_block_events: int = Field(2_000_000, ge=1)  # events per co-visitation pass (memory follows it)
    popular_days: int = Field(7, ge=1)
    category_column: str | None = "auto"  # item column of the category features; auto: first present of
    # category_l2, category, category_l1; None: no category features
    fusion_users: int = Field(5_000, ge=1)  # users of day D the source weights of the merge are measured on
    ranker: bool = True  # train the DCN-Mix on candidate lists (False: publish the merged order)
    train_days: int = Field(1, ge=1)  # days t <= D whose lists (as of t 00:00) label the ranker with day t
    valid_share: float = Field(0.2, gt=0.0, lt=1.0)  # users of the training days held out for the guard
    max_train_users: int = Field(50_000, ge=10)
    train_negatives: int = Field(20, ge=1)  # negatives kept per training user (positives are all kept)
    min_positives: int = Field(50, ge=1)  # fewer validation positives: publish popularity, flagged
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(2048, ge=1)
    mlp: list[int] = Field(default_factory=lambda: [128, 64])  # the funnel DCN-Mix's MLP (few dense inputs)
    block_users: int = Field(5_000, ge=1)  # users per block of the training and published lists (memory)
    horizon_days: int = Field(3, ge=1)  # days after D whose positives the evaluation counts
    min_eval_users: int = Field(20, ge=1)  # fewer users with positives: "not enough positives (n)"


class PublishConfig(_Frozen):
    """What the nightly run publishes."""

    candidates: bool = True
    scores: bool = True
    keep_days: int | None = Field(None, ge=1)  # None: never delete old partitions


class RuntimeConfig(_Frozen):
    """Seeds, devices and orchestration."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runner: Literal["local", "dask"] = "local"
    dask_address: str | None = None  # tcp://host:8786 of an existing cluster
    cron: str = "0 2 * * *"  # nightly schedule (deployment timezone below)
    timezone: str = "UTC"
    task_retries: int = Field(2, ge=0)  # retries of IO tasks
    task_retry_delay_s: float = Field(5.0, ge=0.0)

    @model_validator(mode="after")
    def _dask_address(self) -> RuntimeConfig:
        if self.dask_address is not None and self.runner != "dask":
            raise ValueError("runtime.dask_address is set but runtime.runner is not 'dask'; fix: set both")
        return self


class Config(_Frozen):
    data: DataConfig = DataConfig()
    columns: ColumnsConfig = ColumnsConfig()
    features: FeaturesConfig = FeaturesConfig()
    sampling: SamplingConfig = SamplingConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    crossmodal: CrossModalConfig = CrossModalConfig()
    retriever: RetrieverConfig = RetrieverConfig()
    index: IndexConfig = IndexConfig()
    ranker: RankerConfig = RankerConfig()
    funnel: FunnelConfig = FunnelConfig()
    publish: PublishConfig = PublishConfig()
    runtime: RuntimeConfig = RuntimeConfig()


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key and the fix."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` (a leading `--` is allowed) into a key path and a YAML-parsed value.

    >>> parse_override("--ranker.experts=8")
    (['ranker', 'experts'], 8)
    >>> parse_override("features.crosses=[[a, b]]")
    (['features', 'crosses'], [['a', 'b']])
    """
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(f"override {text!r} has no '='; fix: write it as --section.key=value")
    key, raw = body.split("=", 1)
    path = [p for p in key.split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"override {text!r} names no section; fix: write it as --section.key=value")
    return path, yaml.safe_load(raw) if raw != "" else None


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `section.key=value` overrides.

    >>> load_config(overrides=["--ranker.experts=8"]).ranker.experts
    8
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; fix: pass an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            what = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(
                f"config file {path} is not valid YAML{where}: {what}; fix: correct the YAML syntax there"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"config file {path} cannot be read ({type(err).__name__}); fix: pass a readable UTF-8 YAML "
                "file"
            ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of sections at the top; fix: write it as "
                "'section:' lines with 'key: value' entries below them"
            )
        tree = loaded
    for text in overrides:
        key_path, value = parse_override(text)
        _set_path(tree, key_path, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        where = f"config file {path}" if path is not None else "config"
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            fix = "remove it (unknown key)" if e["type"] == "extra_forbidden" else "correct the value"
            lines.append(f"{where}: {loc}: {e['msg']}; fix: {fix}")
        raise ConfigError("\n".join(lines)) from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (paths as strings, tuples as lists)."""
    return json.loads(cfg.model_dump_json())


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def config_hash(cfg: Config) -> str:
    """Stable 16-hex-digit hash of the resolved config (canonical JSON, sorted keys)."""
    payload = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse_date(text: str | date) -> date:
    """A YYYY-MM-DD date; ConfigError (one line with the fix) for any other text or a day that does not exist.

    >>> parse_date("2024-02-29")
    datetime.date(2024, 2, 29)
    >>> parse_date("2024-02-30")
    Traceback (most recent call last):
    ...
    pipelines.config.ConfigError: date '2024-02-30' is not a day of the calendar (day is out of range for month); fix: pass an existing day as YYYY-MM-DD, e.g. 2024-03-01
    """
    if isinstance(text, date):
        return text
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        raise ConfigError(f"date {text!r} is not YYYY-MM-DD; fix: pass e.g. 2024-03-01")
    try:
        return date.fromisoformat(text.strip())
    except ValueError as err:
        raise ConfigError(
            f"date {text!r} is not a day of the calendar ({err}); fix: pass an existing day as YYYY-MM-DD, "
            "e.g. 2024-03-01"
        ) from None
